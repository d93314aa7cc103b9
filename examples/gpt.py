"""surge's main job: a small character-level GPT trained on the Python standard library's
own source code, which is on every machine (no download).

    python examples/gpt.py                                   # one process
    surge launch --num_processes 2 examples/gpt.py           # two processes (DDP)
    surge launch --num_processes 2 examples/gpt.py --resume  # continue from the newest checkpoint

On 2 CPU cores the default run takes about two minutes and the loss falls from ~4.6
(uniform over the characters) to about 1.6. It shows progress, logs to
``runs/gpt/gpt`` (jsonl, plus TensorBoard when installed), saves a checkpoint every
``--checkpoint_every`` steps (the newest three are kept) and prints a text sample at the
end. Scale it up on a GPU::

    surge launch examples/gpt.py --n_layer 12 --n_embd 768 --n_head 12 --block_size 256 \\
        --batch_size 32 --mixed_precision bf16 --zero_stage 2 --compile --max_steps 5000
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import sysconfig
import time

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from surge import Accelerator, ProjectConfiguration
from surge.logging import get_logger
from surge.tracking import is_available
from surge.utils import set_seed, tqdm

logger = get_logger(__name__, log_level="INFO")


# -- data ---------------------------------------------------------------------------------


def stdlib_text(max_chars: int) -> str:
    """The standard library's .py files, in a fixed order, up to ``max_chars`` characters."""
    root = sysconfig.get_paths()["stdlib"]
    parts, total = [], 0
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in ("test", "tests", "site-packages", "idlelib", "__pycache__"))
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            with open(os.path.join(directory, name), encoding="utf-8", errors="replace") as f:
                text = f.read()
            parts.append(text)
            total += len(text)
            if total >= max_chars:
                return "".join(parts)[:max_chars]
    return "".join(parts)


class Characters:
    """Printable ASCII plus newline; anything else becomes '?'."""

    def __init__(self) -> None:
        self.chars = ["\n"] + [chr(c) for c in range(32, 127)]
        self.index = {c: i for i, c in enumerate(self.chars)}

    def encode(self, text: str) -> torch.Tensor:
        unknown = self.index["?"]
        return torch.tensor([self.index.get(c, unknown) for c in text], dtype=torch.long)

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)


class Blocks(Dataset):
    """Non-overlapping windows of ``block_size + 1`` tokens: input and next-token target."""

    def __init__(self, tokens: torch.Tensor, block_size: int) -> None:
        self.tokens, self.block_size = tokens, block_size

    def __len__(self) -> int:
        return (len(self.tokens) - 1) // self.block_size

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        chunk = self.tokens[i * self.block_size: (i + 1) * self.block_size + 1]
        return chunk[:-1], chunk[1:]


# -- model --------------------------------------------------------------------------------


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.n_head = n_head
        self.ln1, self.ln2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
        self.qkv, self.proj = nn.Linear(n_embd, 3 * n_embd), nn.Linear(n_embd, n_embd)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd))
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.n_head, c // self.n_head).unbind(2)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + F.dropout(self.mlp(self.ln2(x)), self.dropout, self.training)


class GPT(nn.Module):
    def __init__(self, vocab: int, block_size: int, n_layer: int, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.block_size = block_size
        self.tok, self.pos = nn.Embedding(vocab, n_embd), nn.Embedding(block_size, n_embd)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, dropout) for _ in range(n_layer))
        self.ln = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab, bias=False)
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln(x))
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten()) if targets is not None else None
        return logits, loss


@torch.no_grad()
def sample(model: GPT, chars: Characters, prompt: str, length: int, device: torch.device,
           temperature: float = 0.8) -> str:
    model.eval()
    idx = chars.encode(prompt).unsqueeze(0).to(device)
    g = torch.Generator(device=device).manual_seed(0)
    for _ in range(length):
        logits, _ = model(idx[:, -model.block_size:])
        probs = torch.softmax(logits[:, -1].float() / temperature, dim=-1)
        idx = torch.cat([idx, torch.multinomial(probs, 1, generator=g)], dim=1)
    model.train()
    return chars.decode(idx[0].tolist())


# -- training -----------------------------------------------------------------------------


