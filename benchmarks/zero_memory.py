"""Per-rank model-state memory of each strategy on 2 CPU processes, measured, next to
ZeRO's formulas (fp32 AdamW: 16 bytes per parameter under DDP).

    surge launch --num_processes 2 benchmarks/zero_memory.py

Measured: bytes of the live local tensors (parameter shards, gradients, optimizer state)
after one AdamW step, before zero_grad.
"""

from __future__ import annotations

import torch
from torch import nn

from surge import Accelerator, DeepSpeedPlugin
from surge.memory import STRATEGIES, measured_model_state_bytes, model_state_bytes
from surge.ops import reduce


class Net(nn.Module):
    def __init__(self, width: int = 256, depth: int = 6) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = torch.tanh(block(x))
        return x


def measure(stage: int | None) -> dict[str, int]:
    plugin = None if stage is None else DeepSpeedPlugin(zero_stage=stage)
    acc = Accelerator(deepspeed_plugin=plugin)
    model = Net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, opt = acc.prepare(model, opt)
    acc.backward(model(torch.randn(8, 256)).pow(2).mean())
    opt.step()
    got = measured_model_state_bytes(acc.unwrap_model(model), opt)
    # The largest rank is what must fit.
    return {k: int(reduce(torch.tensor(v), "sum").item() / acc.num_processes) for k, v in got.items()}


def main() -> None:
    acc = Accelerator()
    n = acc.num_processes
    params = sum(p.numel() for p in Net().parameters())
    rows = [("DDP", None, 0), ("ZeRO-1", 1, 1), ("ZeRO-2", 2, 2), ("ZeRO-3", 3, 3)]
    results = {name: measure(stage) for name, stage, _ in rows}
    if acc.is_main_process:
        base = results["DDP"]["total"]
        print(f"{params:,} parameters, fp32 AdamW, {n} processes (mean per rank)\n")
        print("| strategy | params | grads | optimizer | total | vs DDP | formula (fp32) |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for name, _, index in rows:
            r = results[name]
            formula, _ = model_state_bytes(params, STRATEGIES[index], n, "fp32")
            print(f"| {name} | {r['params'] / 1e6:.2f} MB | {r['grads'] / 1e6:.2f} MB | "
                  f"{r['optimizer'] / 1e6:.2f} MB | {r['total'] / 1e6:.2f} MB | {r['total'] / base:.2f}x | "
                  f"{formula / 1e6:.2f} MB |")


if __name__ == "__main__":
    main()
