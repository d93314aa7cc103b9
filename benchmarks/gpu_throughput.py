"""Training throughput of a GPT-style decoder: tokens/s and MFU, hand-written PyTorch vs
surge, eager and torch.compile, bf16 and (with torchao) fp8.

    python benchmarks/gpu_throughput.py --size 124m            # on one GPU
    python benchmarks/gpu_throughput.py --size 1b --compile --fp8
    python benchmarks/gpu_throughput.py --size tiny --steps 3   # CPU smoke run (CI)

Each variant builds the same model (same seed) and trains on synthetic tokens with
AdamW; variants alternate within each round and the per-round medians of tokens/s are
reported with their median. MFU is the model FLOPs (6 x parameters per token, plus
attention) per second over the device's dense bf16 peak (H100/H200: 989 TFLOP/s); on a
CPU there is no peak to compare with.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

SIZES = {  # n_layer, n_embd, n_head, seq_len, vocab, batch
    "tiny": (2, 64, 4, 64, 256, 4),
    "124m": (12, 768, 12, 1024, 50304, 16),
    "1b": (24, 2048, 16, 1024, 50304, 8),
}
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12}


@dataclass
class Setup:
    n_layer: int
    n_embd: int
    n_head: int
    seq_len: int
    vocab: int
    batch: int


class Block(nn.Module):
    def __init__(self, s: Setup) -> None:
        super().__init__()
        self.n_head = s.n_head
        self.ln1, self.ln2 = nn.LayerNorm(s.n_embd), nn.LayerNorm(s.n_embd)
        self.qkv, self.proj = nn.Linear(s.n_embd, 3 * s.n_embd, bias=False), nn.Linear(s.n_embd, s.n_embd, bias=False)
        self.fc, self.out = nn.Linear(s.n_embd, 4 * s.n_embd, bias=False), nn.Linear(4 * s.n_embd, s.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.n_head, c // self.n_head).unbind(2)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, s: Setup) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(s.vocab, s.n_embd), nn.Embedding(s.seq_len, s.n_embd)
        self.blocks = nn.ModuleList(Block(s) for _ in range(s.n_layer))
        self.ln = nn.LayerNorm(s.n_embd)
        self.head = nn.Linear(s.n_embd, s.vocab, bias=False)
        self.head.weight = self.tok.weight  # tied, as in GPT-2

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln(x))
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


def parameter_count(s: Setup) -> int:
    """GPT(s)'s parameters, counted without building it."""
    d = s.n_embd
    block = 12 * d * d + 4 * d  # qkv, proj, fc, out; two LayerNorms
    return s.n_layer * block + s.vocab * d + s.seq_len * d + 2 * d  # the head shares the token table


def flops_per_token(s: Setup) -> float:
    """Training FLOPs per token: 6 per matmul parameter (the position table does no
    matmul) plus causal attention's 12 x layers x width x sequence."""
    return 6 * (parameter_count(s) - s.seq_len * s.n_embd) + 12 * s.n_layer * s.n_embd * s.seq_len


def peak_flops(device: torch.device) -> tuple[str, float | None]:
    if device.type != "cuda":
        return platform.processor() or platform.machine(), None
    name = torch.cuda.get_device_name(device)
    return name, next((peak for key, peak in PEAK_BF16.items() if key in name), None)


def batches(s: Setup, device: torch.device, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        tokens = torch.randint(0, s.vocab, (s.batch, s.seq_len + 1), generator=g)
        out.append((tokens[:, :-1].to(device), tokens[:, 1:].to(device)))
    return out


def hand_written(
    s: Setup, device: torch.device, compile_: bool, fp8: bool
) -> Callable[[torch.Tensor, torch.Tensor], None]:
    torch.manual_seed(0)
    model = GPT(s).to(device)
    if fp8:
        from torchao.float8 import convert_to_float8_training

        convert_to_float8_training(model, module_filter_fn=lambda m, name: name != "head")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    forward = torch.compile(model) if compile_ else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with autocast:
            loss = forward(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def with_surge(
    s: Setup, device: torch.device, compile_: bool, fp8: bool
) -> Callable[[torch.Tensor, torch.Tensor], None]:
    from surge import Accelerator

    accelerator = Accelerator(mixed_precision="fp8" if fp8 else "bf16", cpu=device.type == "cpu",
                              dynamo_backend="inductor" if compile_ else None)
    torch.manual_seed(0)
    model = GPT(s)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    model, opt = accelerator.prepare(model, opt)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = model(x, y)
        accelerator.backward(loss)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", choices=sorted(SIZES), default="124m")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant per round")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also the torch.compile variants")
    parser.add_argument("--fp8", action="store_true", help="also fp8 (torchao; recent GPUs)")
    parser.add_argument("--batch", type=int, default=None)
    args = parser.parse_args()
    s = Setup(*SIZES[args.size])
    if args.batch:
        s.batch = args.batch
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    variants: dict[str, tuple[Callable, bool, bool]] = {
        "PyTorch eager": (hand_written, False, False),
        "surge eager": (with_surge, False, False),
    }
    if args.compile:
        variants |= {"PyTorch compile": (hand_written, True, False), "surge compile": (with_surge, True, False)}
    if args.fp8:
        variants |= {"PyTorch fp8 compile": (hand_written, True, True), "surge fp8 compile": (with_surge, True, True)}
    data = batches(s, device, 4)
    steps = {}
    for name, (build, compile_, fp8) in variants.items():
        steps[name] = build(s, device, compile_, fp8)
        for i in range(args.warmup):  # compilation happens here
            steps[name](*data[i % len(data)])
        sync(device)
    results: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(args.rounds):
        order = list(variants)
        order = order[r % len(order):] + order[: r % len(order)]
        for name in order:
            sync(device)
            start = time.perf_counter()
            for i in range(args.steps):
                steps[name](*data[i % len(data)])
            sync(device)
            results[name].append(s.batch * s.seq_len * args.steps / (time.perf_counter() - start))
    model_flops = flops_per_token(s)
    device_name, peak = peak_flops(device)
    print(f"device: {device_name}, torch {torch.__version__}; GPT {args.size} ({parameter_count(s) / 1e6:.0f}M "
          f"parameters, {s.n_layer} layers, d={s.n_embd}, "
          f"seq {s.seq_len}, batch {s.batch}), bf16 autocast, AdamW; {args.rounds} rounds x {args.steps} steps\n")
    print("| variant | tokens/s (median) | vs PyTorch of the same kind | MFU |")
    print("| --- | --- | --- | --- |")
    for name in variants:
        tps = statistics.median(results[name])
        base = "PyTorch " + name.split(" ", 1)[1]
        ratio = tps / statistics.median(results[base]) if base in results else math.nan
        mfu = f"{tps * model_flops / peak:.1%}" if peak else "n/a"
        print(f"| {name} | {tps:,.0f} | {ratio:.3f}x | {mfu} |")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
