"""Checkpoint save/load time: ``save_state`` / ``load_state`` vs hand-written PyTorch
saving the same state, and the training stall of an async save vs a sync one.

    surge launch --num_processes 2 benchmarks/checkpoint.py [--rounds 5] [--width 2048]
    python benchmarks/checkpoint.py            # one process: the full layout only

Two strategies, each against what a user would write by hand for it:

- DDP (or one process): the full layout. Plain: the main process ``torch.save``\\ s
  ``{"model": model.state_dict(), "optimizer": optimizer.state_dict()}`` to one file;
  loading is ``torch.load`` + ``load_state_dict`` on every process.
- ZeRO-3: the sharded layout. Plain: ``dcp.save`` / ``dcp.load`` of
  ``get_model_state_dict`` and ``get_optimizer_state_dict``, then ``set_*``.

Variants alternate within each round (rotating order) and the per-round medians are
reported, with the ratio of medians. The stall is how long ``save_state`` blocks the
training loop, sync and with ``async_save=True``; for the async save also when its write
is done and how much slower the training steps run meanwhile (the write competes with
training for the CPU and memory bandwidth).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
import warnings

import torch
import torch.distributed as dist

from surge import Accelerator
from surge.ops import broadcast_object_list
from zero_memory import Net  # the same stack of Linear blocks, sized by --width/--depth


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def timed(fn) -> float:
    barrier()
    start = time.perf_counter()
    fn()
    barrier()
    return time.perf_counter() - start


def build(args, plugin):
    acc = Accelerator(deepspeed_plugin=plugin)
    torch.manual_seed(0)
    model = Net(args.width, args.depth)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model, opt = acc.prepare(model, opt)
    step(acc, model, opt, args.width)  # the optimizer state exists
    return acc, model, opt


def step(acc, model, opt, width) -> None:
    acc.backward(model(torch.randn(8, width)).pow(2).mean())
    opt.step()
    opt.zero_grad()


def plain_full(acc, model, opt, where):
    inner = acc.unwrap_model(model)

    def save():
        if acc.is_main_process:
            torch.save({"model": inner.state_dict(), "optimizer": opt.optimizer.state_dict()}, where() + ".pt")

    def load():
        state = torch.load(where() + ".pt", weights_only=True)
        inner.load_state_dict(state["model"])
        opt.optimizer.load_state_dict(state["optimizer"])

    return save, load


def plain_dcp(acc, model, opt, where):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )


    def state():
        return {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt.optimizer)}

    def save():
        dcp.save(state(), checkpoint_id=where())

    def load():
        sd = state()
        dcp.load(sd, checkpoint_id=where())
        set_model_state_dict(model, sd["model"])
        set_optimizer_state_dict(model, opt.optimizer, sd["optim"])

    return save, load


def compare(args, name, plugin, plain_factory, root) -> list[str]:
    acc, model, opt = build(args, plugin)
    # Every save goes to a new path, as a training run's periodic checkpoints do; the
    # previous ones are deleted outside the timed region.
    count = [0]

    def where(kind: str) -> str:
        return os.path.join(root, f"{kind}_{count[0]}")

    plain_save, plain_load = plain_factory(acc, model, opt, lambda: where("plain"))
    variants = {
        "plain save": plain_save,
        "surge save_state": lambda: acc.save_state(where("surge")),
        "plain load": plain_load,
        "surge load_state": lambda: acc.load_state(where("surge")),
    }

    def next_paths() -> None:
        barrier()
        if acc.is_main_process:
            for entry in os.listdir(root):
                path = os.path.join(root, entry)
                if os.path.isdir(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.remove(path)
        count[0] += 1
        barrier()

    for fn in variants.values():  # warm-up: first imports, first collectives
        timed(fn)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(where("surge")) for f in fs)
    rounds: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.rounds):
        times: dict[str, list[float]] = {k: [] for k in variants}
        for rep in range(args.repeats):
            next_paths()
            for pair in (["plain save", "surge save_state"], ["plain load", "surge load_state"]):
                for k in pair if (r + rep) % 2 == 0 else pair[::-1]:  # a load reads this round's save
                    times[k].append(timed(variants[k]))
        for k in variants:
            rounds[k].append(statistics.median(times[k]))
    med = {k: statistics.median(v) for k, v in rounds.items()}
    next_paths()
    rows = [(f"| {name} | save | {med['plain save'] * 1e3:.0f} | {med['surge save_state'] * 1e3:.0f} | "
             f"{med['surge save_state'] / med['plain save']:.2f}x | {size / 1e6:.0f} MB |"),
            (f"| {name} | load | {med['plain load'] * 1e3:.0f} | {med['surge load_state'] * 1e3:.0f} | "
             f"{med['surge load_state'] / med['plain load']:.2f}x | |")]
    return rows, stall(args, acc, model, opt, name, root)


def stall(args, acc, model, opt, name, root) -> str:
    """How long each kind of save blocks training, and how much slower the training
    steps run while a background write is going on."""
    path = os.path.join(root, "stall_ckpt")

    def steps(n: int) -> list[float]:
        out = []
        for _ in range(n):
            start = time.perf_counter()
            step(acc, model, opt, args.width)
            out.append(time.perf_counter() - start)
        return out

    base, during, sync_block, async_block, async_done = [], [], [], [], []
    for _ in range(args.rounds):
        base += steps(args.steps)
        barrier()
        sync_block.append(timed(lambda: acc.save_state(path)))
        barrier()
        start = time.perf_counter()
        acc.save_state(path, async_save=True)
        async_block.append(time.perf_counter() - start)
        during += steps(args.steps)  # the write runs meanwhile (it may finish earlier)
        acc.wait_for_checkpoint()
        async_done.append(time.perf_counter() - start)
    med = statistics.median
    return (f"| {name} | {med(sync_block) * 1e3:.0f} | {med(async_block) * 1e3:.0f} | {med(async_done) * 1e3:.0f} | "
            f"{med(base) * 1e3:.1f} | {med(during) * 1e3:.1f} ({med(during) / med(base):.2f}x) |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="timings per variant per round")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="training steps run during each async write")
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="Detected an existing checkpoint")  # plain DCP re-saving
    acc = Accelerator()
    root = broadcast_object_list([tempfile.mkdtemp(dir=args.dir) if acc.is_main_process else None])[0] \
        if acc.num_processes > 1 else tempfile.mkdtemp(dir=args.dir)
    params = sum(p.numel() for p in Net(args.width, args.depth).parameters())
    rows, stalls = [], []
    try:
        setups = [("DDP" if acc.num_processes > 1 else "one process", None, plain_full)]
        if acc.num_processes > 1:
            setups.append(("ZeRO-3", {"zero_stage": 3}, plain_dcp))
        for name, plugin, plain in setups:
            got, stalled = compare(args, name, plugin, plain, root)
            rows += got
            stalls.append(stalled)
    finally:
        barrier()
        if acc.is_main_process:
            shutil.rmtree(root, ignore_errors=True)
    if acc.is_main_process:
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
              f"{acc.num_processes} process(es); {params / 1e6:.1f}M parameters, fp32 AdamW; {args.rounds} rounds x "
              f"{args.repeats} repeats, medians (ms)\n")
        print("| strategy | operation | plain PyTorch (ms) | surge (ms) | surge / plain | checkpoint |")
        print("| --- | --- | --- | --- | --- | --- |")
        print("\n".join(rows))
        print(f"\nTraining stall (ms): how long save_state blocks, sync and async; when the async write is done "
              f"(after {args.steps} training steps run meanwhile, or later); the median training step without and "
              "during the background write.\n")
        print("| strategy | sync save blocks | async save blocks | async write done after | step | step during "
              "async write |")
        print("| --- | --- | --- | --- | --- | --- |")
        print("\n".join(stalls))


if __name__ == "__main__":
    main()
