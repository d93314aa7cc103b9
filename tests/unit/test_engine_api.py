"""surge.initialize and the engine on one process: config sections, errors, the
micro-step rule, checkpoints, DeepSpeed's schedules."""

import argparse
import json
import math
import os

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import surge
from surge.deepspeed.schedulers import WarmupCosineLR, WarmupDecayLR, WarmupLR
from surge.testing.parity import LR, MOMENTUM, BlockModel, make_dataset, max_difference, reference_run

BASE = {"train_micro_batch_size_per_gpu": 4, "optimizer": {"type": "SGD", "params": {"lr": LR, "momentum": MOMENTUM}}}


def _train(engine, loader, epochs=1):
    for _ in range(epochs):
        for x, y in loader:
            engine.backward(nn.functional.mse_loss(engine(x), y))
            engine.step()


@pytest.mark.parametrize(
    "config, message",
    [
        ({"zero_optimization": {"stage": 5}}, "zero_optimization.stage=5"),
        ({"zero_optimization": {"stages": 2}}, "'zero_optimization.stages'"),
        ({"train_batch_size": 10, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2},
         "train_batch_size=10 but"),
        ({"optimizer": {"type": "Lamb", "params": {}}}, "optimizer.type='Lamb' asks for DeepSpeed's fused LAMB"),
        ({"optimizer": {"type": "Adamm", "params": {}}}, "optimizer.type='Adamm'"),
        ({"scheduler": {"type": "OneCycle", "params": {}}}, "scheduler.type='OneCycle'"),
        ({"optimizer": {"type": "AdamW", "params": {"lr": "auto"}}}, "optimizer.params lr = \"auto\""),
    ],
)
def test_bad_configs_name_the_value(config, message):
    with pytest.raises(ValueError) as err:
        surge.initialize(model=nn.Linear(2, 2), config={"train_micro_batch_size_per_gpu": 2, **config})
    assert message in str(err.value)


def test_bad_paths_and_conflicts(tmp_path):
    bad = tmp_path / "ds.json"
    bad.write_text('{"train_batch_size": 8,, }')  # a trailing comma is fine (DeepSpeed reads hjson); two are not
    with pytest.raises(ValueError, match=r"ds.json' is not valid JSON \(line 1"):
        surge.initialize(model=nn.Linear(2, 2), config=str(bad))
    with pytest.raises(ValueError, match="does not exist"):
        surge.initialize(model=nn.Linear(2, 2), config=str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="needs a DeepSpeed config"):
        surge.initialize(model=nn.Linear(2, 2))
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="needs train_micro_batch_size_per_gpu"):
        surge.initialize(model=model, config={}, training_data=TensorDataset(torch.zeros(4, 2)))


def test_config_from_args_and_add_config_arguments(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(BASE))
    parser = surge.add_config_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--deepspeed", "--deepspeed_config", str(path)])
    assert args.deepspeed is True
    _engine, optimizer, loader, scheduler = surge.initialize(args=args, model=nn.Linear(2, 2))
    assert isinstance(optimizer.optimizer, torch.optim.SGD) and loader is None and scheduler is None
    with pytest.raises(ValueError, match="given twice"):
        surge.initialize(args=args, model=nn.Linear(2, 2), config=BASE)


def test_engine_matches_plain_training_with_accumulation():
    """train_batch_size 8 = micro 4 x accumulation 2: the engine's steps equal plain
    PyTorch on batches of 8 (the engine's loader shuffles with seed 0, so compare with
    the same order)."""
    data = make_dataset(32)
    order = list(torch.utils.data.RandomSampler(data, generator=torch.Generator().manual_seed(0)))
    ref = reference_run(torch.utils.data.Subset(data, order), 8, model_fn=BlockModel)
    engine, _, loader, _ = surge.initialize(model=BlockModel(), training_data=data,
                                            config={**BASE, "gradient_accumulation_steps": 2})
    boundaries = []
    for x, y in loader:
        before = engine.is_gradient_accumulation_boundary()
        engine.backward(nn.functional.mse_loss(engine(x), y))
        boundaries.append(before == engine.is_gradient_accumulation_boundary() and before)
        engine.step()
    assert boundaries == [False, True] * 4 and engine.global_steps == 4 and engine.micro_steps == 8
    assert max_difference(ref, [p.detach() for p in engine.module.parameters()]) <= 1e-6
    assert engine.train_batch_size() == 8 and engine.gradient_accumulation_steps() == 2


