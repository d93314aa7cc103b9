"""Two gloo processes on CPU: DDP parity, collectives, data sharding, saving.

All checks run in one spawn (see surge.testing.harness); each is reported per rank.
"""

from __future__ import annotations

import os
import tempfile
import time

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from surge import Accelerator, DistributedType, PartialState
from surge.ops import broadcast_object_list, gather_object
from surge.testing import distributed_test
from surge.utils import DistributedDataParallelKwargs, broadcast, set_seed

pytestmark = pytest.mark.distributed

STEPS, PER_RANK_BATCH, FEATURES = 4, 4, 6


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(FEATURES, 16), nn.Tanh(), nn.Linear(16, 1))


def _data(n):
    g = torch.Generator().manual_seed(3)
    return TensorDataset(torch.randn(n, FEATURES, generator=g), torch.randn(n, 1, generator=g))


def _shared_tmpdir() -> str:
    path = [tempfile.mkdtemp() if dist.get_rank() == 0 else None]
    return broadcast_object_list(path)[0]


def check_topology():
    acc = Accelerator()
    assert acc.num_processes == 2 and acc.process_index == dist.get_rank()
    assert acc.distributed_type == DistributedType.MULTI_CPU and acc.backend == "gloo"
    assert acc.device == torch.device("cpu")
    assert acc.is_main_process == (dist.get_rank() == 0)
    assert acc.is_last_process == (dist.get_rank() == 1)


def check_ddp_matches_single_process_on_the_global_batch():
    world = 2
    data = _data(STEPS * PER_RANK_BATCH * world)
    # Reference: one process, plain PyTorch, batches of the global size.
    ref = _model()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    for x, y in DataLoader(data, batch_size=PER_RANK_BATCH * world):
        nn.functional.mse_loss(ref(x), y).backward()
        ref_opt.step()
        ref_opt.zero_grad()
    # surge: two processes, each loading PER_RANK_BATCH.
    acc = Accelerator()
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model, opt, loader = acc.prepare(model, opt, DataLoader(data, batch_size=PER_RANK_BATCH))
    assert isinstance(model, nn.parallel.DistributedDataParallel) and len(loader) == STEPS
    for x, y in loader:
        acc.backward(nn.functional.mse_loss(model(x), y))
        opt.step()
        opt.zero_grad()
    pairs = zip(ref.parameters(), acc.unwrap_model(model).parameters(), strict=True)
    diff = max((a - b).abs().max().item() for a, b in pairs)
    assert diff <= 1e-6, diff
    # Both ranks hold the same parameters.
    flat = torch.cat([p.detach().flatten() for p in acc.unwrap_model(model).parameters()])
    both = acc.gather(flat.unsqueeze(0))
    assert torch.equal(both[0], both[1])


def check_gather():
    acc = Accelerator()
    rank = acc.process_index
    assert acc.gather(torch.tensor([rank, rank])).tolist() == [0, 0, 1, 1]
    assert acc.gather(torch.tensor(float(rank))).tolist() == [0.0, 1.0]
    # Uneven first dimension: each rank's rows, in rank order.
    rows = torch.full((rank + 1, 2), rank)
    assert acc.gather(rows).tolist() == [[0, 0], [1, 1], [1, 1]]
    nested = acc.gather({"a": [torch.tensor([rank])], "b": (torch.ones(1, 2) * rank,)})
    assert nested["a"][0].tolist() == [0, 1] and nested["b"][0].shape == (2, 2)
    # Requires-grad inputs are fine; the result carries no graph.
    w = torch.ones(1, requires_grad=True)
    assert acc.gather(w * 2).requires_grad is False
    with pytest.raises(ValueError, match=r"only the first dimension may differ"):
        acc.gather(torch.zeros(1, 2 + rank))
    with pytest.raises(ValueError, match="same structure"):
        acc.gather([torch.zeros(1)] * (rank + 1))


