"""DeepSpeed JSON configs: translation, batch arithmetic, errors, warnings."""

import json
import warnings

import pytest
import torch

from surge import Accelerator, DeepSpeedPlugin
from surge.deepspeed.ds_config import (
    ActivationCheckpointingSettings,
    LossScaleSettings,
    parse_deepspeed_config,
    resolve_batch_sizes,
)

CONFIG = {
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": 4,
    "gradient_clipping": 1.0,
    "fp16": {"enabled": True, "loss_scale": 0, "initial_scale_power": 12, "loss_scale_window": 500, "hysteresis": 2},
    "zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"}, "offload_optimizer": {"device": "cpu"},
                          "overlap_comm": True},
    "activation_checkpointing": {"partition_activations": False},
}


def test_translation():
    s = parse_deepspeed_config(CONFIG)
    assert (s.zero_stage, s.offload_param_device, s.offload_optimizer_device) == (3, "cpu", "cpu")
    assert s.mixed_precision == "fp16"
    assert s.loss_scale == LossScaleSettings(initial_scale=4096.0, window=500, hysteresis=2)
    assert (s.gradient_clipping, s.gradient_accumulation_steps) == (1.0, 4)
    assert s.activation_checkpointing == ActivationCheckpointingSettings()  # for surge.checkpointing.configure
    assert "fp16.hysteresis" not in s.unhonoured  # honoured by surge's DeepSpeed loss scaler


def _scales(settings, overflows):
    """The scale after each step of a run whose steps overflow as given."""
    from surge.precision.fp16 import DeepSpeedLossScaler

    scaler = DeepSpeedLossScaler("cpu", settings)
    scale, out = settings.initial_scale, []
    for overflow in overflows:
        scale = scaler._next_scale(scale, overflow)
        out.append(scale)
    return out


def test_deepspeed_loss_scale_rule():
    dynamic = LossScaleSettings(initial_scale=16.0, window=2, hysteresis=2, min_scale=4.0)
    # Clean steps double every `window`; the first overflow only spends the hysteresis,
    # the second halves; the scale never falls below min_scale.
    assert _scales(dynamic, [False, False]) == [16.0, 32.0]
    assert _scales(dynamic, [True, True, True, True, True]) == [16.0, 8.0, 4.0, 4.0, 4.0]
    # Growth counts from the last overflow, which it also refills the hysteresis at.
    assert _scales(dynamic, [True, False, False, True]) == [16.0, 16.0, 32.0, 32.0]
    assert _scales(LossScaleSettings(initial_scale=8.0, static=True), [True, False, True]) == [8.0, 8.0, 8.0]
    consecutive = LossScaleSettings(initial_scale=16.0, window=100, hysteresis=2, consecutive_hysteresis=True)
    assert _scales(consecutive, [True, False, True, True]) == [16.0, 16.0, 16.0, 8.0]


def test_fp16_section_values_are_checked():
    with pytest.raises(ValueError, match=r"fp16.hysteresis=0"):
        parse_deepspeed_config({"fp16": {"enabled": True, "hysteresis": 0}})
    with pytest.raises(ValueError, match=r"fp16.enabled='yes'"):
        parse_deepspeed_config({"fp16": {"enabled": "yes"}})
    assert parse_deepspeed_config({"fp16": {"enabled": True, "loss_scale": 128}}).loss_scale.static
    assert parse_deepspeed_config({"bf16": {"enabled": "auto"}}).mixed_precision is None


def test_deepspeed_fp16_config_installs_the_deepspeed_scaler():
    from surge.precision.fp16 import DeepSpeedLossScaler

    acc = Accelerator(deepspeed_plugin=DeepSpeedPlugin(hf_ds_config={
        "train_micro_batch_size_per_gpu": 2, "fp16": {"enabled": True, "initial_scale_power": 5, "hysteresis": 3}}))
    scaler = acc.precision.scaler
    assert isinstance(scaler, DeepSpeedLossScaler) and scaler.get_scale() == 32.0
    assert scaler.settings.hysteresis == 3
    auto = Accelerator(mixed_precision="fp16", deepspeed_plugin=DeepSpeedPlugin(hf_ds_config={
        "train_micro_batch_size_per_gpu": 2, "fp16": {"enabled": "auto"}}))
    assert isinstance(auto.precision.scaler, DeepSpeedLossScaler)


def test_plugin_from_a_json_path(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(CONFIG))
    plugin = DeepSpeedPlugin(hf_ds_config=str(path))
    assert (plugin.zero_stage, plugin.gradient_accumulation_steps, plugin.gradient_clipping) == (3, 4, 1.0)
    assert DeepSpeedPlugin.from_dict(CONFIG).offload_param_device == "cpu"


