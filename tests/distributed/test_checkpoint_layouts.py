"""Two gloo processes: background (async) saves under DDP and ZeRO-3, FSDP's
FULL_STATE_DICT / SHARDED_STATE_DICT layouts, merge-weights reading a sharded
checkpoint offline, Accelerate checkpoints and state hooks under sharding."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from surge import Accelerator, FullyShardedDataParallelPlugin
from surge.checkpoint.merge import merge_weights
from surge.ops import broadcast_object_list
from surge.testing import distributed_test
from surge.testing.parity import BlockModel

pytestmark = pytest.mark.distributed


def _tmp() -> str:
    return broadcast_object_list([tempfile.mkdtemp() if dist.get_rank() == 0 else None])[0]


def _prepared(**kwargs):
    acc = Accelerator(**kwargs)
    torch.manual_seed(0)
    model = BlockModel()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model, opt = acc.prepare(model, opt)
    return acc, model, opt


def _step(acc, model, opt, seed):
    g = torch.Generator().manual_seed(seed * 10 + acc.process_index)
    acc.backward(model(torch.randn(4, 8, generator=g)).pow(2).mean())
    opt.step()
    opt.zero_grad()


def _full(acc, model):
    """The full weights (gathered under sharding; get_state_dict leaves other processes
    an empty dict then, so compare on the main process)."""
    return {k: v.detach().cpu().clone() for k, v in acc.get_state_dict(model).items()}


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _async_round_trip(**kwargs):
    acc, model, opt = _prepared(**kwargs)
    _step(acc, model, opt, 1)
    want = _full(acc, model)
    directory = os.path.join(_tmp(), "ckpt")
    assert acc.save_state(directory, async_save=True) == os.path.abspath(directory)
    for seed in (2, 3):  # training goes on while the checkpoint is written
        _step(acc, model, opt, seed)
    assert not _equal(_full(acc, model), want) or not acc.is_main_process
    assert acc.wait_for_checkpoint() == os.path.abspath(directory)
    acc.wait_for_everyone()  # under DDP the other processes add their RNG state after the main one's save
    assert {"rank_0.pt", "rank_1.pt", "surge_checkpoint.json"} <= set(os.listdir(directory))
    fresh, model2, opt2 = _prepared(**kwargs)
    fresh.load_state(directory)
    assert _equal(_full(fresh, model2), want) or not acc.is_main_process
    # The optimizer state is the one of the moment too: one more identical step matches.
    _step(fresh, model2, opt2, 9)
    again, model3, opt3 = _prepared(**kwargs)
    again.load_state(directory)
    _step(again, model3, opt3, 9)
    assert _equal(_full(fresh, model2), _full(again, model3)) or not acc.is_main_process
    return acc, directory


def check_async_save_ddp():
    _async_round_trip()


def check_async_save_zero3_then_merge_offline():
    acc, directory = _async_round_trip(deepspeed_plugin={"zero_stage": 3})
    assert "model_optimizer" in os.listdir(directory)
    fresh, model, _ = _prepared(deepspeed_plugin={"zero_stage": 3})
    fresh.load_state(directory)
    want = _full(fresh, model)
    if acc.is_main_process:  # offline: one process, no collective
        merge_weights(directory, os.path.join(directory + "-merged"))
        assert _equal(load_file(os.path.join(directory + "-merged", "model.safetensors")), want)


def check_fsdp_full_state_dict_writes_full_files():
    plugin = FullyShardedDataParallelPlugin("FULL_SHARD", state_dict_type="FULL_STATE_DICT")
    acc, model, opt = _prepared(fsdp_plugin=plugin)
    _step(acc, model, opt, 1)
    want = _full(acc, model)
    for background in (False, True):
        directory = os.path.join(_tmp(), "ckpt")
        acc.save_state(directory, async_save=background)
        acc.wait_for_checkpoint()
        assert sorted(os.listdir(directory)) == ["model_0.safetensors", "optimizer_0.pt", "rank_0.pt", "rank_1.pt",
                                                 "state.pt", "surge_checkpoint.json"]
        main = acc.is_main_process
        assert _equal(load_file(os.path.join(directory, "model_0.safetensors")), want) or not main
        for target in ({"fsdp_plugin": plugin}, {}):  # back into FSDP, and into DDP
            fresh, model2, _ = _prepared(**target)
            fresh.load_state(directory)
            assert _equal(_full(fresh, model2), want) or not main


def check_fsdp_sharded_state_dict_writes_shards():
    plugin = FullyShardedDataParallelPlugin("FULL_SHARD", state_dict_type="SHARDED_STATE_DICT")
    acc, model, opt = _prepared(fsdp_plugin=plugin)
    _step(acc, model, opt, 1)
    directory = os.path.join(_tmp(), "ckpt")
    acc.save_state(directory)
    assert "model_optimizer" in os.listdir(directory) and "model_0.safetensors" not in os.listdir(directory)


def _adam_run(model_fn, kwargs, *, steps, save=None, save_at=0, load=None):
    """Train with Adam on ``steps`` (seeds), saving before step ``save_at`` / loading
    first; returns the full parameters on every rank."""
    acc = Accelerator(**kwargs)
    torch.manual_seed(0)
    model = model_fn()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    model, opt = acc.prepare(model, opt)
    if load is not None:
        acc.load_state(load)
    for seed in steps:
        if seed == save_at and save is not None:
            acc.save_state(save)
        _step(acc, model, opt, seed)
    state = acc.get_state_dict(model)
    state = broadcast_object_list([state if acc.is_main_process else None])[0]
    return [state[k] for k in sorted(state)]


def check_saving_before_the_first_step_changes_nothing():
    """torch creates a fresh optimizer's state with a zero-gradient step (Adam's step count
    becomes 1); a save before the first step must change neither this run nor a resumed
    one, in the full (DDP) and the sharded (ZeRO-3, FSDP SHARDED_STATE_DICT) layouts."""
    from surge.testing.parity import max_difference

    for kwargs in ({}, {"deepspeed_plugin": {"zero_stage": 3}},
                   {"fsdp_plugin": FullyShardedDataParallelPlugin(state_dict_type="SHARDED_STATE_DICT")}):
        directory = os.path.join(_tmp(), "before_first_step")
        plain = _adam_run(BlockModel, kwargs, steps=range(3))
        assert max_difference(_adam_run(BlockModel, kwargs, steps=range(3), save=directory), plain) == 0.0, kwargs
        assert max_difference(_adam_run(BlockModel, kwargs, steps=range(3), load=directory), plain) == 0.0, kwargs


class _WithUnusedPooler(torch.nn.Module):
    """A trainable parameter that never receives a gradient (a RoBERTa-style pooler)."""

    def __init__(self):
        super().__init__()
        self.body = BlockModel()
        self.pooler = torch.nn.Linear(8, 8)

    def forward(self, x):
        return self.body(x)


def check_a_parameter_without_gradients_saves_and_resumes():
    from surge import DistributedDataParallelKwargs
    from surge.testing.parity import max_difference

    for kwargs in ({"kwargs_handlers": [DistributedDataParallelKwargs(find_unused_parameters=True)]},
                   {"deepspeed_plugin": {"zero_stage": 3}}):
        directory = os.path.join(_tmp(), "unused")
        whole = _adam_run(_WithUnusedPooler, kwargs, steps=range(4), save=directory, save_at=2)
        resumed = _adam_run(_WithUnusedPooler, kwargs, steps=range(2, 4), load=directory)
        assert max_difference(resumed, whole) == 0.0, kwargs


def _write_like_accelerate(acc, model, opt, directory):
    """What HF Accelerate's save_state writes for a DDP run: the wrapped model's state
    dict ("module." keys), torch's index-keyed optimizer state, each rank's RNG file."""
    import random

    import numpy as np
    from safetensors.torch import save_file

    if acc.is_main_process:
        os.makedirs(directory)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(directory,
                                                                                           "model.safetensors"))
        torch.save(opt.state_dict(), os.path.join(directory, "optimizer.bin"))
    acc.wait_for_everyone()
    torch.save({"step": 0, "random_state": random.getstate(), "numpy_random_seed": np.random.get_state(),
                "torch_manual_seed": torch.get_rng_state()},
               os.path.join(directory, f"random_states_{acc.process_index}.pkl"))
    acc.wait_for_everyone()


def check_accelerate_checkpoints_and_state_hooks_under_sharding():
    """An Accelerate checkpoint of a DDP run resumes under DDP, ZeRO-3 and FSDP exactly
    (its index-keyed optimizer state is mapped onto the shards); under ZeRO-3 a save hook
    that removes the weights on the main process only (diffusers' pattern) makes every
    process skip them, and the matching load hook restores them."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    acc, model, opt = _prepared()
    _step(acc, model, opt, 1)
    directory = os.path.join(_tmp(), "accelerate")
    _write_like_accelerate(acc, model, opt, directory)
    _step(acc, model, opt, 2)
    want = _full(acc, model)
    sharded = {"deepspeed_plugin": {"zero_stage": 3}}
    for kwargs in ({}, sharded, {"fsdp_plugin": FullyShardedDataParallelPlugin("FULL_SHARD")}):
        fresh, model2, opt2 = _prepared(**kwargs)
        fresh.load_state(directory)
        _step(fresh, model2, opt2, 2)
        assert _equal(_full(fresh, model2), want) or not acc.is_main_process, kwargs

    acc3, model3, opt3 = _prepared(**sharded)
    _step(acc3, model3, opt3, 1)
    saved = _full(acc3, model3)

    def save_hook(models, weights, output_dir):
        if acc3.is_main_process:
            torch.save(weights[0], os.path.join(output_dir, "own.pt"))
            weights.pop()

    def load_hook(models, input_dir):
        full = torch.load(os.path.join(input_dir, "own.pt"), weights_only=True)
        set_model_state_dict(models.pop(), full, options=StateDictOptions(full_state_dict=True))

    acc3.register_save_state_pre_hook(save_hook)
    directory = os.path.join(_tmp(), "hooked")
    acc3.save_state(directory)
    assert "own.pt" in os.listdir(directory)
    _step(acc3, model3, opt3, 2)
    acc3.register_load_state_pre_hook(load_hook)
    acc3.load_state(directory)
    assert _equal(_full(acc3, model3), saved) or not acc3.is_main_process


CHECKS = [
    check_accelerate_checkpoints_and_state_hooks_under_sharding,
    check_saving_before_the_first_step_changes_nothing,
    check_a_parameter_without_gradients_saves_and_resumes,
    check_async_save_ddp,
    check_async_save_zero3_then_merge_offline,
    check_fsdp_full_state_dict_writes_full_files,
    check_fsdp_sharded_state_dict_writes_shards,
]

test_two_processes = distributed_test(CHECKS, world_size=2)
