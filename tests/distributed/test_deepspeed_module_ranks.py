"""Two gloo processes, no group started by the harness: DeepSpeed's module-level API
(`import surge as deepspeed`): init_distributed from the launcher's variables, deepspeed.comm's
collectives, zero.GatheredParameters under ZeRO-3 (FSDP2 shards) and on whole parameters, and
zero.Init building a model that then trains like one built normally."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch
from torch import nn
from torch.utils.data import RandomSampler, Subset

import surge as deepspeed
from surge.testing import distributed_test
from surge.testing.parity import LR, MOMENTUM, BlockModel, make_dataset, max_difference, reference_run

pytestmark = pytest.mark.distributed

ZERO3 = {"train_batch_size": 16, "train_micro_batch_size_per_gpu": 4,
         "optimizer": {"type": "SGD", "params": {"lr": LR, "momentum": MOMENTUM}},
         "zero_optimization": {"stage": 3}}


def _data_and_order():
    data = make_dataset(64)
    # the engine's loader: the sampler's shuffled order, 4 per process, round-robin (see test_engine.py)
    return data, list(RandomSampler(data, generator=torch.Generator().manual_seed(0)))


def _train(engine, loader):
    for x, y in loader:
        engine.backward(nn.functional.mse_loss(engine(x), y))
        engine.step()


def _full_params(engine):
    """Every parameter's full value (a collective, through zero.GatheredParameters)."""
    params = list(engine.module.parameters())
    with deepspeed.zero.GatheredParameters(params):
        return [p.detach().clone() for p in params]


def check_init_distributed_from_the_launcher_environment():
    """The harness exports RANK/WORLD_SIZE/MASTER_* as torchrun does and starts no group."""
    import os

    dist = deepspeed.comm
    assert not torch.distributed.is_initialized()
    assert (dist.get_rank(), dist.get_world_size()) == (int(os.environ["RANK"]), 2)  # from the variables
    deepspeed.init_distributed(timeout=timedelta(seconds=60))
    assert torch.distributed.is_initialized() and torch.distributed.get_world_size() == 2
    assert torch.distributed.get_rank() == int(os.environ["RANK"]) and torch.distributed.get_backend() == "gloo"
    world = torch.distributed.group.WORLD
    deepspeed.init_distributed()  # a no-op now, as in DeepSpeed
    assert torch.distributed.group.WORLD is world
    assert dist.get_local_rank() == dist.get_rank() and dist.get_all_ranks_from_group() == [0, 1]


