"""Differential tests: the same script under surge and under HF Accelerate, on 2
processes, must show users the same numbers (the compatibility policy in SPEC.md)."""

import os

import pytest

from e2e_util import ROOT, launch_compare

pytestmark = pytest.mark.e2e
SCRIPT = os.path.join(ROOT, "tests", "e2e", "scripts", "scheduler_compare.py")


def _launch(lib: str, *args: str) -> dict:
    return launch_compare(SCRIPT, lib, *args)


def test_learning_rates_follow_accelerates_scheduler_rule():
    """A prepared scheduler steps num_processes times per optimizer step (once with
    split_batches, on every call with step_scheduler_with_optimizer=False, not on
    accumulation micro-steps, stopping at OneCycleLR's end): the LR after every
    micro-step is Accelerate's."""
    pytest.importorskip("accelerate")
    ours, theirs = _launch("surge"), _launch("accelerate")
    assert set(ours) == {"default", "split_batches", "not_with_optimizer", "accumulation"}
    for case in ours:
        assert ours[case] == theirs[case], (case, ours[case], theirs[case])
    assert len(ours["default"]) == 4 and len(ours["split_batches"]) == 8  # each rank's batches
