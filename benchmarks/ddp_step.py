"""2-process DDP step time: surge's prepared loop vs hand-written PyTorch DDP (and HF
Accelerate when it is installed).

    surge launch --num_processes 2 benchmarks/ddp_step.py [--rounds 7] [--steps 200]

Both loops live in the same processes and share the process group: a DDP-wrapped copy
of the model with a DistributedSampler DataLoader, stepped by hand, and the same model
prepared by surge. They run in lockstep (step i of each back to back, rotating which goes
first) so the machine's drift hits both alike; each round reports the per-step medians,
and the table the median over rounds of the per-round ratio (as in step_overhead.py).
Every step all-reduces the gradients, so the ratio shows whatever surge adds around
DDP's own communication.
"""

from __future__ import annotations

import argparse
import platform
import statistics
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lockstep import one_round
from surge import Accelerator


def make(width: int, steps: int, batch: int, world: int):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width), nn.GELU(),
                          nn.Linear(width, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    n = steps * batch * world
    data = TensorDataset(torch.randn(n, width), torch.randn(n, 1))
    return model, opt, data


def plain(width: int, steps: int, batch: int) -> Iterator[None]:
    world = dist.get_world_size()
    model, opt, data = make(width, steps, batch, world)
    ddp = nn.parallel.DistributedDataParallel(model)
    loader = DataLoader(data, batch_size=batch, sampler=DistributedSampler(data, shuffle=False))
    for x, y in loader:
        loss = nn.functional.mse_loss(ddp(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        yield


def surge_loop(accelerator: Accelerator, width: int, steps: int, batch: int) -> Iterator[None]:
    model, opt, data = make(width, steps, batch, accelerator.num_processes)
    model, opt, loader = accelerator.prepare(model, opt, DataLoader(data, batch_size=batch))
    for x, y in loader:
        loss = nn.functional.mse_loss(model(x), y)
        accelerator.backward(loss)
        opt.step()
        opt.zero_grad()
        yield


def accelerate_loop(width: int, steps: int, batch: int) -> Iterator[None]:
    from accelerate import Accelerator as HFAccelerator  # type: ignore[import-not-found]

    accelerator = HFAccelerator(cpu=True)
    model, opt, data = make(width, steps, batch, accelerator.num_processes)
    model, opt, loader = accelerator.prepare(model, opt, DataLoader(data, batch_size=batch))
    for x, y in loader:
        loss = nn.functional.mse_loss(model(x), y)
        accelerator.backward(loss)
        opt.step()
        opt.zero_grad()
        yield


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--width", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(1)
    accelerator = Accelerator()
    if accelerator.num_processes < 2:
        raise SystemExit("run it with several processes: surge launch --num_processes 2 benchmarks/ddp_step.py")
    variants = {
        "hand-written DDP": lambda: plain(args.width, args.steps, args.batch),
        "surge": lambda: surge_loop(accelerator, args.width, args.steps, args.batch),
    }
    try:
        import accelerate  # type: ignore[import-not-found]  # noqa: F401

        variants["HF Accelerate"] = lambda: accelerate_loop(args.width, args.steps, args.batch)
    except ImportError:
        pass
    one_round(variants, 20, 0, before_step=dist.barrier)  # warm-up
    # The barrier: both processes start each step together, as in a real job.
    rounds = [one_round(variants, args.steps, r, before_step=dist.barrier) for r in range(args.rounds)]
    # The slower process decides the step: report the larger of the two processes' figures.
    slowest = []
    for r in rounds:
        everyone = _all(r)
        slowest.append({k: max(g[k] for g in everyone) for k in r})
    if accelerator.is_main_process:
        params = sum(p.numel() for p in make(args.width, 1, 1, 1)[0].parameters())
        print(f"machine: {platform.machine()}, torch {torch.__version__}, {accelerator.num_processes} gloo processes x "
              f"1 thread; {params / 1e6:.2f}M parameters, batch {args.batch} per process; {args.rounds} rounds x "
              f"{args.steps} lockstep steps\n")
        print("| loop | median per step (us) | vs hand-written DDP (median of per-round ratios) |")
        print("| --- | --- | --- |")
        for name in variants:
            ratio = statistics.median(r[name] / r["hand-written DDP"] for r in slowest)
            print(f"| {name} | {statistics.median(r[name] for r in slowest):.1f} | {ratio:.3f}x |")


def _all(result: dict[str, float]) -> list[dict[str, float]]:
    gathered: list[dict[str, float] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, result)
    return [g for g in gathered if g is not None]


if __name__ == "__main__":
    main()
