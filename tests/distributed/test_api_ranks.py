"""Two gloo processes: the Accelerator's other HF Accelerate names (triggers, reduce
max/min, join_uneven_inputs, DDP comm hooks, sync_each_batch, trigger_sync_in_backward,
synchronize_rng_states, AcceleratorState). Shares the session's spawn (surge.testing)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from surge import Accelerator, synchronize_rng_states
from surge.ops import gather_object
from surge.state import AcceleratorState
from surge.testing import distributed_test
from surge.utils import DistributedDataParallelKwargs, GradientAccumulationPlugin, reduce

pytestmark = pytest.mark.distributed


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def _local_batch(rank, n=4):
    g = torch.Generator().manual_seed(10 + rank)  # each rank its own data
    return torch.randn(n, 4, generator=g), torch.randn(n, 1, generator=g)


def _grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def _same_on_both(t):
    got = gather_object([t.detach().clone()])
    return torch.equal(got[0], got[1])


def check_triggers_and_state():
    acc = Accelerator()
    rank = dist.get_rank()
    assert not acc.check_trigger()
    if rank == 1:
        acc.set_trigger()
    assert acc.check_trigger()  # every rank sees rank 1's trigger
    assert not acc.check_trigger()  # and it was lowered
    state = AcceleratorState()
    assert state.num_processes == 2 and state.process_index == rank and state.distributed_type == "MULTI_CPU"
    assert acc.state.use_distributed and acc.state.is_last_process == (rank == 1)


def check_reduce_max_min_and_mean_default():
    acc = Accelerator()
    x = torch.tensor([1.0, 5.0]) if dist.get_rank() == 0 else torch.tensor([3.0, 2.0])
    assert torch.equal(acc.reduce(x, "max"), torch.tensor([3.0, 5.0]))
    assert torch.equal(acc.reduce(x, "min"), torch.tensor([1.0, 2.0]))
    assert torch.equal(acc.reduce(x), torch.tensor([4.0, 7.0]))  # Accelerator.reduce: "sum"
    assert torch.equal(reduce(x), torch.tensor([2.0, 3.5]))  # accelerate.utils.reduce: "mean"


def check_join_uneven_inputs():
    acc = Accelerator()
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = TensorDataset(torch.randn(5, 4, generator=torch.Generator().manual_seed(1)), torch.zeros(5, 1))
    model, opt, loader = acc.prepare(model, opt, DataLoader(data, batch_size=1))
    assert len(loader) == 3  # even_batches: rank 1 repeats a sample
    batches = 0
    with acc.join_uneven_inputs([model], even_batches=False):
        assert len(loader) == (3 if dist.get_rank() == 0 else 2)
        for x, y in loader:
            acc.backward(nn.functional.mse_loss(model(x), y))
            opt.step()
            opt.zero_grad()
            batches += 1
    assert batches == (3 if dist.get_rank() == 0 else 2) and len(loader) == 3  # restored
    assert all(_same_on_both(p) for p in model.parameters())  # the joined rank shadowed the last all-reduce


def check_comm_hooks_match_no_hook():
    x, y = _local_batch(dist.get_rank())
    grads = {}
    for hook in ("no", "fp16", "power_sgd"):
        acc = Accelerator(kwargs_handlers=[DistributedDataParallelKwargs(
            comm_hook=hook, comm_state_option={"matrix_approximation_rank": 1} if hook == "power_sgd" else {})])
        model = acc.prepare(_model())
        assert len(model._comm_hooks) == (0 if hook == "no" else 1)
        acc.backward(nn.functional.mse_loss(model(x), y))
        grads[hook] = _grads(model)
    # fp16 rounds each rank's share and their sum (eps 2**-10): a few thousandths at most.
    assert (grads["fp16"] - grads["no"]).abs().max() <= 4e-3 * grads["no"].abs().max()
    assert not torch.equal(grads["fp16"], grads["no"])  # the all-reduce really ran in fp16
    # PowerSGD all-reduces exactly until start_powerSGD_iter (1000 steps by default).
    assert torch.allclose(grads["power_sgd"], grads["no"], atol=1e-7)


def check_sync_each_batch_syncs_every_micro_batch():
    rank = dist.get_rank()
    final = {}
    for each in (False, True):
        acc = Accelerator(gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=2, sync_each_batch=each))
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        model, opt = acc.prepare(model, opt)
        for step in range(2):
            x, y = _local_batch(rank + 2 * step)
            with acc.accumulate(model):
                acc.backward(nn.functional.mse_loss(model(x), y))
                if step == 0:
                    assert not acc.sync_gradients
                    assert _same_on_both(_grads(model)) == each  # synced already, or still local
                opt.step()
                opt.zero_grad()
        final[each] = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert torch.allclose(final[True], final[False], atol=1e-6)  # the same step either way


def check_trigger_sync_in_backward():
    acc = Accelerator()
    model = acc.prepare(_model())
    x, y = _local_batch(dist.get_rank())
    with acc.no_sync(model):
        loss_a = nn.functional.mse_loss(model(x[:2]), y[:2])
        loss_b = nn.functional.mse_loss(model(x[2:]), y[2:])
    acc.backward(loss_a)
    assert not _same_on_both(_grads(model))  # local only
    with acc.trigger_sync_in_backward(model):
        acc.backward(loss_b)
    assert _same_on_both(_grads(model))


def check_synchronize_rng_states():
    torch.manual_seed(100 + dist.get_rank())
    gen = torch.Generator().manual_seed(200 + dist.get_rank())
    synchronize_rng_states(["torch", "generator"], generator=gen)
    assert _same_on_both(torch.rand(3)) and _same_on_both(torch.rand(3, generator=gen))


CHECKS = [
    check_triggers_and_state,
    check_reduce_max_min_and_mean_default,
    check_join_uneven_inputs,
    check_comm_hooks_match_no_hook,
    check_sync_each_batch_syncs_every_micro_batch,
    check_trigger_sync_in_backward,
    check_synchronize_rng_states,
]

test_two_processes = distributed_test(CHECKS, world_size=2)
