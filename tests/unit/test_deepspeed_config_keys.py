"""DeepSpeed config keys read as DeepSpeed reads them: legacy names and aliases, harmless
keys, ignored ones, features surge does not offer, unknown keys, the file format."""

import base64
import json
import warnings

import pytest

from surge import Accelerator, DeepSpeedPlugin
from surge.deepspeed.ds_config import LossScaleSettings, load_json, parse_deepspeed_config

BASE = {"train_micro_batch_size_per_gpu": 2}


def parse(**sections):
    return parse_deepspeed_config({**BASE, **sections})


def notes(**sections):
    return " | ".join(parse(**sections).unhonoured)


def test_legacy_cpu_offload_flags_are_the_offload_sections():
    s = parse(zero_optimization={"stage": 2, "cpu_offload": True})
    assert (s.offload_optimizer_device, s.offload_param_device) == ("cpu", "none")
    assert parse(zero_optimization={"stage": 2, "cpu_offload": False}).offload_optimizer_device == "none"
    s = parse(zero_optimization={"stage": 3, "cpu_offload_param": True, "cpu_offload_use_pin_memory": True})
    assert (s.offload_optimizer_device, s.offload_param_device, s.unhonoured) == ("none", "cpu", [])
    with pytest.raises(ValueError, match=r"both cpu_offload .* and offload_optimizer; DeepSpeed refuses that too"):
        parse(zero_optimization={"stage": 2, "cpu_offload": True, "offload_optimizer": {"device": "cpu"}})


def test_stage3_aliases_and_old_names_are_accepted():
    aliases = {"stage3_prefetch_bucket_size": 5e7, "prefetch_bucket_size": 5e7, "stage3_max_live_parameters": 1e9,
               "max_reuse_distance": 1e9, "stage3_param_persistence_threshold": 1e5,
               "stage3_gather_fp16_weights_on_model_save": True, "sub_group_size": 1e9,
               "mics_hierarchical_params_gather": False, "ignore_unused_parameters": True, "legacy_stage1": False,
               "elastic_checkpoint": False}
    s = parse(zero_optimization={"stage": 3, **aliases})
    assert (s.zero_stage, s.unhonoured) == (3, [])
    with pytest.raises(ValueError, match=r"stage3_gather_fp16_weights_on_model_save .* DeepSpeed refuses"):
        parse(zero_optimization={"stage": 3, "stage3_gather_fp16_weights_on_model_save": True,
                                 "gather_16bit_weights_on_model_save": True})


def test_zero_optimization_true_is_stage_one():
    assert parse(zero_optimization=True, allgather_size=5e8).zero_stage == 1
    assert parse(zero_optimization=False).zero_stage == 0


def test_offload_below_its_stage_is_ignored_with_a_note():
    s = parse(zero_optimization={"stage": 2, "offload_param": {"device": "cpu"},
                                 "offload_optimizer": {"device": "cpu"}})
    assert (s.offload_param_device, s.offload_optimizer_device) == ("none", "cpu")
    assert "zero_optimization.offload_param (DeepSpeed ignores it at ZeRO stage 2" in " ".join(s.unhonoured)
    s = parse(zero_optimization={"stage": 0, "offload_optimizer": {"device": "cpu"}})
    assert s.offload_optimizer_device == "none" and "offload_optimizer" in " ".join(s.unhonoured)
    # DeepSpeed-Chat's step-1 config (offload at stage 2) builds an Accelerator.
    chat = {**BASE, "zero_optimization": {"stage": 2, "offload_param": {"device": "cpu"}}}
    plugin = DeepSpeedPlugin(hf_ds_config=chat)
    assert plugin.offload_param_device == "none"


def test_bfloat16_is_bf16_and_bf16_loss_scale_keys_are_ignored():
    assert parse(bfloat16={"enabled": True}).mixed_precision == "bf16"
    s = parse(bf16={"enabled": True, "loss_scale": 0, "loss_scale_window": 1000, "hysteresis": 2,
                    "min_loss_scale": 1, "initial_scale_power": 16, "immediate_grad_update": False})
    assert (s.mixed_precision, s.loss_scale, s.unhonoured) == ("bf16", None, [])
    s = parse(bf16={"enabled": False}, bfloat16={"enabled": True})
    assert s.mixed_precision == "no" and "bf16 is given too and wins" in " ".join(s.unhonoured)


def test_fp16_master_weights_and_grads():
    s = parse(fp16={"enabled": True, "fp16_master_weights_and_grads": True}, zero_optimization={"stage": 2})
    assert s.mixed_precision == "fp16" and "fp16_master_weights_and_grads" in " ".join(s.unhonoured)
    with pytest.raises(ValueError, match=r"needs ZeRO stage 2 .*DeepSpeed refuses"):
        parse(fp16={"enabled": True, "fp16_master_weights_and_grads": True}, zero_optimization={"stage": 1})
    assert parse(fp16={"enabled": False, "fp16_master_weights_and_grads": True}).unhonoured == []