def test_accelerator_takes_precision_and_scaler_from_the_config():
    cfg = {"bf16": {"enabled": True}, "zero_optimization": {"stage": 2}, "gradient_accumulation_steps": 2}
    acc = Accelerator(deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=cfg))
    assert (acc.mixed_precision, acc.gradient_accumulation_steps) == ("bf16", 2)
    fp16 = {"fp16": {"enabled": True, "initial_scale_power": 8}, "optimizer": {"type": "AdamW", "params": {}}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        acc16 = Accelerator(deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=fp16))
    assert acc16.scaler.get_scale() == 256.0
    # The optimizer section is applied now: prepare builds it for a DummyOptim (tests/unit/test_dummy_optim.py).
    assert not any("optimizer" in str(w.message) for w in caught)
    with pytest.raises(ValueError, match="contradicts the DeepSpeed config"):
        Accelerator(mixed_precision="bf16", deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=fp16))


@pytest.mark.parametrize(
    "config, message",
    [
        ({"zero_optimization": {"stage": 5}}, "stage=5"),
        ({"zero_optimization": {"stages": 2}}, "'zero_optimization.stages'"),
        ({"fp16": {"enabled": True}, "bf16": {"enabled": True}}, "both fp16 and bf16"),
        ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps=0"),
        ({"zero_optimization": {"offload_param": {"device": "gpu"}}}, "offload_param.device='gpu'"),
    ],
)
def test_bad_configs_name_the_value(config, message):
    with pytest.raises(ValueError) as err:
        parse_deepspeed_config(config)
    assert message in str(err.value)


def test_unparsable_and_missing_paths(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ValueError, match="not valid JSON"):
        DeepSpeedPlugin(hf_ds_config=str(bad))
    with pytest.raises(ValueError, match="does not exist"):
        DeepSpeedPlugin(hf_ds_config=str(tmp_path / "missing.json"))


def test_batch_arithmetic():
    assert resolve_batch_sizes(64, 4, None, 8) == (64, 4, 2)
    assert resolve_batch_sizes(None, 4, 2, 8) == (64, 4, 2)
    assert resolve_batch_sizes(64, None, 2, 8) == (64, 4, 2)
    with pytest.raises(ValueError,
                       match=r"train_batch_size=60 but .*4 x gradient_accumulation_steps=2 x 8 processes = 64"):
        resolve_batch_sizes(60, 4, 2, 8)
    with pytest.raises(ValueError, match="not a multiple"):
        resolve_batch_sizes(30, 4, None, 8)


def test_auto_batch_sizes_are_filled_from_the_dataloader():
    from torch.utils.data import DataLoader, TensorDataset

    data = TensorDataset(torch.zeros(32, 2))
    plugin = DeepSpeedPlugin(hf_ds_config={"train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto",
                                           "gradient_accumulation_steps": 2})
    acc = Accelerator(deepspeed_plugin=plugin)
    acc.prepare(DataLoader(data, batch_size=4))
    sizes = acc.deepspeed_batch_sizes
    assert (sizes.train_micro_batch_size_per_gpu, sizes.train_batch_size) == (4, 8)
    # a new value: the user's plugin keeps its "auto"s
    assert (plugin.ds_settings.train_micro_batch_size_per_gpu, plugin.ds_settings.train_batch_size) == (None, None)
    bad = Accelerator(deepspeed_plugin=DeepSpeedPlugin(hf_ds_config={
        "train_micro_batch_size_per_gpu": "auto", "train_batch_size": 12, "gradient_accumulation_steps": 2}))
    with pytest.raises(ValueError, match=r"train_batch_size=12 but .*=4 x gradient_accumulation_steps=2 x 1"):
        bad.prepare(DataLoader(data, batch_size=4))


def test_accumulation_follows_from_train_and_micro_batch():
    acc = Accelerator(deepspeed_plugin=DeepSpeedPlugin(hf_ds_config={"train_batch_size": 12,
                                                                     "train_micro_batch_size_per_gpu": 3}))
    assert acc.gradient_accumulation_steps == 4
    with pytest.raises(ValueError, match="batch sizes disagree"):
        Accelerator(deepspeed_plugin=DeepSpeedPlugin(hf_ds_config={
            "train_batch_size": 12, "train_micro_batch_size_per_gpu": 3, "gradient_accumulation_steps": 2}))


def test_keys_surge_cannot_honour_give_one_warning_naming_them():
    config = {"zero_optimization": {"stage": 2, "zero_quantized_gradients": True,
                                    "offload_optimizer": {"device": "nvme"}},
              "activation_checkpointing": {"partition_activations": False}, "wandb": {"enabled": False}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        acc = Accelerator(deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=config))
    messages = [str(w.message) for w in caught if "does not apply" in str(w.message)]
    assert len(messages) == 1, messages
    assert "zero_optimization.zero_quantized_gradients" in messages[0] and "nvme" in messages[0]
    assert "partition_activations" not in messages[0] and "wandb" not in messages[0]  # switched off: nothing to do
    assert acc.deepspeed_plugin.offload_optimizer_device == "cpu"
