"""DummyOptim / DummyScheduler: prepare builds the DeepSpeed config's optimizer and
scheduler, filling "auto" as Accelerate does, and refuses what Accelerate refuses."""

import pytest
import torch
from torch import nn

from surge import Accelerator, DeepSpeedPlugin
from surge.deepspeed.schedulers import WarmupDecayLR
from surge.utils import DummyOptim, DummyScheduler

OPTIMIZER = {"type": "AdamW", "params": {"lr": "auto", "weight_decay": "auto", "betas": [0.9, 0.99]}}
SCHEDULER = {"type": "WarmupDecayLR", "params": {"warmup_min_lr": "auto", "warmup_max_lr": "auto",
                                                  "warmup_num_steps": "auto", "total_num_steps": "auto"}}


def accelerator(**sections):
    config = {"zero_optimization": {"stage": 0}, "gradient_accumulation_steps": 2, **sections}
    return Accelerator(deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=config))


def test_prepare_builds_the_config_optimizer_and_scheduler():
    acc = accelerator(optimizer=OPTIMIZER, scheduler=SCHEDULER)
    model = nn.Linear(2, 1)
    dummy = DummyOptim(model.parameters(), lr=0.1, weight_decay=0.01)
    model, opt, sched = acc.prepare(model, dummy, DummyScheduler(dummy, total_num_steps=6, warmup_num_steps=2))
    inner = opt.optimizer
    assert type(inner) is torch.optim.AdamW and inner.defaults["weight_decay"] == 0.01
    assert inner.defaults["betas"] == (0.9, 0.99)
    assert isinstance(sched.scheduler, WarmupDecayLR) and sched.scheduler.total_num_steps == 6
    expected = WarmupDecayLR(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1), total_num_steps=6,
                             warmup_min_lr=0, warmup_max_lr=0.1, warmup_num_steps=2)
    lrs, want = [], []
    for _ in range(4):  # two optimizer steps (accumulation 2): the schedule advances once per step
        with acc.accumulate(model):
            acc.backward(model(torch.ones(1, 2)).sum())
            opt.step()
            sched.step()
            opt.zero_grad()
        lrs.append(opt.param_groups[0]["lr"])
    for _ in range(2):
        want.append(expected.get_last_lr()[0])
        expected.optimizer.step()
        expected.step()
        want.append(expected.get_last_lr()[0])
    assert lrs == want


def test_config_values_win_and_callables_build_the_scheduler():
    section = {"type": "SGD", "params": {"lr": 0.5}}
    acc = accelerator(optimizer=section)
    model = nn.Linear(2, 1)
    dummy = DummyOptim(model.parameters(), lr=0.1)
    _, opt, sched = acc.prepare(model, dummy, DummyScheduler(
        dummy, lr_scheduler_callable=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5)))
    assert type(opt.optimizer) is torch.optim.SGD and opt.param_groups[0]["lr"] == 0.5
    assert sched.scheduler.optimizer is opt.optimizer and sched.steps_per_optimizer_step == 1


def test_refusals_match_accelerates():
    model = nn.Linear(2, 1)
    real = torch.optim.SGD(model.parameters(), lr=0.1)
    cases = [
        (Accelerator(), (DummyOptim(model.parameters()),), "there is no DeepSpeed config"),
        (accelerator(), (DummyOptim(model.parameters()),), "no optimizer section"),
        (accelerator(optimizer=OPTIMIZER), (real,), "optimizer and the DeepSpeed config has an optimizer section"),
        (accelerator(scheduler=SCHEDULER), (real, torch.optim.lr_scheduler.StepLR(real, 1)),
         "scheduler and the DeepSpeed config has a scheduler section"),
        (accelerator(), (real, DummyScheduler(real)), "no scheduler section and it has no lr_scheduler_callable"),
        (accelerator(optimizer=OPTIMIZER), (DummyOptim(model.parameters()), torch.optim.lr_scheduler.StepLR(real, 1)),
         "a DummyOptim goes with a DummyScheduler"),
        (accelerator(optimizer={"type": "Adam", "params": {"eps": "auto"}}), (DummyOptim(model.parameters()),),
         r"optimizer.params.eps = \"auto\" and nothing fills it"),
    ]
    for acc, args, message in cases:
        with pytest.raises(ValueError, match=message):
            acc.prepare(*args)
