"""Checkpoints written by DeepSpeed (in its exact layout, by tests/deepspeed_layout.py) read
by surge on one process: every ZeRO stage and saved world size, fp32/fp16/bf16, resumed
by ``engine.load_checkpoint`` and merged by ``surge merge-weights``; and the files refused."""

from __future__ import annotations

import argparse
import copy
import os
from fractions import Fraction

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import surge
from deepspeed_layout import WARMUP, DynamicLossScaler, Net, batch, groups, trained_run, warmup_lr, write_checkpoint
from surge.checkpoint import deepspeed_files
from surge.commands.main import main

# (ZeRO stage, saved world size, precision, layout options)
LAYOUTS = [
    (0, 1, "fp32", {}),
    (0, 1, "fp16", {}),  # FP16_Optimizer: fp32 masters flat per group, in the model states file
    (0, 2, "bf16", {}),  # BF16_Optimizer: bf16_zero_pp_rank_* files, padded partitions
    (1, 1, "fp32", {}),
    (1, 2, "fp16", {}),
    (2, 2, "fp32", {"round_robin": True}),
    (2, 3, "bf16", {"elastic": True}),
    (3, 1, "bf16", {}),
    (3, 2, "fp16", {}),
    (3, 3, "fp32", {"sub_group_size": 20}),  # several sub groups per param group
]
IDS = [f"zero{s}-w{w}-{p}{''.join('-' + k for k in kw)}" for s, w, p, kw in LAYOUTS]


def _config(stage: int = 0, **extra):
    return {"train_micro_batch_size_per_gpu": 8, "zero_optimization": {"stage": stage},
            "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "betas": [0.9, 0.95], "eps": 1e-8}},
            "scheduler": {"type": "WarmupLR", "params": WARMUP}, **extra}


def _engine(config=None, tied=True):
    torch.manual_seed(1)  # other weights than the run's
    model = Net(tied)
    engine, *_ = surge.initialize(model=model, model_parameters=groups(model), config=config or _config())
    return engine


def _named_optimizer_state(run):
    names = run.names()
    return {names[id(p)]: run.optimizer.state[p] for g in run.optimizer.param_groups for p in g["params"]}


@pytest.fixture(scope="module")
def run():
    return trained_run(tied=True)


@pytest.mark.parametrize(("stage", "world", "precision", "options"), LAYOUTS, ids=IDS)
def test_every_layout_reassembles_weights_masters_and_adam_state(run, tmp_path, stage, world, precision, options):
    directory = write_checkpoint(str(tmp_path), run, stage=stage, world=world, precision=precision, **options)
    ckpt = deepspeed_files.open_checkpoint(directory)
    assert (ckpt.stage, ckpt.world_size) == (stage, world)
    positions = [[run.names()[id(p)] for p in g["params"]] for g in run.optimizer.param_groups]
    weights = deepspeed_files.model_weights(ckpt)
    weights.update(deepspeed_files.stage0_masters(ckpt, positions))
    # (Without ZeRO DeepSpeed records no tied names: the engine ties them, see the next test.)
    for name, p in run.model.named_parameters(remove_duplicate=not ckpt.zero):
        if p.requires_grad:
            assert torch.equal(weights[name], p.detach()), name  # the fp32 masters, exactly
    assert torch.equal(weights["scale"], torch.tensor([1.5])) and torch.equal(weights["frozen"], torch.full((3,), 0.25))
    saved = _named_optimizer_state(run)
    found = deepspeed_files.optimizer_groups(ckpt, positions)
    assert [sorted(g.names) for g in found] == [sorted(names) for names in positions]
    assert {n for g in found for n in g.state} == set(saved)
    for g in found:
        if not options.get("elastic"):
            assert g.hyperparameters["lr"] == warmup_lr(2) and g.hyperparameters["betas"] == (0.9, 0.95)
        for name, state in g.state.items():
            for key in ("exp_avg", "exp_avg_sq", "step"):
                assert torch.equal(state[key], saved[name][key]), (name, key)


