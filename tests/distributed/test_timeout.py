"""The process-group timeout is applied: a rank that never arrives fails the others
within the timeout instead of hanging."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

from surge import Accelerator
from surge.testing import run_distributed
from surge.utils import InitProcessGroupKwargs

pytestmark = pytest.mark.distributed


def check_collective_times_out():
    acc = Accelerator(kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=2))])
    if acc.process_index == 1:
        time.sleep(8)  # never joins rank 0's all_reduce in time
        return
    start = time.monotonic()
    with pytest.raises(RuntimeError):
        dist.all_reduce(torch.ones(1))
    waited = time.monotonic() - start
    assert waited < 6, f"the 2 s timeout was not applied (waited {waited:.1f} s)"


def test_timeout_is_applied():
    report = run_distributed([check_collective_times_out], world_size=2, start_group=False, timeout=120)
    report.assert_passed()
