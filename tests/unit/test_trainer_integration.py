"""surge.integrations.transformers in one process: the same losses as transformers' own
Trainer, a from_pretrained-loadable save, DeepSpeed configs filled and checked at
construction without DeepSpeed (the 2-process checks are in tests/e2e/test_trainer.py)."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import torch  # noqa: E402

from surge.integrations.transformers import Trainer, TrainingArguments  # noqa: E402

_SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "e2e", "scripts")
sys.path.insert(0, _SCRIPTS)
try:
    import trainer_compare as tc
finally:
    sys.path.remove(_SCRIPTS)


def test_deepspeed_is_not_installed():
    assert importlib.util.find_spec("deepspeed") is None


def test_losses_equal_transformers_trainer_and_save_model_loads(tmp_path):
    theirs, _ = tc.train("accelerate", str(tmp_path / "hf"))
    ours, trainer = tc.train("surge", str(tmp_path / "surge"))
    assert len(ours) == 4
    assert ours == theirs
    trainer.save_model(str(tmp_path / "final"))
    loaded = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "final")).state_dict()
    trained = trainer.model.state_dict()
    assert sorted(loaded) == sorted(trained)
    assert all(torch.equal(loaded[k], trained[k]) for k in trained)


def test_bf16_losses_equal_transformers_trainer(tmp_path):
    theirs, _ = tc.train("accelerate", str(tmp_path / "hf"), bf16=True)
    ours, trainer = tc.train("surge", str(tmp_path / "surge"), bf16=True)
    assert trainer.accelerator.mixed_precision == "bf16"
    assert ours == theirs


def test_deepspeed_dict_fills_auto_without_a_deepspeed_run(tmp_path):
    config = tc.zero(3, offload=True)
    config["scheduler"] = {"type": "WarmupLR", "params": {"warmup_min_lr": "auto", "warmup_max_lr": "auto",
                                                          "warmup_num_steps": "auto"}}
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, gradient_accumulation_steps=2,
                             learning_rate=1e-3, max_grad_norm=0.5, use_cpu=True, report_to=[], deepspeed=config)
    assert args.deepspeed == config  # the user's value is left as given
    assert config["train_micro_batch_size_per_gpu"] == "auto"
    filled = args.surge_deepspeed_config
    assert filled["train_micro_batch_size_per_gpu"] == 4
    assert filled["gradient_accumulation_steps"] == 2
    assert filled["train_batch_size"] == 8
    assert filled["gradient_clipping"] == 0.5
    assert filled["optimizer"]["params"]["lr"] == 1e-3
    assert args.deepspeed_plugin is None
    assert "ACCELERATE_USE_DEEPSPEED" not in os.environ
    assert args.device.type == "cpu"  # transformers' device set-up runs without DeepSpeed
    trainer = Trainer(model=tc.tiny_llama(), args=args, train_dataset=tc.Tokens())
    assert not trainer.is_deepspeed_enabled
    assert trainer.accelerator.distributed_type == "NO"  # one process: nothing to shard
    trainer.create_optimizer()
    scheduler = trainer.create_scheduler(num_training_steps=10)
    assert type(trainer.optimizer).__name__ == "AdamW"
    assert type(scheduler).__name__ == "WarmupLR"
    assert filled["scheduler"]["params"]["warmup_num_steps"] == 1  # filled at train time, as transformers does


def test_ds_optimizer_section_and_trainer_adamw_train_the_same(tmp_path):
    plain, _ = tc.train("surge", str(tmp_path / "plain"))
    from_config, _ = tc.train("surge", str(tmp_path / "ds"), deepspeed=tc.zero(2))
    assert from_config == plain


@pytest.mark.parametrize("section, match", [
    ({"optimizer": {"type": "OneBitAdam", "params": {"lr": "auto"}}}, "1-bit Adam"),
    ({"scheduler": {"type": "OneCycle", "params": {}}}, "OneCycle"),
    ({"scheduler": {"type": "Nope", "params": {}}}, "WarmupLR"),
    ({"optimizer": {"type": "Adagrad", "params": {"lr": "auto", "betas": "auto"}}}, "betas"),
])
def test_unsupported_deepspeed_feature_fails_at_construction(tmp_path, section, match):
    config = {"zero_optimization": {"stage": 2}, **section}
    with pytest.raises(ValueError, match=match):
        TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], deepspeed=config)


def test_mismatched_deepspeed_values_are_named_at_construction(tmp_path):
    config = {"gradient_accumulation_steps": 3, "train_micro_batch_size_per_gpu": "auto", "bf16": {"enabled": True}}
    with pytest.raises(ValueError, match=r"gradient_accumulation_steps=3 vs hf gradient_accumulation_steps=2\n"
                                         r".*bf16.enabled=True"):
        TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], gradient_accumulation_steps=2,
                          deepspeed=config)


def test_transformers_versions_outside_the_tested_range_are_refused():
    from surge.integrations.transformers import _check_version

    _check_version("5.25.0")
    _check_version("5.30.1")
    for version in ("4.46.0", "5.24.9", "6.0.0"):
        with pytest.raises(ImportError, match=r"transformers>=5\.25,<6"):
            _check_version(version)


def test_backward_takes_accelerates_scale_wrt_gas():
    """transformers' Trainer passes scale_wrt_gas=False to backward under DeepSpeed
    (Accelerate forwards it to DeepSpeed's engine): the loss is not divided by the
    accumulation steps."""
    from surge import Accelerator

    grads = []
    for kwargs in ({}, {"scale_wrt_gas": False}):
        accelerator = Accelerator(gradient_accumulation_steps=2, cpu=True)
        weight = torch.nn.Parameter(torch.ones(2))
        with accelerator.accumulate():
            accelerator.backward((weight * 3).sum(), **kwargs)
        grads.append(weight.grad.clone())
    assert torch.equal(grads[0] * 2, grads[1])


def test_transformers_own_arguments_with_deepspeed_are_refused(tmp_path):
    args = transformers.TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    args.deepspeed = {"zero_optimization": {"stage": 3}}  # as if transformers had accepted it (DeepSpeed installed)
    with pytest.raises(TypeError, match=r"surge\.integrations\.transformers\.TrainingArguments"):
        Trainer(model=tc.tiny_llama(), args=args, train_dataset=tc.Tokens())


def test_accelerates_parallelism_config_maps_to_surges():
    """TrainingArguments(parallelism_config=accelerate's ParallelismConfig): the sizes and the
    cp / tp settings carry over (the 2-process cp run is in tests/e2e/test_trainer.py); sp,
    whose Trainer loss reads DeepSpeed's process groups, is refused naming the fix."""
    from accelerate import ParallelismConfig as AccelerateConfig
    from accelerate.utils import TorchContextParallelConfig as AccelerateCp

    from surge import ParallelismConfig
    from surge.integrations.transformers import _surge_parallelism

    mine = _surge_parallelism(AccelerateConfig(dp_shard_size=2, cp_size=2,
                                               cp_handler=AccelerateCp(cp_comm_strategy="alltoall")))
    assert isinstance(mine, ParallelismConfig) and (mine.dp_shard_size, mine.cp_size) == (2, 2)
    assert mine.cp_handler.cp_comm_strategy == "alltoall"
    assert _surge_parallelism(AccelerateConfig(tp_size=2)).tp_size == 2
    ours = ParallelismConfig(cp_size=2)
    assert _surge_parallelism(ours) is ours and _surge_parallelism(None) is None
    with pytest.raises(ValueError, match=r"sp_size=2: the Trainer's sequence-parallel loss .* Use cp_size"):
        _surge_parallelism(AccelerateConfig(sp_size=2))
