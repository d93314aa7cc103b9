"""The end-to-end check `surge test` runs on every process of the configured job.

It exercises what a training run needs, compares a short training run against a
single-process reference, and prints one line per check on the main process. The
exit code is non-zero when any check failed on any process.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable

import torch
from torch import nn

from surge.accelerator import Accelerator
from surge.ops import gather_object
from surge.testing.parity import FP16_SCALE, TOLERANCE, make_dataset, max_difference, reference_run, surge_run
from surge.utils import GradScalerKwargs, broadcast


def check_collectives(acc: Accelerator) -> str:
    n, rank = acc.num_processes, acc.process_index
    total = acc.reduce(torch.ones(2, device=acc.device))
    assert total.tolist() == [float(n)] * 2, total
    gathered = acc.gather(torch.tensor([rank], device=acc.device))
    assert gathered.tolist() == list(range(n)), gathered
    value = torch.tensor([rank + 1.0], device=acc.device)
    assert broadcast(value, from_process=0).item() == 1.0
    assert gather_object([rank]) == list(range(n))
    return f"reduce, gather, broadcast, gather_object over {n} process(es) on {acc.device}"


def check_training_parity(acc: Accelerator) -> str:
    mp, k = acc.mixed_precision, acc.gradient_accumulation_steps
    per_process = 4
    global_batch = per_process * acc.num_processes * k
    data = make_dataset(global_batch * 4)
    # The scaler starts low so no fp16 step overflows (the reference does not skip steps).
    run = Accelerator(mixed_precision=mp, gradient_accumulation_steps=k,
                      kwargs_handlers=[GradScalerKwargs(init_scale=FP16_SCALE)])
    got = surge_run(run, data, per_process)
    ref = reference_run(data, global_batch, mp if mp != "fp8" else "bf16")
    diff = max_difference(ref, got)
    tolerance = TOLERANCE.get(mp, 5e-2)
    assert diff <= tolerance, f"max parameter difference {diff:.3g} > {tolerance:g}"
    return f"4 SGD steps, {mp} precision, accumulation {k}: max difference {diff:.1e} (<= {tolerance:g})"


def check_mixed_precision(acc: Accelerator) -> str:
    model = acc.prepare(nn.Sequential(nn.Linear(16, 16)))
    seen: list[torch.dtype] = []
    model.register_forward_hook(lambda *_: None)
    unwrapped = acc.unwrap_model(model, keep_torch_compile=False)
    assert isinstance(unwrapped, nn.Sequential), type(unwrapped)
    inner = unwrapped[0]
    inner.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    out = model(torch.randn(4, 16, device=acc.device))
    assert out.dtype == torch.float32, out.dtype
    expected = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}.get(acc.mixed_precision)
    if expected is not None:
        assert seen == [expected], seen
    return f"{acc.mixed_precision}: forward computes in {seen[0]}, outputs fp32"


CHECKS: list[tuple[str, Callable[[Accelerator], str]]] = [
    ("collectives", check_collectives),
    ("training parity", check_training_parity),
    ("mixed precision", check_mixed_precision),
]


def main() -> int:
    try:
        acc = Accelerator()
    except (ValueError, TypeError, ImportError) as exc:
        print(f"surge test: FAIL  setup  {type(exc).__name__}: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    results = []
    for name, fn in CHECKS:
        start = time.perf_counter()
        try:
            detail = fn(acc)
            results.append((name, True, detail, time.perf_counter() - start))
        except Exception as exc:  # reported below, with the rank
            last = traceback.format_exception_only(type(exc), exc)[-1].strip()
            results.append((name, False, f"rank {acc.process_index}: {last}", time.perf_counter() - start))
    everyone = gather_object([results])
    failed = False
    if acc.is_main_process:
        print(f"surge test: {acc.num_processes} process(es), device {acc.device}, backend {acc.backend or 'none'}")
        for i, (name, _, detail, seconds) in enumerate(results):
            bad = [r[i][2] for r in everyone if not r[i][1]]
            status = "FAIL" if bad else "PASS"
            failed |= bool(bad)
            print(f"  {status}  {name:<16} {'; '.join(bad) if bad else detail}  ({seconds:.1f}s)")
        print("surge test: all checks passed" if not failed else "surge test: some checks FAILED")
    failed_anywhere = any(not ok for r in everyone for _, ok, _, _ in r)
    return 1 if failed_anywhere else 0


if __name__ == "__main__":
    sys.exit(main())
