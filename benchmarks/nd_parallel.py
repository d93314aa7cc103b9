"""Training throughput of a Llama on N processes: hand-written FSDP2 vs surge's FSDP, FSDP x
tensor parallel (tp 2) and, with ``--cp``, FSDP x context parallel (cp 2, ring attention).

    surge launch --num_processes 2 benchmarks/nd_parallel.py --size 1b            # 2+ GPUs (even count)
    surge launch --num_processes 2 benchmarks/nd_parallel.py --size tiny --steps 2 --rounds 1   # CPU smoke (CI)

Every layout trains the same model (same seed, bf16, AdamW) on the same global batch of
synthetic tokens: the size's batch of sequences per data-parallel process under FSDP alone,
so a tp or cp group (which reads one batch) gets twice that; the table's "tokens per step"
column shows the global batch is the same in every layout. Layouts run one after another (each
built, warmed up, timed for ``--rounds`` rounds of ``--steps`` steps, then freed); the table
gives the median tokens/s over the rounds, the ratio to hand-written FSDP2 and the peak
memory per device. The 1b size is the 1.3B model issue 20 asks for (24 layers, width 2048).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

SIZES = {  # layers, width, heads, kv heads, mlp width, vocab, seq_len, batch per dp process
    "tiny": (2, 64, 4, 4, 128, 256, 64, 2),
    "1b": (24, 2048, 16, 16, 5632, 32000, 2048, 2),
}


def llama(size: str) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    layers, width, heads, kv, mlp, vocab, seq, _ = SIZES[size]
    config = LlamaConfig(num_hidden_layers=layers, hidden_size=width, num_attention_heads=heads,
                         num_key_value_heads=kv, intermediate_size=mlp, vocab_size=vocab, max_position_embeddings=seq,
                         attn_implementation="sdpa", use_cache=False)
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def tokens(size: str, rows: int, reader: int, device: torch.device) -> torch.Tensor:
    """This data-parallel reader's ``rows`` sequences (the same on every rank of its tp/cp group)."""
    vocab, seq = SIZES[size][5], SIZES[size][6]
    g = torch.Generator().manual_seed(1000 + reader)
    return torch.randint(0, vocab, (rows, seq), generator=g).to(device)


def hand_written_fsdp(size: str, device: torch.device) -> tuple[Callable[[], None], int]:
    """Returns the step and the rows of the global batch."""
    """(Plain FSDP2: fully_shard per decoder layer and the root over every process, bf16
    parameters with fp32 gradient reduction, AdamW.)"""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    model = llama(size).to(device)
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in model.model.layers:
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    batch = tokens(size, SIZES[size][7], dist.get_rank(), device)

    def step() -> None:
        model(input_ids=batch, labels=batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, batch.shape[0] * dist.get_world_size()


def with_surge(size: str, device: torch.device, tp: int = 1, cp: int = 1) -> tuple[Callable[[], None], int]:
    from surge import Accelerator, FullyShardedDataParallelPlugin, ParallelismConfig

    world = dist.get_world_size()
    shard = world // (tp * cp)
    pc = ParallelismConfig(dp_shard_size=shard, tp_size=tp, cp_size=cp) if tp * cp > 1 else None
    plugin = FullyShardedDataParallelPlugin() if shard * cp > 1 else None  # tp over every process: tp alone
    accelerator = Accelerator(mixed_precision="bf16", parallelism_config=pc, fsdp_plugin=plugin,
                              cpu=device.type == "cpu")
    model = llama(size)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    model, opt = accelerator.prepare(model, opt)
    reader = accelerator.data_parallel_rank if pc is not None else accelerator.process_index
    batch = tokens(size, SIZES[size][7] * tp * cp, reader, device)

    def step() -> None:
        if cp == 1:
            accelerator.backward(model(input_ids=batch, labels=batch).loss)
        else:
            ids, shift = batch.clone(), torch.full_like(batch, -100)
            shift[:, :-1] = batch[:, 1:]
            positions = torch.arange(ids.shape[1], device=device).repeat(ids.shape[0], 1)
            buffers = [ids, shift, positions]
            with accelerator.maybe_context_parallel(buffers=buffers, buffer_seq_dims=[1, 1, 1],
                                                    no_restore_buffers=set(buffers)):
                loss = model(input_ids=ids, position_ids=positions, labels=shift, shift_labels=shift).loss
                accelerator.backward(loss)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, batch.shape[0] * shard  # each data-parallel reader's rows, over the readers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(build: Callable[[], tuple[Callable[[], None], int]], args: argparse.Namespace,
            device: torch.device) -> dict[str, Any]:
    """Build a layout, warm it up, time it; tokens/s over the whole job per round."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step, rows = build()
    for _ in range(args.warmup):
        step()
    rates = []
    for _ in range(args.rounds):
        sync(device)
        dist.barrier()
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        sync(device)
        elapsed = torch.tensor(time.perf_counter() - start, device=device)  # nccl reduces device tensors
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # the job is as fast as its slowest process
        rates.append(rows * SIZES[args.size][6] * args.steps / elapsed.item())
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    del step
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"tokens_per_s": statistics.median(rates), "peak_gib": peak, "tokens_per_step": rows * SIZES[args.size][6]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="1b")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cp", action="store_true", help="also FSDP x context parallel 2 (ring attention)")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    if cuda:
        import os

        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    world = dist.get_world_size()
    if world % 2:
        raise SystemExit(f"nd_parallel needs an even number of processes for tp 2 (got {world}).")
    layouts: dict[str, tuple[str, Callable[[], tuple[Callable[[], None], int]]]] = {
        "PyTorch FSDP2 (hand-written)": (f"dp_shard {world}", lambda: hand_written_fsdp(args.size, device)),
        "surge FSDP": (f"dp_shard {world}", lambda: with_surge(args.size, device)),
        "surge FSDP x tp 2": (f"dp_shard {world // 2} x tp 2" if world > 2 else "tp 2",
                              lambda: with_surge(args.size, device, tp=2)),
    }
    if args.cp:
        layouts["surge FSDP x cp 2"] = (f"dp_shard {world // 2} x cp 2" if world > 2 else "cp 2",
                                        lambda: with_surge(args.size, device, cp=2))
    results = {name: measure(build, args, device) for name, (_, build) in layouts.items()}
    if dist.get_rank() == 0:
        base = results["PyTorch FSDP2 (hand-written)"]["tokens_per_s"]
        name = torch.cuda.get_device_name(device) if cuda else "CPU"
        layers, width = SIZES[args.size][:2]
        print(f"device: {world} x {name}, torch {torch.__version__}; Llama {args.size} ({layers} layers, width "
              f"{width}, seq {SIZES[args.size][6]}), bf16, AdamW; {args.rounds} rounds x {args.steps} steps\n")
        print("| layout | mesh | tokens per step | tokens/s (median) | vs hand-written FSDP2 | peak GiB per device |")
        print("| --- | --- | --- | --- | --- | --- |")
        for label, (mesh, _) in layouts.items():
            r = results[label]
            print(f"| {label} | {mesh} | {r['tokens_per_step']:,} | {r['tokens_per_s']:,.0f} | "
                  f"{r['tokens_per_s'] / base:.3f}x | {r['peak_gib']:.1f} |")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