@pytest.mark.parametrize(("stage", "world", "precision", "options"), LAYOUTS, ids=IDS)
def test_the_engine_resumes_and_continues_exactly_as_plain_pytorch(run, tmp_path, stage, world, precision, options):
    """Weights, Adam moments and step, lr, counters and client_state as saved; the next
    step equals plain PyTorch's from the same state, lr schedule included."""
    write_checkpoint(str(tmp_path), run, stage=stage, world=world, precision=precision, **options)
    engine = _engine()
    path, client = engine.load_checkpoint(str(tmp_path))
    assert path == os.path.join(str(tmp_path), "global_step3")
    params = dict(engine.module.named_parameters(remove_duplicate=False))
    for name, p in run.model.named_parameters(remove_duplicate=False):
        assert torch.equal(params[name].detach(), p.detach()), name
    saved, ours = _named_optimizer_state(run), engine.optimizer.optimizer.state
    for name, p in engine.module.named_parameters():
        if p.requires_grad:
            for key in ("exp_avg", "exp_avg_sq", "step"):
                assert torch.equal(ours[p][key], saved[name][key]), (name, key)
    assert engine.get_lr() == [warmup_lr(2)] * 2
    assert (engine.global_steps, engine.skipped_steps, engine.global_samples) == (3, 0, 24)
    assert {k: client[k] for k in ("epoch", "best", "note")} == {"epoch": 1, "best": 0.5, "note": "mid-epoch"}
    assert "module" not in client and "global_steps" not in client and client["ds_version"] == "0.16.5"

    reference = copy.deepcopy(run.model)
    ref_opt = torch.optim.AdamW(groups(reference), lr=1e-3, betas=(0.9, 0.95), eps=1e-8)
    ref_opt.load_state_dict(run.optimizer.state_dict())
    for i in range(2):
        x, y = batch(200 + i)
        nn.functional.mse_loss(reference(x), y).backward()
        ref_opt.step()
        ref_opt.zero_grad()
        for g in ref_opt.param_groups:
            g["lr"] = warmup_lr(3 + i)  # DeepSpeed's WarmupLR, continued
        engine.backward(nn.functional.mse_loss(engine(x), y))
        engine.step()
        assert engine.get_lr() == [warmup_lr(3 + i)] * 2
    for name, p in reference.named_parameters():
        assert torch.equal(params[name].detach(), p.detach()), name
    assert engine.global_steps == 5


@pytest.mark.parametrize("stage", [0, 2])
def test_the_fp16_loss_scale_carries_over(run, tmp_path, stage):
    scaler = DynamicLossScaler(2.0**16, scale_window=50, delayed_shift=2)
    scaler.cur_scale, scaler.cur_iter, scaler.last_overflow_iter, scaler.cur_hysteresis = 512.0, 37, 30, 1
    fp16 = copy.copy(run)
    fp16.scaler = scaler
    write_checkpoint(str(tmp_path), fp16, stage=stage, world=2, precision="fp16")
    engine = _engine(_config(fp16={"enabled": True, "loss_scale_window": 50, "hysteresis": 2}))
    engine.load_checkpoint(str(tmp_path))
    assert engine.get_loss_scale() == 512.0 and engine.optimizer.cur_scale == 512.0
    ds = engine.accelerator.precision.scaler
    assert (ds.iteration, ds.last_overflow) == (37, 30)
    assert ds.hysteresis_left == (1 if stage else 2)  # FP16_Optimizer does not save its hysteresis


