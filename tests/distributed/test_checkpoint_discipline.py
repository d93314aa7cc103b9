"""Two gloo processes: save_state called on the main process only works for DDP and
fails fast (never hangs) under ZeRO-3, naming the missing process within a second; a
full round trip restores everything."""

from __future__ import annotations

import os
import tempfile
import time
import warnings

import pytest
import torch
import torch.distributed as dist

from surge import Accelerator, ProjectConfiguration, advice
from surge.advice import SurgeAdvice
from surge.checkpoint import training
from surge.ops import broadcast_object_list
from surge.testing import distributed_test
from surge.testing.parity import BlockModel

pytestmark = pytest.mark.distributed


def _tmp() -> str:
    return broadcast_object_list([tempfile.mkdtemp() if dist.get_rank() == 0 else None])[0]


def _prepared(**kwargs):
    acc = Accelerator(**kwargs)
    model = BlockModel()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model, opt = acc.prepare(model, opt)
    acc.backward(model(torch.randn(4, 8)).pow(2).mean())
    opt.step()
    return acc, model, opt


def check_main_process_only_save_works_for_ddp():
    acc, model, _ = _prepared()
    directory = os.path.join(_tmp(), "ckpt")
    if acc.is_main_process:
        acc.save_state(directory)  # no collective inside: the other rank is not here
    acc.wait_for_everyone()
    assert sorted(os.listdir(directory)) == ["model_0.safetensors", "optimizer_0.pt", "rank_0.pt", "state.pt",
                                             "surge_checkpoint.json"]
    before = {k: v.clone() for k, v in acc.get_state_dict(model).items()}
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    with pytest.warns(UserWarning, match="no RNG state for process 1") if acc.process_index == 1 else _nothing():
        acc.load_state(directory)
    assert all(torch.equal(v, before[k]) for k, v in acc.get_state_dict(model).items())


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def check_every_process_saving_adds_each_rng_state():
    acc, _, _ = _prepared(project_config=ProjectConfiguration(_tmp(), automatic_checkpoint_naming=True))
    path = acc.save_state()
    acc.wait_for_everyone()
    assert {"rank_0.pt", "rank_1.pt"} <= set(os.listdir(path)) and path.endswith("checkpoint_0")


def check_main_process_only_save_fails_fast_when_sharded():
    acc, _, _ = _prepared(deepspeed_plugin={"zero_stage": 3})
    directory = os.path.join(_tmp(), "ckpt")
    old, training.ARRIVAL_TIMEOUT_S = training.ARRIVAL_TIMEOUT_S, 3.0
    old_note, advice.ARRIVAL_NOTE_S = advice.ARRIVAL_NOTE_S, 0.5
    try:
        if acc.is_main_process:
            start = time.monotonic()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                with pytest.raises(RuntimeError, match="every process must call"):
                    acc.save_state(directory)
            assert not os.path.exists(directory)
            # The missing process is named after ARRIVAL_NOTE_S, long before the timeout.
            (note,) = [r for r in caught if issubclass(r.category, SurgeAdvice)]
            assert "processes [0] called it and [1] did not" in str(note.message)
            assert "after 0.5 s" in str(note.message) and time.monotonic() - start >= 3.0
            assert note.filename == __file__  # the user's save_state line
    finally:
        training.ARRIVAL_TIMEOUT_S = old
        advice.ARRIVAL_NOTE_S = old_note
    acc.wait_for_everyone()


CHECKS = [
    check_main_process_only_save_works_for_ddp,
    check_every_process_saving_adds_each_rng_state,
    check_main_process_only_save_fails_fast_when_sharded,
]

test_two_processes = distributed_test(CHECKS, world_size=2)
