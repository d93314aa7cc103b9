"""Two gloo processes: precision x accumulation parity, no_sync, the scheduler rule,
gather_for_metrics, item-weighted means, fp16 overflow, mid-epoch resume; run-time
advice about an unprepared DataLoader every process reads, given by the main process."""

from __future__ import annotations

import contextlib
import linecache
import math
import warnings

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from surge import Accelerator, advice
from surge.advice import SurgeAdvice
from surge.testing import distributed_test
from surge.testing.parity import (
    FP16_SCALE,
    TOLERANCE,
    make_dataset,
    max_difference,
    reference_run,
    scheduled_run,
    surge_run,
)
from surge.utils import DataLoaderConfiguration, GradScalerKwargs

pytestmark = pytest.mark.distributed

GLOBAL_BATCH = 32


def _parity(mixed_precision):
    data = make_dataset(128)
    ref = reference_run(data, GLOBAL_BATCH, mixed_precision)
    for steps in (1, 4):
        acc = Accelerator(mixed_precision=mixed_precision, gradient_accumulation_steps=steps,
                          kwargs_handlers=[GradScalerKwargs(init_scale=FP16_SCALE)])
        got = surge_run(acc, data, GLOBAL_BATCH // (2 * steps))
        diff = max_difference(ref, got)
        assert diff <= TOLERANCE[mixed_precision], f"{mixed_precision} x accumulation {steps}: {diff}"
        flat = torch.cat([p.flatten() for p in got]).unsqueeze(0)
        both = acc.gather(flat)
        assert torch.equal(both[0], both[1])


def check_parity_fp32():
    _parity("no")


def check_parity_bf16():
    _parity("bf16")


def check_parity_fp16():
    _parity("fp16")


def check_short_last_cycle_across_processes():
    # 40 samples, 4 per process per micro-batch, K=2 -> cycles of 16, 16 and a last one of 8.
    data = make_dataset(40)
    got = surge_run(Accelerator(gradient_accumulation_steps=2), data, 4)
    assert max_difference(reference_run(data, 16), got) <= 1e-6


def check_no_sync_inside_a_cycle():
    acc = Accelerator(gradient_accumulation_steps=2)
    torch.manual_seed(0)
    model = acc.prepare(nn.Linear(3, 1))
    grads = []
    for _ in range(2):
        with acc.accumulate(model):
            x = torch.full((2, 3), float(acc.process_index + 1))
            acc.backward(model(x).sum())
            grads.append(acc.gather(model.module.weight.grad.clone()))
    assert not torch.equal(grads[0][0], grads[0][1])  # micro-step 1: local gradients only
    assert torch.equal(grads[1][0], grads[1][1])  # the boundary: synchronised


def check_scheduler_rule():
    for steps in (1, 4):
        # surge's rule: a schedule of optimizer steps (the prepared, per-process loader's
        # length) ends at the last one on any number of processes.
        acc = Accelerator(gradient_accumulation_steps=steps, scheduler_steps="once")
        _, last_epoch, last_lr, total = scheduled_run(
            acc, 128, lambda length, epochs, steps=steps: length * epochs // steps
        )
        assert last_epoch == total, (steps, last_epoch, total)
        assert last_lr == 0.0
        # Accelerate's rule, the default: num_processes scheduler steps per optimizer step,
        # so the schedule no-trainer scripts build (optimizer steps x num_processes) ends there.
        acc = Accelerator(gradient_accumulation_steps=steps)
        optimizer_steps, last_epoch, last_lr, total = scheduled_run(
            acc, 128, lambda length, epochs, steps=steps: length * epochs // steps * 2
        )
        assert last_epoch == total == 2 * optimizer_steps, (steps, last_epoch, total, optimizer_steps)
        assert last_lr == 0.0
        # ... and once per optimizer step with split_batches (a batch is already global).
        acc = Accelerator(gradient_accumulation_steps=steps, split_batches=True)
        optimizer_steps, last_epoch, _, _ = scheduled_run(acc, 128, lambda length, epochs: 10_000)
        assert last_epoch == optimizer_steps, (steps, last_epoch, optimizer_steps)


class _Stream(IterableDataset):
    def __iter__(self):
        return iter(torch.arange(10).tolist())


def check_gather_for_metrics_sees_every_sample_once():
    data = TensorDataset(torch.arange(10))
    for kwargs in ({}, {"split_batches": True}, {"even_batches": False}):
        acc = Accelerator(**kwargs)
        loader = acc.prepare(DataLoader(data, batch_size=4))
        if kwargs != {"even_batches": False}:  # per batch: ranks must have equal batch counts
            seen = torch.cat([acc.gather_for_metrics(x) for (x,) in loader])
            assert sorted(seen.tolist()) == list(range(10)), (kwargs, seen.tolist())
        # Collect locally, gather once after the loop: exact with or without even batches.
        local = torch.cat([x for (x,) in loader])
        seen = acc.gather_for_metrics(local)
        assert sorted(seen.tolist()) == list(range(10)), (kwargs, seen.tolist())
    for workers, dispatch in ((0, None), (0, False), (2, False)):
        # An iterable dataset is dispatched by default (rank 0 reads, as in Accelerate);
        # sharded, each rank reads its own rounds, with workers too.
        acc = Accelerator(dataloader_config=DataLoaderConfiguration(dispatch_batches=dispatch))
        loader = acc.prepare(DataLoader(_Stream(), batch_size=4, num_workers=workers))
        seen = torch.cat([acc.gather_for_metrics(x) for x in loader])
        assert sorted(seen.tolist()) == list(range(10)), (workers, dispatch, seen.tolist())
        objects = [o for x in loader for o in acc.gather_for_metrics(x.tolist(), use_gather_object=True)]
        assert sorted(objects) == list(range(10))


def check_item_weighted_mean_across_processes():
    torch.manual_seed(0)
    x, y = torch.randn(20, 3), torch.randn(20, 1)
    big = nn.Linear(3, 1)
    nn.functional.mse_loss(big(x), y).backward()  # the mean over all 20 items
    # Uneven micro-batches, different on each rank: rank 0 holds items 0-10, rank 1 11-19.
    sizes = [[4, 7], [6, 3]][dist.get_rank()]
    offset = [0, 11][dist.get_rank()]
    acc = Accelerator(gradient_accumulation_steps=2)
    model = nn.Linear(3, 1)
    model.load_state_dict(big.state_dict())
    model = acc.prepare(model)
    n_items = acc.reduce(torch.tensor(sum(sizes)), "sum")
    assert n_items.item() == 20
    for size in sizes:
        with acc.accumulate(model):
            xb, yb = x[offset : offset + size], y[offset : offset + size]
            offset += size
            acc.backward(nn.functional.mse_loss(model(xb), yb, reduction="sum"), num_items_in_batch=n_items)
    for a, b in zip(big.parameters(), acc.unwrap_model(model).parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-6)


def check_fp16_overflow_on_one_rank_skips_everywhere():
    acc = Accelerator(mixed_precision="fp16", kwargs_handlers=[GradScalerKwargs(init_scale=FP16_SCALE)])
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)
    model, opt, sched = acc.prepare(model, opt, sched)
    before = [p.detach().clone() for p in acc.unwrap_model(model).parameters()]
    boost = float("inf") if acc.process_index == 1 else 1.0
    acc.backward(model(torch.randn(4, 4)).pow(2).mean() * boost)
    opt.step()
    sched.step()
    opt.zero_grad()
    assert acc.optimizer_step_was_skipped
    assert acc.scaler.get_scale() == FP16_SCALE / 2 and sched.get_last_lr() == [0.1]
    assert all(torch.equal(a, b) for a, b in zip(before, acc.unwrap_model(model).parameters(), strict=True))