def test_module_only_and_no_optimizer_states_load_as_deepspeed_does(run, tmp_path):
    """Without optimizer states DeepSpeed takes the module's 16-bit weights (and refreshes
    its masters from them); load_module_only leaves counters and scheduler alone."""
    write_checkpoint(str(tmp_path), run, stage=2, world=2, precision="bf16")
    engine = _engine()
    fresh = [copy.deepcopy(s) for s in engine.optimizer.optimizer.state.values()]
    _, client = engine.load_checkpoint(str(tmp_path), load_module_only=True)
    for name, p in engine.module.named_parameters():
        expected = dict(run.model.named_parameters())[name].detach()
        assert torch.equal(p.detach(), expected.to(torch.bfloat16).float()), name
    assert list(engine.optimizer.optimizer.state.values()) == fresh and engine.global_steps == 0
    assert client["global_steps"] == 3 and "lr_scheduler" not in client and "optimizer" not in client
    assert engine.get_lr() == [warmup_lr(-1)] * 2
    engine = _engine()
    _, client = engine.load_checkpoint(str(tmp_path), load_optimizer_states=False, load_lr_scheduler_states=False)
    assert engine.global_steps == 3 and not engine.optimizer.optimizer.state
    assert client["lr_scheduler"] == {"last_batch_iteration": 2} and client["optimizer"] is None  # as DeepSpeed


def test_merge_weights_writes_the_fp32_model(run, tmp_path, capsys):
    write_checkpoint(str(tmp_path / "ckpt"), run, stage=3, world=2, precision="bf16")
    assert main(["merge-weights", str(tmp_path / "ckpt"), str(tmp_path / "out")]) == 0
    merged = load_file(tmp_path / "out" / "model.safetensors")
    expected = run.model.state_dict()
    assert set(merged) | {"unmix.weight"} == set(expected)  # one copy of the tied weight
    assert all(torch.equal(merged[k], v) for k, v in expected.items() if k in merged)
    assert main(["merge-weights", str(tmp_path / "ckpt" / "global_step3"), str(tmp_path / "out2")]) == 0


def test_script_arguments_and_numpy_numbers_in_the_client_state_load(run, tmp_path):
    allowed = copy.copy(run)
    allowed.client_state = {"args": argparse.Namespace(lr=0.1, name="x"), "loss": np.float64(0.25),
                            "seen": np.arange(3)}
    write_checkpoint(str(tmp_path), allowed, stage=1, world=1)
    _, client = _engine().load_checkpoint(str(tmp_path))
    assert client["args"].lr == 0.1 and client["loss"] == 0.25 and list(client["seen"]) == [0, 1, 2]


def test_a_file_outside_the_allow_list_is_refused_with_the_way_out(run, tmp_path):
    refused = copy.copy(run)
    refused.client_state = {"ratio": Fraction(1, 3)}
    directory = write_checkpoint(str(tmp_path), refused, stage=2, world=2)
    with pytest.raises(ValueError) as err:
        _engine().load_checkpoint(str(tmp_path))
    message = str(err.value)
    assert os.path.join(directory, "mp_rank_00_model_states.pt") in message and "fractions.Fraction" in message
    assert "weights_only=True" in message and "zero_to_fp32.py" in message
    assert main(["merge-weights", str(tmp_path), str(tmp_path / "out")]) == 1


def test_layouts_surge_cannot_take_and_incomplete_saves_are_refused(run, tmp_path):
    directory = write_checkpoint(str(tmp_path), run, stage=2, world=2)
    os.remove(os.path.join(directory, "zero_pp_rank_1_mp_rank_00_optim_states.pt"))
    with pytest.raises(ValueError, match=r"saved by 2 data-parallel ranks but holds .* ranks \[0\]"):
        _engine().load_checkpoint(str(tmp_path))
    for name, what in (("expp_rank_0_mp_rank_00_optim_states.pt", "Mixture-of-Experts"),
                       ("layer_01-model_00-model_states.pt", "pipeline-parallel"),
                       ("mp_rank_01_model_states.pt", "tensor/model-parallel")):
        other = tmp_path / name.split(".")[0]
        write_checkpoint(str(other), run, stage=1, world=1)
        torch.save({}, other / "global_step3" / name)
        with pytest.raises(ValueError, match=what):
            _engine().load_checkpoint(str(other))


def test_groups_that_do_not_fit_are_named(run, tmp_path):
    write_checkpoint(str(tmp_path), run, stage=2, world=2)
    torch.manual_seed(1)
    model = Net(tied=True)
    engine, *_ = surge.initialize(model=model, config=_config())  # one group instead of two
    with pytest.raises(ValueError, match="does not map onto one param group"):
        engine.load_checkpoint(str(tmp_path))