def check_comm_collectives():
    import surge.comm as dist

    rank = dist.get_rank()
    t = torch.tensor([float(rank + 1)])
    dist.all_reduce(t)
    assert t.item() == 3.0
    t = torch.tensor([float(rank + 1)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    assert t.item() == 2.0
    t = torch.tensor([float(rank)])
    dist.broadcast(t, src=1)
    assert t.item() == 1.0
    parts = [torch.zeros(1), torch.zeros(1)]
    dist.all_gather(parts, torch.tensor([float(rank)]))
    assert [p.item() for p in parts] == [0.0, 1.0]
    out = torch.zeros(4)
    dist.all_gather_into_tensor(out, torch.full((2,), float(rank)))
    assert out.tolist() == [0.0, 0.0, 1.0, 1.0]
    shard = torch.zeros(2)
    dist.reduce_scatter_tensor(shard, torch.arange(4.0) * (rank + 1))
    assert shard.tolist() == ([0.0, 3.0] if rank == 0 else [6.0, 9.0])
    got = torch.zeros(2)
    dist.all_to_all_single(got, torch.tensor([10.0 * rank, 10.0 * rank + 1]))
    assert got.tolist() == [float(rank), 10.0 + rank]
    t = torch.tensor([float(rank + 1)])
    dist.reduce(t, dst=0, op=dist.ReduceOp.SUM)
    if rank == 0:
        assert t.item() == 3.0
    gathered = [torch.zeros(1), torch.zeros(1)] if rank == 0 else None
    dist.gather(torch.tensor([float(rank)]), gathered, dst=0)
    if rank == 0:
        assert [g.item() for g in gathered] == [0.0, 1.0]
    mine = torch.zeros(1)
    dist.scatter(mine, [torch.tensor([5.0]), torch.tensor([6.0])] if rank == 0 else None, src=0)
    assert mine.item() == 5.0 + rank
    if rank == 0:
        dist.send(torch.tensor([42.0]), dst=1)
        dist.isend(torch.tensor([43.0]), dst=1).wait()
    else:
        buf = torch.zeros(1)
        dist.recv(buf, src=0)
        assert buf.item() == 42.0
        dist.irecv(buf, src=0).wait()
        assert buf.item() == 43.0
    objs = [{"from": rank}]
    dist.broadcast_object_list(objs, src=0)
    assert objs == [{"from": 0}]
    group = dist.new_group([0, 1])
    assert dist.get_world_size(group) == 2 and dist.get_global_rank(group, 1) == 1
    works = dist.all_reduce_coalesced([torch.ones(1), torch.ones(2)], async_op=True)
    works.wait()
    dist.barrier()
    dist.monitored_barrier(timeout=timedelta(seconds=30))
    dist.log_summary()


def check_gathered_parameters_under_zero3():
    """Full parameters inside the block (read-only, dropped changes, a modifier's changes kept
    in every shard), then training from weights loaded on rank 0 matches one process."""
    from torch.distributed.tensor import DTensor

    rank = deepspeed.comm.get_rank()
    data, order = _data_and_order()
    engine, _, loader, _ = deepspeed.initialize(model=BlockModel(), config=ZERO3, training_data=data)
    names = [n for n, _ in engine.module.named_parameters()]
    params = list(engine.module.parameters())
    assert all(isinstance(p, DTensor) for p in params)
    initial = BlockModel().state_dict()
    with deepspeed.zero.GatheredParameters(params):
        for name, p in zip(names, params, strict=True):
            assert not isinstance(p, DTensor) and isinstance(p, nn.Parameter), name
            assert torch.equal(p, initial[name]), name
        state = engine.module.state_dict()
        assert not isinstance(state[names[0]], DTensor) and torch.equal(state[names[0]], initial[names[0]])
    assert all(isinstance(p, DTensor) for p in params)
    weight = params[0]
    with deepspeed.zero.GatheredParameters(weight), torch.no_grad():
        weight.fill_(7.0)  # no modifier_rank: dropped
    assert torch.equal(weight.full_tensor(), initial[names[0]])
    with deepspeed.zero.GatheredParameters([weight, weight], modifier_rank=1), torch.no_grad():
        engine.module.inp.weight.fill_(float(rank + 1))  # the module's attribute is the same full tensor
    assert (weight.full_tensor() == 2.0).all()
    loaded = BlockModel(seed=5).state_dict()
    with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
        if rank == 0:
            engine.module.load_state_dict(loaded)
    _train(engine, loader)
    reference = reference_run(Subset(data, order), 16, model_fn=lambda: BlockModel(seed=5))
    assert max_difference(reference, _full_params(engine)) <= 1e-6


def check_gathered_parameters_with_the_accelerator_and_offload():
    """Accelerate's road to ZeRO-3 (DeepSpeedPlugin), parameters offloaded to the CPU, after a step."""
    from torch.distributed.tensor import DTensor

    for plugin in (deepspeed.DeepSpeedPlugin(zero_stage=3, gradient_clipping=0),
                   deepspeed.DeepSpeedPlugin(zero_stage=3, offload_param_device="cpu")):
        accelerator = deepspeed.Accelerator(deepspeed_plugin=plugin)
        model = BlockModel()
        model, opt = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
        accelerator.backward(model(torch.ones(2, 8)).sum())
        opt.step()
        opt.zero_grad()
        params = list(model.parameters())
        with deepspeed.zero.GatheredParameters(params, modifier_rank=0), torch.no_grad():
            if accelerator.is_main_process:
                for p in params:
                    p.fill_(0.5)
        assert all(isinstance(p, DTensor) and (p.full_tensor() == 0.5).all() for p in params)
        expected = BlockModel()
        with torch.no_grad():
            for p in expected.parameters():
                p.fill_(0.5)
        assert torch.allclose(model(torch.ones(2, 8)), expected(torch.ones(2, 8)))


def check_gathered_parameters_on_whole_parameters():
    """DDP (no sharding): nothing to gather; the modifier's changes reach every process."""
    accelerator = deepspeed.Accelerator(cpu=True)
    model = accelerator.prepare(nn.Linear(3, 2))
    rank = accelerator.process_index
    with deepspeed.zero.GatheredParameters(model.parameters(), modifier_rank=0), torch.no_grad():
        model.module.weight.fill_(float(rank + 5))
    assert (model.module.weight == 5.0).all()


def _seeded_model():
    torch.manual_seed(1234)  # nn.Linear's own initialisation, from the global generator
    return _build()


def _build():
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1))