class Progress:
    """The step counter and loss history, saved with every checkpoint."""

    def __init__(self) -> None:
        self.step, self.first_loss = 0, None

    def state_dict(self) -> dict:
        return {"step": self.step, "first_loss": self.first_loss}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.first_loss = state["step"], state["first_loss"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max_steps", type=int, default=600, help="optimizer steps in all")
    p.add_argument("--batch_size", type=int, default=16, help="sequences per process per micro-step")
    p.add_argument("--gradient_accumulation_steps", type=int, default=1)
    p.add_argument("--block_size", type=int, default=128)
    p.add_argument("--n_layer", type=int, default=4)
    p.add_argument("--n_embd", type=int, default=128)
    p.add_argument("--n_head", type=int, default=4)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup_steps", type=int, default=30)
    p.add_argument("--data_chars", type=int, default=2_000_000, help="how much stdlib source to train on")
    p.add_argument("--mixed_precision", choices=["no", "fp16", "bf16", "fp8"], default=None,
                   help="default: what `surge config` / `surge launch` say")
    p.add_argument("--zero_stage", type=int, choices=[0, 1, 2, 3], default=None, help="ZeRO sharding stage")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--project_dir", default="runs/gpt")
    p.add_argument("--checkpoint_every", type=int, default=200)
    p.add_argument("--eval_every", type=int, default=200)
    p.add_argument("--log_every", type=int, default=10)
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --project_dir")
    p.add_argument("--sample_chars", type=int, default=300)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--smoke", action="store_true", help="a few seconds: tiny model, 30 steps (CI)")
    if "--smoke" in (argv if argv is not None else sys.argv[1:]):
        # Smaller defaults; flags given explicitly still win.
        p.set_defaults(max_steps=30, n_layer=2, n_embd=64, block_size=32, data_chars=200_000, checkpoint_every=15,
                       eval_every=15, log_every=5, sample_chars=60, warmup_steps=5)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> float | None:
    args = parse_args(argv)
    # This script's own lines at INFO (its logger's level, set above); surge's and torch's at WARNING.
    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S", level=logging.WARNING)
    log_with = ["jsonl"] + (["tensorboard"] if is_available("tensorboard") else [])
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        deepspeed_plugin={"zero_stage": args.zero_stage} if args.zero_stage else None,
        log_with=log_with,
        project_config=ProjectConfiguration(args.project_dir, automatic_checkpoint_naming=True, total_limit=3),
    )
    set_seed(args.seed)
    chars = Characters()
    with accelerator.main_process_first():
        text = stdlib_text(args.data_chars)
    tokens = chars.encode(text)
    split = int(len(tokens) * 0.95)
    train_data, val_data = Blocks(tokens[:split], args.block_size), Blocks(tokens[split:], args.block_size)
    model = GPT(len(chars.chars), args.block_size, args.n_layer, args.n_embd, args.n_head, args.dropout)
    if args.compile:
        model = torch.compile(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)

    def schedule(step: int) -> float:  # linear warm-up, cosine decay to 10%
        if step < args.warmup_steps:
            return (step + 1) / args.warmup_steps
        progress = (step - args.warmup_steps) / max(1, args.max_steps - args.warmup_steps)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    train_loader = DataLoader(train_data, batch_size=args.batch_size, shuffle=True, drop_last=True)
    val_loader = DataLoader(val_data, batch_size=args.batch_size)
    model, optimizer, train_loader, val_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, val_loader, scheduler)
    progress = Progress()
    accelerator.register_for_checkpointing(progress)

    checkpoint = None
    if args.resume:
        # Continues from the newest complete checkpoint (loader position included), or
        # starts fresh when there is none: the same line survives `--max_restarts`.
        checkpoint = accelerator.load_state(missing_ok=True)
        if checkpoint and progress.step >= args.max_steps:
            accelerator.print(f"run already finished at step {progress.step} (checkpoint {checkpoint}); nothing to "
                              f"do (raise --max_steps to train on)")
            return None
        if checkpoint:
            logger.info("resumed from %s at step %d", checkpoint, progress.step)
        else:
            logger.info("no checkpoint in %s yet; starting at step 0",
                        os.path.join(accelerator.project_dir or ".", "checkpoints"))
    n_params = sum(p.numel() for p in accelerator.unwrap_model(model).parameters())
    accelerator.init_trackers("gpt", config={**vars(args), "parameters": n_params,
                                             "processes": accelerator.num_processes})
    logger.info("distributed type %s, %d processes, %.2fM parameters, precision %s, %d training sequences of %d "
                "characters", accelerator.distributed_type.value, accelerator.num_processes, n_params / 1e6,
                accelerator.mixed_precision, len(train_data), args.block_size)
    logger.info("checkpoints in %s (every %d steps, newest 3 kept), logs in %s (%s)",
                os.path.join(accelerator.project_dir or ".", "checkpoints"), args.checkpoint_every,
                os.path.join(accelerator.logging_dir or ".", "gpt"), ", ".join(log_with))

    def evaluate() -> float:
        model.eval()
        losses = []
        with torch.no_grad():
            for i, (x, y) in enumerate(val_loader):
                losses.append(accelerator.gather_for_metrics(model(x, y)[1].detach().reshape(1)))
                if i == 20:
                    break
        model.train()
        return torch.cat(losses).mean().item()

    model.train()
    started, last, val = time.perf_counter(), None, None
    bar = tqdm(total=args.max_steps, initial=progress.step, desc="train")
    while progress.step < args.max_steps:
        for x, y in train_loader:  # after load_state it continues its epoch where it was
            with accelerator.accumulate(model):
                _, loss = model(x, y)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                continue
            progress.step += 1
            bar.update(1)
            if progress.step % args.log_every == 0 or progress.step == 1:
                last = accelerator.reduce(loss.detach(), "mean").item()
                progress.first_loss = progress.first_loss if progress.first_loss is not None else last
                bar.set_postfix(loss=last)
                accelerator.log({"train/loss": last, "train/lr": scheduler.get_last_lr()[0]}, step=progress.step)
            if progress.step % args.eval_every == 0 or progress.step == args.max_steps:
                val = evaluate()  # the last step always evaluates: `val` is the final validation loss
                accelerator.log({"val/loss": val}, step=progress.step)
            if progress.step % args.checkpoint_every == 0 or progress.step == args.max_steps:
                checkpoint = accelerator.save_state()
            if progress.step >= args.max_steps:
                break
    bar.close()
    elapsed = time.perf_counter() - started
    accelerator.end_training()

    def fmt(value: float | None) -> str:  # a resumed run may end before it logs a loss
        return "n/a" if value is None else f"{value:.3f}"

    accelerator.print(f"done: step {progress.step}, first loss {fmt(progress.first_loss)}, last train loss "
                      f"{fmt(last)}, val loss {fmt(val)} ({elapsed:.0f} s); checkpoint {checkpoint}")
    if accelerator.is_main_process and args.sample_chars:
        prompt = "def "
        accelerator.print("--- sample ---\n" + sample(accelerator.unwrap_model(model), chars, prompt,
                                                       args.sample_chars, accelerator.device) + "\n---")
    return val


if __name__ == "__main__":
    main()
