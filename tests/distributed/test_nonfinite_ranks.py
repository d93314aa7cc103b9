"""Two gloo processes: a NaN on one process only makes every process skip the step
(the verdict is agreed), under DDP and ZeRO-3."""

from __future__ import annotations

import pytest
import torch

from surge import Accelerator
from surge.testing import distributed_test
from surge.testing.parity import BlockModel

pytestmark = pytest.mark.distributed


def _check(**kwargs):
    acc = Accelerator(nonfinite="skip", **kwargs)
    torch.manual_seed(0)
    model = BlockModel()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model, opt = acc.prepare(model, opt)

    def step(poison_rank=None):
        loss = model(torch.randn(4, 8)).pow(2).mean()
        acc.backward(loss * float("nan") if acc.process_index == poison_rank else loss)
        opt.step()
        opt.zero_grad()

    step()
    before = {k: v.clone() for k, v in acc.get_state_dict(model).items()}
    step(poison_rank=1)
    assert acc.nonfinite_steps_skipped == 1 and acc.optimizer_step_was_skipped  # on both processes
    after = acc.get_state_dict(model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # empty on rank 1 when sharded
    step()
    assert acc.nonfinite_steps_skipped == 1 and not acc.optimizer_step_was_skipped


def check_nan_on_one_rank_skips_everywhere_ddp():
    _check()


def check_nan_on_one_rank_skips_everywhere_zero3():
    _check(deepspeed_plugin={"zero_stage": 3})


test_two_processes = distributed_test([check_nan_on_one_rank_skips_everywhere_ddp,
                                       check_nan_on_one_rank_skips_everywhere_zero3], world_size=2)
