"""A DeepSpeed training script that runs on surge with only the import changed.

    python examples/deepspeed_engine.py --deepspeed --deepspeed_config examples/configs/zero3_offload_fp16.json
    surge launch --num_processes 2 examples/deepspeed_engine.py --deepspeed \\
        --deepspeed_config examples/configs/zero3_offload_fp16.json

``surge.initialize`` reads the DeepSpeed JSON config (ZeRO stage, offload, fp16/bf16,
clipping, accumulation, activation checkpointing, optimizer and scheduler sections) and
returns the engine, optimizer, a sharded DataLoader and the scheduler. Checkpoints go
to ``--save_dir``; ``--resume`` continues from the one named in its ``latest`` file.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.utils.data import TensorDataset

import surge  # was: import deepspeed


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.ff = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ff(self.norm(x))


class Regressor(nn.Module):
    """A small residual MLP; its repeated blocks are what ZeRO-3 shards one by one."""

    def __init__(self, features: int = 16, width: int = 64, depth: int = 4) -> None:
        super().__init__()
        self.inp = nn.Linear(features, width)
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
        self.out = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = block(h)
        return self.out(h)


def make_data(n: int = 2048, features: int = 16) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, features, generator=g)
    y = torch.sin(x[:, :4].sum(dim=1, keepdim=True)) + 0.1 * x[:, 4:5]
    return TensorDataset(x, y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--save_dir", default="runs/deepspeed_engine")
    parser.add_argument("--resume", action="store_true", help="continue from save_dir/latest")
    parser.add_argument("--smoke", action="store_true", help="a few seconds: 1 epoch of 256 samples")
    parser = surge.add_config_arguments(parser)  # --deepspeed, --deepspeed_config
    args = parser.parse_args()

    torch.manual_seed(0)
    data = make_data(256 if args.smoke else 2048)
    engine, _, loader, _ = surge.initialize(args=args, model=Regressor(), training_data=data)
    start_epoch = 0
    if args.resume:
        _, client = engine.load_checkpoint(args.save_dir)
        start_epoch = (client or {}).get("epoch", 0)
    epochs = 1 if args.smoke else args.epochs
    first = last = None
    for epoch in range(start_epoch, start_epoch + epochs):
        loader.data_sampler.set_epoch(epoch)  # DeepSpeed's loader: a new order each epoch only when asked
        for inputs, targets in loader:
            x, y = inputs.to(engine.device), targets.to(engine.device)  # DeepSpeed's loader leaves them on the CPU
            loss = nn.functional.mse_loss(engine(x).float(), y)
            engine.backward(loss)
            engine.step()
            first = loss.item() if first is None else first
            last = loss.item()
        engine.save_checkpoint(args.save_dir, client_state={"epoch": epoch + 1})
    if engine.global_rank == 0:
        print(f"steps={engine.global_steps} first_loss={first:.4f} last_loss={last:.4f} lr={engine.get_lr()[0]:.2e} "
              f"zero_stage={engine.zero_optimization_stage()} saved={args.save_dir}")


if __name__ == "__main__":
    main()
