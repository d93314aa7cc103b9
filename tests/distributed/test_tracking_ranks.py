"""Two gloo processes: only the main process starts and calls trackers."""

from __future__ import annotations

import json
import os
import tempfile

import pytest
import torch.distributed as dist

from surge import Accelerator
from surge.ops import broadcast_object_list
from surge.testing import distributed_test
from surge.tracking import GeneralTracker, on_main_process

pytestmark = pytest.mark.distributed


class Calls(GeneralTracker):
    name = "calls"

    def __init__(self):
        super().__init__()
        self.calls = []

    @on_main_process
    def start(self):
        self.calls.append("start")

    @on_main_process
    def log(self, values, step=None, **kwargs):
        self.calls.append("log")


def check_only_the_main_process_logs():
    root = broadcast_object_list([tempfile.mkdtemp() if dist.get_rank() == 0 else None])[0]
    calls = Calls()
    acc = Accelerator(log_with=["jsonl", "tensorboard", calls], project_dir=root)
    acc.init_trackers("exp", config={"lr": 0.1})
    for step in range(3):
        acc.log({"loss": float(acc.process_index + step)}, step=step)
    calls.log({"direct": 1})  # a main_process_only tracker's own method: a no-op on rank 1
    if acc.is_main_process:
        assert [t.name for t in acc.trackers] == ["jsonl", "tensorboard", "calls"]
        assert calls.calls == ["start", "log", "log", "log", "log"]
    else:
        assert acc.trackers == [] and calls.calls == []
        blank = acc.get_tracker("jsonl")
        assert isinstance(blank, GeneralTracker) and repr(blank).endswith(", blank)")
        blank.log({"x": 1})  # does nothing
    acc.end_training()
    acc.wait_for_everyone()
    lines = [json.loads(line) for line in open(os.path.join(root, "exp", "metrics.jsonl"))]
    assert [r["loss"] for r in lines] == [0.0, 1.0, 2.0]  # rank 0's values, once, in project_dir/<run>


test_two_processes = distributed_test([check_only_the_main_process_logs], world_size=2)
