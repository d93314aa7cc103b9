"""Per-step cost of surge's prepared training loop vs the same loop in plain PyTorch.

A tiny CPU model, so wrapper overhead is not hidden by compute. Each loop iterates a
DataLoader over the same in-memory data and runs forward, backward, optimizer step,
scheduler step and zero_grad.

Small shared machines drift in speed by +-20% from one second to the next, which
swamps a few-percent overhead when whole runs are compared. So the loops run in
lockstep: step i of every variant is taken back to back (in rotating order) and timed
on its own; each variant's per-step median is taken, and that is repeated for several
rounds whose medians are reported. HF Accelerate joins when it is installed.

    python benchmarks/step_overhead.py [--rounds 7] [--steps 500]
"""

from __future__ import annotations

import argparse
import platform
import statistics
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lockstep import one_round


def make(steps: int, batch: int):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    data = TensorDataset(torch.randn(steps * batch, 32), torch.randn(steps * batch, 1))
    return model, opt, sched, DataLoader(data, batch_size=batch)


def stepper(model, opt, sched, loader, backward: Callable, accumulate: Callable | None = None) -> Iterator[None]:
    """A generator that runs one training step per ``next()``."""
    for x, y in loader:
        if accumulate is not None:
            with accumulate(model):
                backward(nn.functional.mse_loss(model(x), y))
                opt.step()
                sched.step()
                opt.zero_grad()
        else:
            backward(nn.functional.mse_loss(model(x), y))
            opt.step()
            sched.step()
            opt.zero_grad()
        yield


def plain(steps, batch):
    model, opt, sched, loader = make(steps, batch)
    return stepper(model, opt, sched, loader, lambda loss: loss.backward())


def surge_loop(steps, batch, with_accumulate=False, **options):
    from surge import Accelerator

    acc = Accelerator(**options)
    model, opt, sched, loader = acc.prepare(*make(steps, batch))
    return stepper(model, opt, sched, loader, acc.backward, acc.accumulate if with_accumulate else None)


def accelerate_loop(steps, batch):
    from accelerate import Accelerator  # type: ignore[import-not-found]

    acc = Accelerator(cpu=True)
    model, opt, sched, loader = acc.prepare(*make(steps, batch))
    return stepper(model, opt, sched, loader, acc.backward)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(1)
    variants: dict[str, Callable] = {
        "plain PyTorch": plain,
        "surge": surge_loop,
        "surge + accumulate()": lambda s, b: surge_loop(s, b, True),
        "surge, warnings off": lambda s, b: surge_loop(s, b, warnings="off"),  # the run-time advice's cost
    }
    try:
        import accelerate  # type: ignore[import-not-found]  # noqa: F401

        variants["HF Accelerate"] = accelerate_loop
    except ImportError:
        pass

    def bind(steps: int) -> dict[str, Callable[[], Iterator[None]]]:
        return {name: (lambda make=make: make(steps, args.batch)) for name, make in variants.items()}

    one_round(bind(50), 50, 0)  # warm-up
    rounds = [one_round(bind(args.steps), args.steps, r) for r in range(args.rounds)]
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch thread, torch {torch.__version__}; "
          f"{args.rounds} rounds x {args.steps} lockstep steps, batch {args.batch}\n")
    print("| loop | median per step (us) | vs plain (median of per-round ratios) |")
    print("| --- | --- | --- |")
    for name in variants:
        ratio = statistics.median(r[name] / r["plain PyTorch"] for r in rounds)
        print(f"| {name} | {statistics.median(r[name] for r in rounds):.1f} | {ratio:.3f}x |")


if __name__ == "__main__":
    main()