def check_gather_object_reduce_broadcast():
    acc = Accelerator()
    rank = acc.process_index
    assert gather_object([f"r{rank}"]) == ["r0", "r1"]
    assert gather_object({"rank": rank}) == [{"rank": 0}, {"rank": 1}]
    x = torch.tensor([1.0, 2.0]) * (rank + 1)
    assert acc.reduce(x).tolist() == [3.0, 6.0] and x.tolist() == [rank + 1.0, 2.0 * (rank + 1)]
    assert acc.reduce(x, "mean").tolist() == [1.5, 3.0]
    assert acc.reduce(x, "sum", scale=0.5).tolist() == [1.5, 3.0]
    t = torch.tensor([rank * 10])
    assert broadcast(t, from_process=1).tolist() == [10] and t.tolist() == [10]
    with pytest.raises(ValueError, match="from_process=2"):
        broadcast(torch.zeros(1), from_process=2)
    assert broadcast_object_list([rank, "x"])[0] == 0


def check_pad_across_processes():
    acc = Accelerator()
    rank = acc.process_index
    t = torch.arange(rank + 2).unsqueeze(0)  # shape (1, 2) on rank 0, (1, 3) on rank 1
    padded = acc.pad_across_processes(t, dim=1, pad_index=-1)
    assert padded.shape == (1, 3)
    assert padded.tolist() == ([[0, 1, -1]] if rank == 0 else [[0, 1, 2]])
    first = acc.pad_across_processes(t, dim=1, pad_index=-1, pad_first=True)
    assert first.tolist() == ([[-1, 0, 1]] if rank == 0 else [[0, 1, 2]])
    assert acc.gather(acc.pad_across_processes({"x": t}, dim=1)["x"]).shape == (2, 3)


def check_split_between_processes():
    state = PartialState()
    with state.split_between_processes(list("abcde")) as mine:
        assert mine == (list("abc") if state.process_index == 0 else list("de"))
    with state.split_between_processes(list("abcde"), apply_padding=True) as mine:
        assert len(mine) == 3
    with state.split_between_processes({"p": [1, 2, 3, 4]}) as mine:
        assert mine == {"p": [1, 2] if state.process_index == 0 else [3, 4]}


def check_ordering_helpers():
    acc = Accelerator()
    path = os.path.join(_shared_tmpdir(), "order.txt")
    with acc.main_process_first():
        with open(path, "a") as f:
            f.write(str(acc.process_index))
        time.sleep(0.05 if acc.is_main_process else 0)
    acc.wait_for_everyone()
    with open(path) as f:
        assert f.read() == "01"
    assert acc.on_main_process(lambda: "ran")() == ("ran" if acc.is_main_process else None)
    assert acc.on_last_process(lambda: "ran")() == ("ran" if acc.process_index == 1 else None)
    assert acc.on_local_main_process(lambda: 1)() == (1 if acc.process_index == 0 else None)


def check_dataloader_ten_samples_batch_four():
    acc = Accelerator()
    data = TensorDataset(torch.arange(10))
    loader = acc.prepare(DataLoader(data, batch_size=4, shuffle=True))
    assert len(loader) == 2
    for _epoch in range(2):
        mine = []
        for (x,) in loader:
            mine.extend(x[: loader.batch_real_count].tolist())
        everything = gather_object(mine)
        assert sorted(everything) == list(range(10))  # no hang, every sample once
    uneven = Accelerator(even_batches=False).prepare(DataLoader(data, batch_size=4))
    assert len(uneven) == (2 if acc.process_index == 0 else 1)


