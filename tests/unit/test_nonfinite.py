"""The non-finite guard: nonfinite="skip" leaves the parameters untouched for the bad
step and training goes on; "raise" names the step; fp16 keeps its scaler."""

import logging

import pytest
import torch
from torch import nn

from surge import Accelerator


def setup(**kwargs):
    acc = Accelerator(**kwargs)
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    model, opt, sched = acc.prepare(model, opt, sched)
    return acc, model, opt, sched


def step(acc, model, opt, sched, poison=False):
    with acc.accumulate(model):
        loss = model(torch.ones(2, 4)).pow(2).mean()
        acc.backward(loss * float("nan") if poison else loss)
        opt.step()
        sched.step()
        opt.zero_grad()


def snapshot(model, opt):
    return [p.detach().clone() for p in model.parameters()], {
        k: v["momentum_buffer"].clone() for k, v in opt.state_dict()["state"].items()}


def test_skip_leaves_everything_untouched_and_training_goes_on(caplog):
    acc, model, opt, sched = setup(nonfinite="skip")
    step(acc, model, opt, sched)
    params, momentum = snapshot(model, opt)
    lr = sched.get_last_lr()
    with caplog.at_level(logging.WARNING, logger="surge"):
        step(acc, model, opt, sched, poison=True)
    after, after_momentum = snapshot(model, opt)
    assert all(torch.equal(a, b) for a, b in zip(params, after, strict=True))
    assert all(torch.equal(momentum[k], after_momentum[k]) for k in momentum)
    assert sched.get_last_lr() == lr  # the schedule does not advance over a skipped step
    assert acc.optimizer_step_was_skipped and acc.nonfinite_steps_skipped == 1
    assert "non-finite loss and gradient norm (NaN or inf) at optimizer step 2: step skipped" in caplog.text
    step(acc, model, opt, sched)
    assert not acc.optimizer_step_was_skipped
    assert not all(torch.equal(a, b) for a, b in zip(params, snapshot(model, opt)[0], strict=True))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_bad_micro_step_skips_its_whole_accumulation_cycle():
    acc, model, opt, sched = setup(nonfinite="skip", gradient_accumulation_steps=2)
    params, _ = snapshot(model, opt)
    step(acc, model, opt, sched, poison=True)  # micro-step 1 of 2: no optimizer step yet
    step(acc, model, opt, sched)               # the boundary: the cycle holds a NaN
    assert acc.nonfinite_steps_skipped == 1
    assert all(torch.equal(a, b) for a, b in zip(params, snapshot(model, opt)[0], strict=True))
    step(acc, model, opt, sched)
    step(acc, model, opt, sched)               # a clean cycle steps
    assert acc.nonfinite_steps_skipped == 1 and not acc.optimizer_step_was_skipped


def test_non_finite_gradients_alone_are_caught():
    acc, model, opt, sched = setup(nonfinite="raise")
    step(acc, model, opt, sched)
    model.weight.register_hook(lambda g: torch.full_like(g, float("inf")))
    with pytest.raises(FloatingPointError, match=r"non-finite gradient norm \(NaN or inf\) at optimizer step 2"):
        step(acc, model, opt, sched)


def test_raise_names_the_step():
    acc, model, opt, sched = setup(nonfinite="raise")
    for _ in range(3):
        step(acc, model, opt, sched)
    with pytest.raises(FloatingPointError, match=r"non-finite loss and gradient norm .* at optimizer step 4; stopping"):
        step(acc, model, opt, sched, poison=True)


def test_ignore_is_the_default_and_fp16_keeps_its_scaler():
    acc, model, opt, sched = setup()
    step(acc, model, opt, sched, poison=True)
    assert not all(torch.isfinite(p).all() for p in model.parameters())  # nothing guards by default
    # Under fp16 the loss scaler owns non-finite steps: no FloatingPointError, the scaler
    # skips the step and lowers its scale, and the guard counts nothing.
    acc16, model, opt, sched = setup(nonfinite="raise", mixed_precision="fp16", cpu=True)
    params, _ = snapshot(model, opt)
    scale = acc16.scaler.get_scale()
    step(acc16, model, opt, sched, poison=True)
    assert acc16.optimizer_step_was_skipped and acc16.nonfinite_steps_skipped == 0
    assert acc16.scaler.get_scale() < scale
    assert all(torch.equal(a, b) for a, b in zip(params, snapshot(model, opt)[0], strict=True))
    with pytest.raises(ValueError, match="nonfinite='sometimes' is not supported; use 'ignore'"):
        Accelerator(nonfinite="sometimes")