def check_skip_first_batches_across_processes():
    # The seedable sampler shuffles by epoch alone, so set_epoch(0) replays epoch 0.
    acc = Accelerator(dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=5))
    loader = acc.prepare(DataLoader(TensorDataset(torch.arange(24)), batch_size=2, shuffle=True))
    first = [x.tolist() for (x,) in loader]
    both = acc.gather_for_metrics([i for batch in first for i in batch], use_gather_object=True)
    assert sorted(both) == list(range(24))  # one permutation for both ranks
    loader.set_epoch(0)
    rest = [x.tolist() for (x,) in acc.skip_first_batches(loader, 2)]
    assert rest == first[2:]
    assert loader.epoch == 1
    assert math.isclose(len(acc.skip_first_batches(loader, 2)), len(loader) - 2)


def _loop_advice(prepare_loader: bool, per_rank: bool = False, accumulate: bool = True, constant: bool = False):
    """Train on 4 batches of a loader (prepared or not; identical data on both ranks unless
    ``per_rank``; every sample the same with ``constant``) and return this process's
    SurgeAdvice warnings."""
    advice.forget_given()
    acc = Accelerator(gradient_accumulation_steps=2)
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    model, opt = acc.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    data = torch.arange(64.0).reshape(16, 4) + (100 * dist.get_rank() if per_rank else 0)
    if constant:
        data = torch.ones(16, 4)
    loader = DataLoader(TensorDataset(data), batch_size=4)
    if prepare_loader:
        loader = acc.prepare(loader)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for (x,) in loader:
            with acc.accumulate(model) if accumulate else contextlib.nullcontext():
                acc.backward(model(x).pow(2).mean())  # the first forward
                opt.step()
                opt.zero_grad()
    advice.forget_given()
    return [r for r in caught if issubclass(r.category, SurgeAdvice)]


def check_unprepared_loader_read_by_every_process_is_named_on_the_main_process():
    found = _loop_advice(prepare_loader=False)
    if dist.get_rank() == 0:
        (note,) = found
        assert "same on all 2 data-parallel processes" in str(note.message)
        assert "pass the DataLoader to accelerator.prepare" in str(note.message)
        assert note.filename == __file__ and "# the first forward" in linecache.getline(__file__, note.lineno)
    else:
        assert found == []  # the main process speaks for all


def check_no_advice_for_a_prepared_loader_or_different_batches():
    assert _loop_advice(prepare_loader=True) == []
    # Sharded, yet the same on both ranks (every sample is): a prepared loader is never questioned.
    assert _loop_advice(prepare_loader=True, constant=True) == []
    assert _loop_advice(prepare_loader=False, per_rank=True) == []


def check_loop_mistakes_are_reported_by_the_main_process_only():
    found = _loop_advice(prepare_loader=True, accumulate=False)
    if dist.get_rank() == 0:
        (note,) = found
        assert "never inside `with accelerator.accumulate(model):`" in str(note.message)
    else:
        assert found == []


CHECKS = [
    check_unprepared_loader_read_by_every_process_is_named_on_the_main_process,
    check_no_advice_for_a_prepared_loader_or_different_batches,
    check_loop_mistakes_are_reported_by_the_main_process_only,
    check_parity_fp32,
    check_parity_bf16,
    check_parity_fp16,
    check_short_last_cycle_across_processes,
    check_no_sync_inside_a_cycle,
    check_scheduler_rule,
    check_gather_for_metrics_sees_every_sample_once,
    check_item_weighted_mean_across_processes,
    check_fp16_overflow_on_one_rank_skips_everywhere,
    check_skip_first_batches_across_processes,
]


test_two_processes = distributed_test(CHECKS, world_size=2)