def test_apex_amp_section():
    s = parse(amp={"enabled": True, "opt_level": "O1"})
    assert (s.mixed_precision, s.loss_scale, s.unhonoured) == ("fp16", None, [])  # torch's GradScaler = apex's O1
    assert parse(amp={"enabled": True, "opt_level": "O0"}).mixed_precision == "no"
    assert parse(amp={"enabled": True, "loss_scale": 128}).loss_scale == LossScaleSettings(128.0, static=True)
    assert "O2" in notes(amp={"enabled": True, "opt_level": "O2"})
    assert parse(amp={"enabled": False, "opt_level": "O2"}).mixed_precision == "no"
    with pytest.raises(ValueError, match=r"amp .* with ZeRO; DeepSpeed refuses"):
        parse(amp={"enabled": True}, zero_optimization={"stage": 1})
    with pytest.raises(ValueError, match=r"amp and fp16/bf16 together"):
        parse(amp={"enabled": True}, fp16={"enabled": True})


@pytest.mark.parametrize("sections", [
    {"prescale_gradients": True, "gradient_predivide_factor": 2.0},  # the same average (where the division happens)
    {"disable_allgather": True, "sparse_gradients": True, "cuda_visible_devices": 0},
    {"zero_allow_untested_optimizer": True, "zero_force_ds_cpu_optimizer": False, "dump_state": False},
    {"wall_clock_breakdown": True, "memory_breakdown": False, "steps_per_print": 50},
    {"checkpoint": {"tag_validation": "Warn", "load_universal": False}, "data_types": {"grad_accum_dtype": "fp32"}},
    {"communication_data_type": "fp32", "seq_parallel_comm_data_type": "fp16", "timers": {"throughput": {}}},
    {"hybrid_engine": {"enabled": False, "max_out_tokens": 512}, "autotuning": {"enabled": False},
     "compression_training": {"weight_quantization": {"shared_parameters": {"enabled": False}},
                              "layer_reduction": {"enabled": False}},
     "flops_profiler": {"enabled": False}, "tensorboard": {"enabled": False}, "elasticity": {"enabled": False},
     "progressive_layer_drop": {"enabled": False}, "comms_logger": {"enabled": False}},
    {"activation_checkpointing": {"partition_activations": True, "contiguous_memory_optimization": True,
                                  "cpu_checkpointing": True, "number_checkpoints": 4, "profile": True}},
])
def test_harmless_and_switched_off_keys_say_nothing(sections):
    assert parse(**sections).unhonoured == []


def test_values_read_for_the_engine_and_checkpointing():
    s = parse(steps_per_print=50, wall_clock_breakdown=True,
              activation_checkpointing={"cpu_checkpointing": True, "number_checkpoints": 4},
              tensorboard={"enabled": True, "output_path": "logs", "job_name": "run"})
    assert (s.steps_per_print, s.wall_clock_breakdown) == (50, True)
    assert s.activation_checkpointing.cpu_checkpointing and s.activation_checkpointing.number_checkpoints == 4
    assert s.monitors == {"tensorboard": {"output_path": "logs", "job_name": "run"}}
    assert "tensorboard (DeepSpeed's monitor logs" in " ".join(s.unhonoured)
    assert parse(flops_profiler={"enabled": True}).wall_clock_breakdown  # as in DeepSpeed
    assert parse().activation_checkpointing is None
    with pytest.raises(ValueError, match=r"activation_checkpointing.cpu_checkpointing='yes'"):
        parse(activation_checkpointing={"cpu_checkpointing": "yes"})


def test_features_not_offered_warn_when_they_do_not_change_training():
    for sections, named in [
        ({"autotuning": {"enabled": True}}, "DeepSpeed Autotuning is not offered"),
        ({"hybrid_engine": {"enabled": True}}, "Hybrid Engine"),
        ({"flops_profiler": {"enabled": True}}, "flops profiler"),
        ({"sparse_attention": {"mode": "fixed"}}, "Sparse Attention"),
        ({"zero_optimization": {"stage": 3, "zero_quantized_weights": True}}, "ZeRO++"),
        ({"zero_optimization": {"stage": 3, "offload_param": {"device": "nvme", "nvme_path": "/nvme"}}},
         "surge offloads to the CPU instead"),
        ({"communication_data_type": "bf16"}, "communication_data_type=bf16"),
        ({"data_types": {"grad_accum_dtype": "bf16"}}, "grad_accum_dtype=bf16"),
    ]:
        assert named in notes(**sections), sections


@pytest.mark.parametrize("sections, named", [
    ({"elasticity": {"enabled": True, "max_train_batch_size": 2000}}, "DeepSpeed config elasticity (enabled)"),
    ({"progressive_layer_drop": {"enabled": True, "theta": 0.5}}, "DeepSpeed config progressive_layer_drop"),
    ({"compression_training": {"sparse_pruning": {"shared_parameters": {"enabled": True}}}},
     "compression_training (sparse_pruning enabled)"),
    ({"data_efficiency": {"enabled": True, "data_routing": {"random_ltd": {"enabled": True}}}}, "random_ltd"),
    ({"optimizer": {"type": "OneBitAdam", "params": {"lr": 1e-3}}}, "1-bit Adam"),
    ({"optimizer": {"type": "ZeroOneAdam"}}, "0/1 Adam"),
    ({"optimizer": {"type": "onebitlamb"}}, "1-bit LAMB"),
    ({"scheduler": {"type": "OneCycle", "params": {}}}, "OneCycle"),
    ({"tensor_parallel": {"autotp_size": 2}}, "AutoTP"),
])
def test_features_not_offered_are_refused_by_name_when_they_change_training(sections, named):
    with pytest.raises(ValueError) as err:
        parse(**sections)
    message = str(err.value)
    assert named in message and "a DeepSpeed feature surge does not offer" in message
    assert "unknown" not in message


