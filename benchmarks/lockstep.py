"""Lockstep timing shared by the benchmarks: step i of every variant back to back,
rotating which goes first, so a machine's drift in speed hits all variants alike."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Iterator


def one_round(variants: dict[str, Callable[[], Iterator[None]]], steps: int, shift: int,
              before_step: Callable[[], None] | None = None) -> dict[str, float]:
    """Per-step medians (us) of each variant over ``steps`` lockstep steps.

    ``variants`` map names to functions returning a generator that runs one training
    step per ``next()``; ``before_step`` runs untimed before each step (e.g. a barrier).
    """
    loops = {name: make_loop() for name, make_loop in variants.items()}
    names = list(loops)
    per_step: dict[str, list[int]] = {n: [] for n in names}
    gc.collect()
    gc.disable()  # a collection landing in one variant's step is noise
    try:
        for i in range(steps):
            k = (i + shift) % len(names)
            for name in names[k:] + names[:k]:  # rotate who goes first
                if before_step is not None:
                    before_step()
                start = time.perf_counter_ns()
                next(loops[name])
                per_step[name].append(time.perf_counter_ns() - start)
    finally:
        gc.enable()
    return {n: statistics.median(v) / 1e3 for n, v in per_step.items()}