def check_shuffle_is_shared_without_set_seed():
    # Different global seeds per rank must not give different permutations.
    torch.manual_seed(1000 + dist.get_rank())
    acc = Accelerator()
    loader = acc.prepare(DataLoader(TensorDataset(torch.arange(16)), batch_size=2, shuffle=True))
    before = torch.get_rng_state()
    mine = [i for (x,) in loader for i in x.tolist()]
    # As Accelerate: the shuffle draws from the synchronized generator; the global RNG
    # gives only the DataLoader's base seed (one draw per iteration).
    after = torch.get_rng_state()
    torch.set_rng_state(before)
    torch.empty((), dtype=torch.int64).random_()
    assert torch.equal(after, torch.get_rng_state())
    everything = gather_object(mine)
    assert sorted(everything) == list(range(16))


def check_save_model_under_ddp():
    from safetensors.torch import load_file

    acc = Accelerator()
    model = acc.prepare(_model())
    out = os.path.join(_shared_tmpdir(), "final")
    acc.save_model(model, out, max_shard_size=300)
    acc.wait_for_everyone()
    expected = acc.unwrap_model(model).state_dict()
    merged = {}
    for f in os.listdir(out):
        if f.endswith(".safetensors"):
            merged.update(load_file(os.path.join(out, f)))
    assert merged.keys() == expected.keys() and all(torch.equal(merged[k], expected[k]) for k in expected)
    assert "model.safetensors.index.json" in os.listdir(out)
    assert list(acc.get_state_dict(model)) == list(expected)


class _TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.used = nn.Linear(3, 1)
        self.unused = nn.Linear(3, 1)

    def forward(self, x):
        return self.used(x)


def check_ddp_kwargs_pass_through():
    acc = Accelerator(kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    model = acc.prepare(_TwoHeads())
    assert model.find_unused_parameters is True
    opt = acc.prepare(torch.optim.SGD(model.parameters(), lr=0.1))
    for _ in range(2):
        acc.backward(model(torch.ones(2, 3)).sum())
        opt.step()
        opt.zero_grad()


def check_frozen_and_evaluation_models_are_not_wrapped():
    acc = Accelerator()
    frozen = _model().requires_grad_(False)
    assert acc.prepare(frozen) is frozen
    assert isinstance(acc.prepare_model(_model(), evaluation_mode=True), nn.Sequential)


def check_several_accelerators_share_the_group():
    a = Accelerator(gradient_accumulation_steps=2)
    b = Accelerator(gradient_accumulation_steps=3, cpu=True)
    assert a.num_processes == b.num_processes == 2
    assert (a.gradient_accumulation_steps, b.gradient_accumulation_steps) == (2, 3)
    set_seed(5)
    x = torch.rand(1)
    assert a.gather(x)[0] == b.gather(x)[1]  # same seed on both ranks


def check_user_distributed_sampler_is_not_sharded_twice():
    from torch.utils.data import DistributedSampler

    acc = Accelerator()
    data = TensorDataset(torch.arange(8))
    loader = acc.prepare(DataLoader(data, batch_size=2, sampler=DistributedSampler(data, shuffle=False)))
    mine = [i for (x,) in loader for i in x.tolist()]
    assert len(mine) == 4 and sorted(gather_object(mine)) == list(range(8))


def check_second_timeout_warns():
    import warnings

    from surge.utils import InitProcessGroupKwargs

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Accelerator()  # no timeout asked: silent
        assert not caught
        Accelerator(kwargs_handlers=[InitProcessGroupKwargs(timeout=5)])
    assert any("cannot change it" in str(w.message) for w in caught)


CHECKS = [
    check_user_distributed_sampler_is_not_sharded_twice,
    check_second_timeout_warns,
    check_topology,
    check_ddp_matches_single_process_on_the_global_batch,
    check_gather,
    check_gather_object_reduce_broadcast,
    check_pad_across_processes,
    check_split_between_processes,
    check_ordering_helpers,
    check_dataloader_ten_samples_batch_four,
    check_shuffle_is_shared_without_set_seed,
    check_save_model_under_ddp,
    check_ddp_kwargs_pass_through,
    check_frozen_and_evaluation_models_are_not_wrapped,
    check_several_accelerators_share_the_group,
]


test_two_processes = distributed_test(CHECKS, world_size=2)