def test_scheduler_section_drives_the_lr_and_checkpoint_round_trip(tmp_path):
    config = {**BASE, "optimizer": {"type": "Adam", "params": {"lr": 0.01, "weight_decay": 0.1}},
              "scheduler": {"type": "WarmupDecayLR", "params": {"total_num_steps": 20, "warmup_max_lr": 0.01,
                                                                 "warmup_num_steps": 4, "warmup_type": "linear"}}}
    data = make_dataset(32)
    engine, optimizer, loader, _scheduler = surge.initialize(model=BlockModel(), config=config, training_data=data)
    assert isinstance(optimizer.optimizer, torch.optim.AdamW)  # DeepSpeed's Adam decouples weight decay
    assert engine.get_lr() == [0.0]
    _train(engine, loader)
    # DeepSpeed's timing: after 8 steps its last_batch_iteration is 7
    assert engine.get_lr() == [pytest.approx(0.01 * (20 - 7) / 16)]
    engine.save_checkpoint(tmp_path, client_state={"epoch": 1, "best": torch.tensor(0.5)})
    assert (tmp_path / "latest").read_text() == "global_step8"
    saved = {k: v.clone() for k, v in engine.module.state_dict().items()}
    _train(engine, loader)
    continued = {k: v.clone() for k, v in engine.module.state_dict().items()}

    again, _, loader2, _ = surge.initialize(model=BlockModel(seed=1), config=config, training_data=data)
    path, client = again.load_checkpoint(tmp_path)
    assert path == os.path.join(str(tmp_path), "global_step8") and client["epoch"] == 1
    assert torch.equal(client["best"], torch.tensor(0.5))
    assert all(torch.equal(v, saved[k]) for k, v in again.module.state_dict().items())
    assert again.global_steps == 8 and again.get_lr() == [pytest.approx(0.01 * (20 - 7) / 16)]
    _train(again, loader2)  # DeepSpeed's loader repeats one order every epoch: a new job's is the same
    assert all(torch.equal(v, continued[k]) for k, v in again.module.state_dict().items())  # optimizer state too


def test_load_without_latest_and_bad_tags(tmp_path):
    engine, *_ = surge.initialize(model=nn.Linear(2, 2), config=BASE)
    with pytest.warns(UserWarning, match="no checkpoint to load"):
        assert engine.load_checkpoint(tmp_path) == (None, None)
    with pytest.raises(ValueError, match="plain directory name"):
        engine.save_checkpoint(tmp_path, tag="../escape")
    with pytest.raises(ValueError, match="not a complete surge checkpoint"):
        engine.load_checkpoint(tmp_path, tag="nothing")


def test_save_16bit_model(tmp_path):
    from safetensors.torch import load_file

    engine, *_ = surge.initialize(model=nn.Linear(2, 2), config={**BASE, "bf16": {"enabled": True}})
    engine.save_16bit_model(tmp_path, "model.safetensors")
    weights = load_file(tmp_path / "model.safetensors")
    assert weights["weight"].dtype == torch.bfloat16
    engine.save_16bit_model(tmp_path)
    assert torch.load(tmp_path / "pytorch_model.bin", weights_only=True)["bias"].dtype == torch.bfloat16


def _lrs(scheduler, optimizer, steps):
    out = [optimizer.param_groups[0]["lr"]]
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
        out.append(optimizer.param_groups[0]["lr"])
    return out


def test_deepspeed_schedules():
    opt = lambda lr=1.0: torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)  # noqa: E731
    o = opt()
    log = _lrs(WarmupLR(o, warmup_min_lr=0.0, warmup_max_lr=1.0, warmup_num_steps=4), o, 5)
    # DeepSpeed's timing (deepspeed/runtime/lr_schedules.py): its last_batch_iteration starts at -1 and each
    # step adds one, so the first two optimizer steps both run at the start of the warm-up.
    assert log == pytest.approx([0.0, 0.0, math.log(2) / math.log(4), math.log(3) / math.log(4), 1.0, 1.0])
    o = opt()
    decay = _lrs(WarmupDecayLR(o, total_num_steps=8, warmup_max_lr=1.0, warmup_num_steps=4, warmup_type="linear"), o, 9)
    assert decay == pytest.approx([0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 0.75, 0.5, 0.25, 0.0])
    o = opt(2.0)
    cosine = _lrs(
        WarmupCosineLR(o, total_num_steps=6, warmup_num_steps=2, cos_min_ratio=0.1, warmup_type="linear"), o, 6
    )
    assert cosine[:3] == pytest.approx([0.0, 0.0, 1.0]) and cosine[-1] == pytest.approx(0.2)
    assert cosine[3] == pytest.approx(2.0 * (0.1 + 0.9 * (1 + math.cos(math.pi / 4)) / 2))
    o = opt()
    jumped = WarmupLR(o, warmup_max_lr=1.0, warmup_num_steps=4)
    jumped.step(last_batch_iteration=2)  # DeepSpeed's step(last_batch_iteration=...) and state
    assert o.param_groups[0]["lr"] == pytest.approx(math.log(3) / math.log(4))
    assert jumped.last_batch_iteration == 2
    fresh = WarmupLR(opt(), warmup_max_lr=1.0, warmup_num_steps=4)
    fresh.load_state_dict({"last_batch_iteration": 2})
    assert fresh.last_batch_iteration == 2 and fresh.get_lr() == pytest.approx([math.log(3) / math.log(4)])
    with pytest.raises(ValueError, match="warmup_type='cubic'"):
        WarmupLR(opt(), warmup_type="cubic")
    with pytest.raises(ValueError, match="2 values but the optimizer has 1"):
        WarmupLR(opt(), warmup_max_lr=[0.1, 0.2])


def test_monitor_sections_are_written_by_the_engine_without_an_unapplied_warning(tmp_path):
    import warnings

    config = {**BASE, "csv_monitor": {"enabled": True, "output_path": str(tmp_path), "job_name": "job"}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine, *_ = surge.initialize(model=nn.Linear(2, 1), config=config)
    assert not [w for w in caught if "does not apply" in str(w.message) or "not apply" in str(w.message)]
    engine.backward(engine(torch.ones(2, 2)).sum())
    engine.step()
    written = [p.name for p in (tmp_path / "job").iterdir()]
    assert any("loss" in name.lower() for name in written), written