def check_zero_init_trains_like_a_normal_build():
    rank = deepspeed.comm.get_rank()
    torch.manual_seed(1234)  # the same seed everywhere, as scripts set it
    with deepspeed.zero.Init(config_dict_or_path=ZERO3):
        model = _build()
    # rank 0 built the weights, the other process only their shapes
    assert all(p.is_meta == (rank != 0) for p in model.parameters())
    after = torch.rand(3)  # the generators moved as if every process had built the model
    _seeded_model()
    assert torch.equal(after, torch.rand(3))
    expected = _seeded_model().state_dict()
    with deepspeed.zero.GatheredParameters(model[0].weight):  # before prepare: rank 0's values, everywhere
        assert not model[0].weight.is_meta and torch.equal(model[0].weight, expected["0.weight"])
    assert model[0].weight.is_meta == (rank != 0)
    data, order = _data_and_order()
    engine, _, loader, _ = deepspeed.initialize(model=model, config=ZERO3, training_data=data)
    _train(engine, loader)
    reference = reference_run(Subset(data, order), 16, model_fn=_seeded_model)
    assert max_difference(reference, _full_params(engine)) <= 1e-6


def check_zero_init_then_load_on_rank0():
    """DeepSpeed's pretrained-loading recipe: build under Init, load module by module on rank 0
    inside GatheredParameters(modifier_rank=0), then initialize: every process has the checkpoint."""
    rank = deepspeed.comm.get_rank()
    checkpoint = BlockModel(seed=9).state_dict()
    with deepspeed.zero.Init():
        model = BlockModel(seed=1)

    def load(module, prefix=""):
        with deepspeed.zero.GatheredParameters(list(module.parameters(recurse=False)), modifier_rank=0):
            if rank == 0:
                module._load_from_state_dict(checkpoint, prefix, {}, True, [], [], [])
        for name, child in module._modules.items():
            if child is not None:
                load(child, prefix + name + ".")

    load(model)
    config = dict(ZERO3, train_batch_size=8, train_micro_batch_size_per_gpu=4)
    engine, _, _, _ = deepspeed.initialize(model=model, config=config)
    names = [n for n, _ in engine.module.named_parameters()]
    for name, value in zip(names, _full_params(engine), strict=True):
        assert torch.equal(value, checkpoint[name]), name


CHECKS = [
    check_init_distributed_from_the_launcher_environment,
    check_comm_collectives,
    check_gathered_parameters_under_zero3,
    check_gathered_parameters_with_the_accelerator_and_offload,
    check_gathered_parameters_on_whole_parameters,
    check_zero_init_trains_like_a_normal_build,
    check_zero_init_then_load_on_rank0,
]

test_two_processes = distributed_test(CHECKS, world_size=2, start_group=False)
