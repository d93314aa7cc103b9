"""Mixed precision and accumulation on one process: parity, overflow, scheduler rule."""

import math
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from surge import Accelerator
from surge.precision.fp8 import check_fp8_supported
from surge.testing.parity import (
    FP16_SCALE,
    TOLERANCE,
    make_dataset,
    max_difference,
    reference_run,
    scheduled_run,
    surge_run,
)
from surge.utils import AutocastKwargs, GradScalerKwargs


def scaler():
    return GradScalerKwargs(init_scale=FP16_SCALE)


@pytest.mark.parametrize("mixed_precision", ["no", "bf16", "fp16"])
@pytest.mark.parametrize("steps", [1, 4])
def test_parity_with_one_big_batch(mixed_precision, steps):
    data = make_dataset(64)
    ref = reference_run(data, 16, mixed_precision)
    acc = Accelerator(mixed_precision=mixed_precision, gradient_accumulation_steps=steps, kwargs_handlers=[scaler()])
    got = surge_run(acc, data, 16 // steps)
    assert max_difference(ref, got) <= TOLERANCE[mixed_precision]


def test_short_last_cycle_is_an_exact_mean():
    # 40 samples, micro-batches of 4, K=4: cycles of 16, 16 and 8 samples; the last
    # cycle has 2 micro-batches and must average over 2, not 4.
    data = make_dataset(40)
    got = surge_run(Accelerator(gradient_accumulation_steps=4), data, 4)
    assert max_difference(reference_run(data, 16), got) <= 1e-6


def test_item_weighted_mean_over_uneven_micro_batches():
    torch.manual_seed(0)
    x, y = torch.randn(14, 3), torch.randn(14, 1)
    sizes = [5, 2, 4, 3]  # one accumulation cycle of uneven micro-batches
    big = nn.Linear(3, 1)
    nn.functional.mse_loss(big(x), y).backward()  # mean over all 14 items

    acc = Accelerator(gradient_accumulation_steps=4)
    model = nn.Linear(3, 1)
    model.load_state_dict(big.state_dict())
    model = acc.prepare(model)
    n_items = acc.reduce(torch.tensor(sum(sizes)), "sum")
    start = 0
    for size in sizes:
        with acc.accumulate(model):
            xb, yb = x[start : start + size], y[start : start + size]
            start += size
            loss_sum = nn.functional.mse_loss(model(xb), yb, reduction="sum")
            acc.backward(loss_sum, num_items_in_batch=n_items)
    for a, b in zip(big.parameters(), model.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-6)
    # The plain mean-per-micro-batch recipe would be wrong here (a check the test can fail):
    naive = nn.Linear(3, 1)
    naive.load_state_dict(big.state_dict())
    start = 0
    for size in sizes:
        (nn.functional.mse_loss(naive(x[start : start + size]), y[start : start + size]) / 4).backward()
        start += size
    assert not torch.allclose(naive.weight.grad, big.weight.grad, atol=1e-4)


@pytest.mark.parametrize("steps", [1, 4])
@pytest.mark.parametrize("n", [64, 72])
def test_scheduler_ends_at_the_last_optimizer_step(steps, n):
    acc = Accelerator(gradient_accumulation_steps=steps)
    # math.ceil(len / steps) * epochs == len * epochs / steps when divisible
    optimizer_steps, last_epoch, last_lr, total = scheduled_run(
        acc, n, lambda length, epochs: math.ceil(length / steps) * epochs
    )
    assert optimizer_steps == total and last_epoch == total
    assert last_lr == 0.0


def test_fp16_overflow_skips_the_step_and_the_scheduler():
    acc = Accelerator(mixed_precision="fp16", kwargs_handlers=[scaler()])
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)
    model, opt, sched = acc.prepare(model, opt, sched)
    x = torch.randn(8, 4)
    acc.backward(model(x).pow(2).mean())
    opt.step()
    sched.step()
    opt.zero_grad()
    assert not acc.optimizer_step_was_skipped and sched.get_last_lr() == [0.05]
    before = [p.detach().clone() for p in model.parameters()]
    scale = acc.scaler.get_scale()
    acc.backward(model(x).pow(2).mean() * float("inf"))  # injected overflow
    opt.step()
    sched.step()
    opt.zero_grad()
    assert acc.optimizer_step_was_skipped and opt.step_was_skipped
    assert acc.scaler.get_scale() == scale / 2
    assert sched.get_last_lr() == [0.05]  # the scheduler did not advance
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    acc.backward(model(x).pow(2).mean())
    opt.step()
    sched.step()
    opt.zero_grad()
    assert not acc.optimizer_step_was_skipped and sched.get_last_lr() == [0.025]


