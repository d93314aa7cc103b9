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


def check_timeout_is_explained():
    """Rank 1 is busy elsewhere while rank 0 waits in an all_reduce: explain() gathers
    rank 1's state through the store and names it, its place and the collective."""
    from surge.hang import CollectiveTimeout, explain

    acc = Accelerator(kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=3))])
    dist.barrier()
    if acc.process_index == 1:
        time.sleep(8)  # answers rank 0's request from its diagnosis thread meanwhile
        return
    with pytest.raises(RuntimeError) as info:
        dist.all_reduce(torch.ones(1))
    error = explain(info.value)
    assert isinstance(error, CollectiveTimeout), error
    text = str(error)
    assert text.startswith("all_reduce at test_timeout.py:") and "(collective #2 of the default group)" in text, text
    assert "rank 1 never arrived (rank 1 is at test_timeout.py:" in text and "waiting: rank 0" in text, text
    assert explain(info.value) is None  # one diagnosis per process


def test_a_timeout_is_explained_naming_the_missing_rank():
    report = run_distributed([check_timeout_is_explained], world_size=2, start_group=False, timeout=120)
    report.assert_passed()