def test_several_refused_features_are_reported_together():
    with pytest.raises(ValueError) as err:
        parse(progressive_layer_drop={"enabled": True}, optimizer={"type": "Lamb"})
    assert "progressive_layer_drop" in str(err.value) and "LAMB" in str(err.value)


def test_unknown_keys_are_ignored_as_deepspeed_ignores_them_and_named():
    s = parse(zero_optimisation={"stage": 3}, fp16={"enabled": True, "loss_scal": 0},
              activation_checkpointing={"partitioned_activations": True})
    text = " | ".join(s.unhonoured)
    assert ("zero_optimisation (not a DeepSpeed key: ignored, as DeepSpeed ignores it; did you mean "
            "'zero_optimization'?)") in text
    assert "fp16.loss_scal (" in text and "'loss_scale'?" in text
    assert "activation_checkpointing.partitioned_activations" in text and "'partition_activations'?" in text
    assert s.zero_stage == 0  # DeepSpeed trains without ZeRO then, too
    with pytest.raises(ValueError, match=r"unknown key\(s\) 'zero_optimisation', 'fp16.loss_scal'.*strict=True"):
        parse_deepspeed_config({**BASE, "zero_optimisation": {}, "fp16": {"loss_scal": 0}}, strict=True)
    with pytest.raises(ValueError, match=r"'zero_optimization.stages'.*DeepSpeed refuses them too"):
        parse(zero_optimization={"stages": 2})  # strict in DeepSpeed's ZeRO section as well


def test_bad_values_deepspeed_refuses_too():
    with pytest.raises(ValueError, match=r"communication_data_type='int8' must be fp16, bf16 or fp32"):
        parse(communication_data_type="int8")
    with pytest.raises(ValueError, match=r"grad_accum_dtype='double'"):
        parse(data_types={"grad_accum_dtype": "double"})
    with pytest.raises(ValueError, match=r"max_grad_norm is not an optimizer argument.*gradient_clipping"):
        parse(optimizer={"type": "Adam", "params": {"lr": 1e-3, "max_grad_norm": 1.0}})
    with pytest.raises(ValueError, match=r"ratio=0.5 .*needs ZeRO stage 3"):
        parse(zero_optimization={"stage": 2, "offload_optimizer": {"device": "cpu", "ratio": 0.5}})
    with pytest.raises(ValueError, match=r"hybrid_engine=True must be an object"):
        parse(hybrid_engine=True)


def test_the_warning_reaches_the_user_once_and_harmless_configs_are_quiet():
    noisy = {**BASE, "zero_optimization": {"stage": 2, "offload_param": {"device": "cpu"}}, "autotuning":
             {"enabled": True}}
    quiet = {**BASE, "prescale_gradients": True, "steps_per_print": 10, "wall_clock_breakdown": False,
             "zero_allow_untested_optimizer": True, "hybrid_engine": {"enabled": False}}
    for config, expected in ((noisy, 1), (quiet, 0)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            Accelerator(deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=config))
        found = [str(w.message) for w in caught if "DeepSpeed config" in str(w.message)]
        assert len(found) == expected, found
    assert "offload_param" in found[0] if expected else True


def test_files_as_deepspeed_reads_them(tmp_path):
    relaxed = tmp_path / "relaxed.json"  # hjson: comments and trailing commas
    relaxed.write_text('{\n  // ZeRO\n  "zero_optimization": {"stage": 2,},  # two\n'
                       '  "train_micro_batch_size_per_gpu": 4, "tensorboard": {"output_path": "a//b#c"},\n}\n')
    s = parse_deepspeed_config(relaxed)
    assert (s.zero_stage, s.train_micro_batch_size_per_gpu) == (2, 4)
    assert load_json(relaxed)["tensorboard"]["output_path"] == "a//b#c"  # not a comment inside a string
    twice = tmp_path / "twice.json"
    twice.write_text('{"train_batch_size": 8, "train_batch_size": 16}')
    with pytest.raises(ValueError, match=r"'train_batch_size' appears twice .*DeepSpeed refuses duplicate keys"):
        parse_deepspeed_config(twice)
    encoded = base64.urlsafe_b64encode(json.dumps({**BASE, "bf16": {"enabled": True}}).encode()).decode()
    assert parse_deepspeed_config(encoded).mixed_precision == "bf16"  # DeepSpeed's base64 form
    with pytest.raises(ValueError, match=r"does not exist"):
        parse_deepspeed_config(str(tmp_path / "missing.json"))