def test_fp16_clip_grad_norm_sees_unscaled_gradients():
    torch.manual_seed(0)
    x = torch.randn(8, 4)
    ref = nn.Linear(4, 1)
    ref(x).pow(2).mean().backward()
    true_norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), 1e9)

    acc = Accelerator(mixed_precision="fp16", kwargs_handlers=[scaler()])
    model = nn.Linear(4, 1)
    model.load_state_dict(ref.state_dict())
    model, opt = acc.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    acc.backward(model(x).pow(2).mean())
    norm = acc.clip_grad_norm_(model.parameters(), 1e9)
    assert norm == pytest.approx(true_norm.item(), rel=2e-3)
    acc.clip_grad_norm_(model.parameters(), 1e9)  # a second call must not unscale twice
    opt.step()


def test_clipping_inside_an_accumulation_cycle_is_skipped():
    acc = Accelerator(gradient_accumulation_steps=2)
    model, _opt = acc.prepare(nn.Linear(2, 1), torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=0.1))
    with acc.accumulate(model):
        acc.backward(model(torch.ones(1, 2)).sum())
        assert acc.clip_grad_norm_(model.parameters(), 1.0) is None
    with acc.accumulate(model):
        acc.backward(model(torch.ones(1, 2)).sum())
        assert acc.clip_grad_norm_(model.parameters(), 1.0) is not None


@pytest.mark.parametrize("mixed_precision", ["bf16", "fp16"])
def test_autocast_forward_and_fp32_outputs(mixed_precision):
    acc = Accelerator(mixed_precision=mixed_precision)
    model = acc.prepare(nn.Sequential(nn.Linear(4, 2)))
    dtype = torch.bfloat16 if mixed_precision == "bf16" else torch.float16
    seen = []
    model[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    assert model(torch.randn(3, 4)).dtype == torch.float32
    assert seen == [dtype]
    with acc.autocast():
        assert (torch.randn(2, 2) @ torch.randn(2, 2)).dtype == dtype
    raw = acc.unwrap_model(model, keep_fp32_wrapper=False)
    assert raw(torch.randn(3, 4)).dtype == torch.float32 and "forward" not in raw.__dict__
    keep = Accelerator(mixed_precision=mixed_precision,
                       kwargs_handlers=[AutocastKwargs(convert_outputs_to_fp32=False)]).prepare(nn.Linear(4, 2))
    assert keep(torch.randn(3, 4)).dtype == dtype


def test_full_precision_has_no_autocast():
    acc = Accelerator()
    model = acc.prepare(nn.Linear(2, 2))
    assert "forward" not in model.__dict__ and acc.scaler is None
    with acc.autocast():
        assert (torch.randn(2, 2) @ torch.randn(2, 2)).dtype == torch.float32


def test_fp8_is_refused_on_cpu():
    with pytest.raises(ValueError, match=r"mixed_precision='fp8' needs a CUDA GPU .* runs on 'cpu'.*'bf16'"):
        Accelerator(mixed_precision="fp8")


def test_fp8_checks_capability_and_torchao(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "A100")
    with pytest.raises(ValueError, match=r"A100 has 8.0"):
        check_fp8_supported(torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (9, 0))
    monkeypatch.setitem(sys.modules, "torchao", None)
    monkeypatch.setitem(sys.modules, "torchao.float8", None)
    with pytest.raises(ImportError, match="pip install torchao"):
        check_fp8_supported(torch.device("cuda", 0))


def test_scaler_kwargs_validation():
    with pytest.raises(ValueError, match=r"growth_factor=1.0"):
        GradScalerKwargs(growth_factor=1.0)
    with pytest.raises(ValueError, match="backoff_factor=2"):
        GradScalerKwargs(backoff_factor=2)


def test_skip_first_batches_resumes_mid_epoch():
    acc = Accelerator()
    data = TensorDataset(torch.arange(12))
    loader = acc.prepare(DataLoader(data, batch_size=2, shuffle=True))
    start = torch.get_rng_state()  # in one process the shuffle draws from the global RNG, as unprepared
    full = [[x.tolist() for (x,) in loader] for _ in range(2)]
    loader.set_epoch(0)
    torch.set_rng_state(start)  # replay epoch 0's draws
    skipped = acc.skip_first_batches(loader, 4)
    assert len(skipped) == 2
    assert [x.tolist() for (x,) in skipped] == full[0][4:]
    assert [x.tolist() for (x,) in loader] == full[1]  # the next epoch continues as before
    plain = acc.skip_first_batches(DataLoader(data, batch_size=5), 2)
    assert [x.tolist() for (x,) in plain] == [[10, 11]]
    with pytest.raises(ValueError, match="num_batches=-1"):
        acc.skip_first_batches(loader, -1)


def test_gather_for_metrics_on_one_process():
    acc = Accelerator()
    loader = acc.prepare(DataLoader(TensorDataset(torch.arange(10)), batch_size=4))
    seen = [acc.gather_for_metrics(x) for (x,) in loader]
    assert torch.cat(seen).tolist() == list(range(10))
    assert acc.gather_for_metrics(["a", "b"]) == ["a", "b"]


def test_fp16_several_optimizers_update_the_scale_once():
    acc = Accelerator(mixed_precision="fp16", kwargs_handlers=[GradScalerKwargs(init_scale=1024, growth_interval=1)])
    a, b = nn.Linear(2, 1), nn.Linear(2, 1)
    a, b, opt_a, opt_b = acc.prepare(
        a, b, torch.optim.SGD(a.parameters(), lr=0.1), torch.optim.SGD(b.parameters(), lr=0.1)
    )
    ref_b = [p.detach().clone() for p in b.parameters()]
    x = torch.ones(1, 2)
    acc.backward(a(x).sum() + b(x).sum())
    grads_b = [p.grad.clone() / 1024 for p in b.parameters()]
    opt_a.step()
    opt_b.step()
    assert acc.scaler.get_scale() == 2048  # grew once, after both optimizers stepped
    for p, r, g in zip(b.parameters(), ref_b, grads_b, strict=True):
        assert torch.allclose(p, r - 0.1 * g)  # the second optimizer used the right scale


def test_fp16_alternating_optimizers_clip_unscaled_gradients():
    acc = Accelerator(mixed_precision="fp16", kwargs_handlers=[GradScalerKwargs(init_scale=1024)])
    d, g = nn.Linear(3, 1), nn.Linear(3, 1)
    d, g, opt_d, opt_g = acc.prepare(
        d, g, torch.optim.SGD(d.parameters(), lr=0.0), torch.optim.SGD(g.parameters(), lr=0.0)
    )
    x = torch.ones(1, 3)
    for step in range(3):
        acc.backward(d(x).sum())
        norm = acc.clip_grad_norm_(d.parameters(), 1e9)
        assert norm.item() == pytest.approx(2.0, rel=1e-3)  # |(1,1,1,1)|: weight grads 1 and bias grad 1
        opt_d.step()
        opt_d.zero_grad()
        if step % 2:
            acc.backward(g(x).sum())
            opt_g.step()
            opt_g.zero_grad()


def test_short_cycle_rescales_optimizer_only_parameters():
    temperature = nn.Parameter(torch.tensor(1.0))
    ref = temperature.detach().clone().requires_grad_(True)
    # 3 micro-batches with K=2: the last cycle holds 1 micro-batch and is its own mean.
    (ref * 2.0).backward()
    acc = Accelerator(gradient_accumulation_steps=2)
    model = acc.prepare(nn.Linear(1, 1))
    opt = acc.prepare(torch.optim.SGD([temperature, *model.parameters()], lr=0.0))
    loader = acc.prepare(DataLoader(TensorDataset(torch.ones(3, 1)), batch_size=1))
    for i, (x,) in enumerate(loader):
        with acc.accumulate(model):
            acc.backward(temperature * 2.0 + model(x).sum() * 0)
            opt.step()
            if i < 2:
                opt.zero_grad()
    assert temperature.grad.item() == pytest.approx(ref.grad.item())
