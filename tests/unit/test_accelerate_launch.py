"""`surge launch` reads Accelerate's config files and flags as `accelerate launch` does.

Differential: each case is a config file written by Accelerate's own writer
(``ClusterConfig.to_yaml_file``, as ``accelerate config`` writes it) or by hand, plus
launch flags. Accelerate's side runs its launch parser, ``_validate_launch_command`` and
the environment its launcher would hand the workers, then builds its plugins under that
environment; surge's side runs ``surge launch``'s resolution and settles a worker's plan
from the file the launcher hands over. The settings that decide training (world size,
precision, strategy, accumulation, clipping, compile) must be equal.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

accelerate = pytest.importorskip("accelerate")

from accelerate.commands.config.config_args import ClusterConfig  # noqa: E402

from surge.commands.launch import resolve_config  # noqa: E402
from surge.commands.main import build_parser  # noqa: E402
from surge.config.file import ConfigError, read_values, write_config  # noqa: E402

DEFAULTS = {"device_placement": True, "split_batches": False, "mixed_precision": None,
            "gradient_accumulation_steps": None, "cpu": None, "project_dir": None, "project_config": None,
            "even_batches": True, "step_scheduler_with_optimizer": True, "kwargs_handlers": None,
            "deepspeed_plugin": None, "fsdp_plugin": None, "log_with": None, "dynamo_backend": None,
            "dynamo_plugin": None, "nonfinite": None}
FSDP_V1 = {"fsdp_version": 1, "fsdp_sharding_strategy": "SHARD_GRAD_OP",
           "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "fsdp_transformer_layer_cls_to_wrap": "Block,Embedding",
           "fsdp_backward_prefetch": "BACKWARD_PRE",
           "fsdp_state_dict_type": "FULL_STATE_DICT", "fsdp_offload_params": False, "fsdp_forward_prefetch": False,
           "fsdp_use_orig_params": True, "fsdp_cpu_ram_efficient_loading": True, "fsdp_sync_module_states": True,
           "fsdp_activation_checkpointing": False}
FSDP_V2 = {"fsdp_version": 2, "fsdp_reshard_after_forward": False, "fsdp_offload_params": True,
           "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "fsdp_transformer_layer_cls_to_wrap": "Block",
           "fsdp_state_dict_type": "SHARDED_STATE_DICT", "fsdp_cpu_ram_efficient_loading": True,
           "fsdp_activation_checkpointing": True}
DS_ZERO3 = {"zero_stage": 3, "offload_optimizer_device": "cpu", "offload_param_device": "cpu",
            "gradient_accumulation_steps": 4, "gradient_clipping": 0.5, "zero3_init_flag": True,
            "zero3_save_16bit_model": True}
DYNAMO = {"dynamo_backend": "INDUCTOR", "dynamo_mode": "max-autotune", "dynamo_use_fullgraph": True,
          "dynamo_use_dynamic": True, "dynamo_use_regional_compilation": True}

# id -> (ClusterConfig arguments, or None for no file; launch flags)
CASES: dict[str, tuple[dict[str, Any] | None, list[str]]] = {
    "no": ({"distributed_type": "NO", "num_processes": 1}, []),
    "no_cpu_bf16": ({"distributed_type": "NO", "num_processes": 1, "use_cpu": True, "mixed_precision": "bf16"}, []),
    "multi_cpu": ({"distributed_type": "MULTI_CPU", "num_processes": 2, "use_cpu": True}, []),
    "multi_gpu": ({"distributed_type": "MULTI_GPU", "num_processes": 2, "gpu_ids": "all"}, []),
    "multi_gpu_flags_win": ({"distributed_type": "MULTI_GPU", "num_processes": 2, "mixed_precision": "fp16"},
                            ["--num_processes", "4", "--mixed_precision", "bf16"]),
    "two_machines": ({"distributed_type": "MULTI_GPU", "num_processes": 4, "num_machines": 2, "machine_rank": 1,
                      "main_process_ip": "10.0.0.1", "main_process_port": 29600, "same_network": True}, []),
    "deepspeed_defaults": ({"distributed_type": "DEEPSPEED", "num_processes": 2, "deepspeed_config": {}}, []),
    "deepspeed_zero3_offload": ({"distributed_type": "DEEPSPEED", "num_processes": 2, "mixed_precision": "bf16",
                                 "deepspeed_config": DS_ZERO3}, []),
    "deepspeed_zero1_flags": ({"distributed_type": "DEEPSPEED", "num_processes": 2,
                               "deepspeed_config": {"zero_stage": 2}},
                              ["--zero_stage", "1", "--gradient_accumulation_steps", "2", "--gradient_clipping", "2"]),
    "deepspeed_file_then_multi_gpu": ({"distributed_type": "DEEPSPEED", "num_processes": 2,
                                       "deepspeed_config": DS_ZERO3}, ["--multi_gpu"]),
    "fsdp_v1": ({"distributed_type": "FSDP", "num_processes": 2, "fsdp_config": FSDP_V1}, []),
    "fsdp_v2": ({"distributed_type": "FSDP", "num_processes": 2, "mixed_precision": "bf16",
                 "fsdp_config": FSDP_V2}, []),
    "fsdp_size_wrap": ({"distributed_type": "FSDP", "num_processes": 2,
                        "fsdp_config": {"fsdp_version": 1, "fsdp_auto_wrap_policy": "SIZE_BASED_WRAP",
                                        "fsdp_min_num_params": 2000, "fsdp_sharding_strategy": "FULL_SHARD"}}, []),
    "fsdp_file_then_deepspeed": ({"distributed_type": "FSDP", "num_processes": 2, "fsdp_config": FSDP_V2},
                                 ["--use_deepspeed", "--zero_stage", "3"]),
    "dynamo": ({"distributed_type": "MULTI_GPU", "num_processes": 2, "dynamo_config": DYNAMO}, []),
    "flags_deepspeed": (None, ["--use_deepspeed", "--num_processes", "2"]),
    "flags_deepspeed_full": (None, ["--use_deepspeed", "--num_processes", "2", "--zero_stage", "3",
                                    "--offload_optimizer_device", "cpu", "--offload_param_device", "cpu",
                                    "--gradient_accumulation_steps", "2", "--gradient_clipping", "1.5",
                                    "--zero3_init_flag", "true", "--mixed_precision", "fp16"]),
    "flags_fsdp_v2": (None, ["--use_fsdp", "--num_processes", "2", "--fsdp_version", "2",
                             "--fsdp_reshard_after_forward", "false", "--fsdp_offload_params", "true",
                             "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
                             "--fsdp_transformer_layer_cls_to_wrap", "Block", "--fsdp_activation_checkpointing",
                             "true", "--fsdp_state_dict_type", "FULL_STATE_DICT"]),
    "flags_fsdp_v1": (None, ["--use-fsdp", "--num-processes", "2", "--fsdp-sharding-strategy", "NO_SHARD"]),
    "flags_multi_gpu": (None, ["--multi_gpu", "--num_processes", "2", "--mixed_precision", "fp16",
                               "--dynamo_backend", "eager", "--dynamo_mode", "reduce-overhead",
                               "--dynamo_use_fullgraph"]),
}


def _cluster_config(path: str, arguments: dict[str, Any]) -> str:
    base = {"compute_environment": "LOCAL_MACHINE", "mixed_precision": "no", "use_cpu": False, "debug": False}
    ClusterConfig(**{**base, **arguments}).to_yaml_file(path)
    return path


def _wrap(policy: Any, classes: Any, min_params: Any) -> tuple[Any, ...]:
    name = getattr(policy, "__name__", policy)
    if name is None:
        return ("root only",)
    if "transformer" in str(name):
        return ("classes", tuple(classes))
    return ("size", min_params)


def accelerate_resolution(path: str | None, flags: list[str], monkeypatch: pytest.MonkeyPatch, tmp: str) -> dict:
    """What `accelerate launch` makes of the file and flags: the launch arguments after its
    checks, the environment its launcher hands the workers, and its plugins built under it."""
    import accelerate.commands.launch as accelerate_launch
    from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin, TorchDynamoPlugin
    from accelerate.utils import launch as launchers

    monkeypatch.setattr(accelerate_launch, "default_config_file", os.path.join(tmp, "absent.yaml"))
    args = accelerate_launch.launch_command_parser().parse_args(
        [*(["--config_file", path] if path else []), *flags, "train.py"])
    args, defaults, _ = accelerate_launch._validate_launch_command(args)
    before = dict(os.environ)
    if args.use_deepspeed and not args.cpu:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config) if defaults else ""
        _, env = launchers.prepare_deepspeed_cmd_env(args)
        world = int(args.nproc_per_node) * int(args.num_machines)
    elif (args.use_fsdp or args.multi_gpu) and not args.cpu:
        env = launchers.prepare_multi_gpu_env(args)
        world = int(args.nproc_per_node) * int(args.num_machines)
    else:
        _, env = launchers.prepare_simple_launcher_cmd_env(args)
        # MULTI_CPU: Accelerate's launcher starts one process and expects mpirun (its mpirun_hostfile, or the user)
        # to start the others; surge starts them itself.
        multi_cpu = defaults is not None and defaults.distributed_type.value == "MULTI_CPU"
        world = int(args.num_processes) if multi_cpu else 1
    env = {k: v for k, v in env.items() if before.get(k) != v}
    result: dict[str, Any] = {"world_size": world, "machines": int(args.num_machines),
                              "mixed_precision": env["ACCELERATE_MIXED_PRECISION"], "family": "none",
                              "accumulation": 1, "clipping": None}
    with monkeypatch.context() as m:
        for key, value in env.items():
            m.setenv(key, value)
        if env.get("ACCELERATE_USE_DEEPSPEED") == "true":
            ds = DeepSpeedPlugin()
            clip = ds.gradient_clipping
            result.update(family="deepspeed", zero_stage=ds.zero_stage,
                          offload_optimizer=ds.offload_optimizer_device == "cpu",
                          offload_params=ds.offload_param_device == "cpu",
                          accumulation=ds.gradient_accumulation_steps if ds.gradient_accumulation_steps != "auto"
                          else 1,
                          clipping=1.0 if clip == "auto" else (float(clip) if clip else None))
        if env.get("ACCELERATE_USE_FSDP") == "true":
            import accelerate.utils.dataclasses as accelerate_dataclasses
            import torch

            # FSDP1's sync_module_states asks for the current accelerator device; this machine may have none.
            m.setattr(accelerate_dataclasses, "is_cuda_available", lambda: True)
            m.setattr(torch.cuda, "current_device", lambda: 0)
            fsdp = FullyShardedDataParallelPlugin()
            if fsdp.fsdp_version == 2:
                reshard = fsdp.reshard_after_forward
            else:
                reshard = fsdp.sharding_strategy.name in ("FULL_SHARD", "HYBRID_SHARD")
            offload = fsdp.cpu_offload
            result.update(family="fsdp", sharded=fsdp.fsdp_version == 2 or fsdp.sharding_strategy.name != "NO_SHARD",
                          reshard_after_forward=reshard,
                          offload_params=offload is not None and getattr(offload, "offload_params", True),
                          wrap=_wrap(fsdp.auto_wrap_policy, fsdp.transformer_cls_names_to_wrap, fsdp.min_num_params),
                          activation_checkpointing=bool(fsdp.activation_checkpointing),
                          full_state_dict=fsdp.state_dict_type.name == "FULL_STATE_DICT")
        dynamo = TorchDynamoPlugin()
        backend = str(dynamo.backend.value).lower()
        result["dynamo"] = None if backend == "no" else (backend, dynamo.mode or "default", bool(dynamo.fullgraph),
                                                          bool(dynamo.dynamic), bool(dynamo.use_regional_compilation))
    return result


def surge_resolution(path: str | None, flags: list[str], monkeypatch: pytest.MonkeyPatch, tmp: str) -> dict:
    """What `surge launch` makes of the same: its resolved config, handed to a worker of
    that job (rank 0), settled into the worker's plan."""
    from surge.config.resolve import resolve_plan

    args = build_parser().parse_args(["launch", *(["--config_file", path] if path else []), *flags, "train.py"])
    config, values = resolve_config(args)
    handoff = os.path.join(tmp, "handoff.yaml")
    write_config(values, handoff)
    with monkeypatch.context() as m:
        for name, value in {"SURGE_CONFIG_FILE": handoff, "RANK": "0", "WORLD_SIZE": str(config.num_processes),
                            "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": str(config.processes_per_machine),
                            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999"}.items():
            m.setenv(name, value)
        plan = resolve_plan(**DEFAULTS)[0]
    spec = plan.strategy
    result: dict[str, Any] = {"world_size": plan.topology.world_size, "machines": config.num_machines,
                              "mixed_precision": plan.config.mixed_precision, "family": spec.family,
                              "accumulation": plan.config.gradient_accumulation_steps,
                              "clipping": plan.max_grad_norm}
    if spec.family == "deepspeed":
        result.update(zero_stage=spec.shard_degree, offload_optimizer=spec.offload_optimizer,
                      offload_params=spec.offload_params)
        if spec.shard_degree == 2 and plan.deepspeed_plugin is not None and plan.deepspeed_plugin.zero_stage == 1:
            result["zero_stage"] = 1  # ZeRO-1 with an offloaded optimizer runs as ZeRO-2 (same numbers)
    if spec.family == "fsdp":
        wrap = (("root only",) if spec.layer_classes == () else ("classes", spec.layer_classes)
                if spec.layer_classes else ("size", spec.min_num_params))
        result.update(sharded=spec.shard_degree > 0, reshard_after_forward=spec.shard_degree in (0, 3),
                      offload_params=spec.offload_params, wrap=wrap,
                      activation_checkpointing=spec.activation_checkpointing, full_state_dict=spec.full_state_dict)
        if spec.shard_degree == 0:
            result["reshard_after_forward"] = False  # NO_SHARD: nothing to reshard (Accelerate: not FULL_SHARD)
    d = plan.dynamo
    result["dynamo"] = None if d is None else (d.backend, d.mode or "default", d.fullgraph, bool(d.dynamic),
                                                d.use_regional_compilation)
    return result


@pytest.fixture()
def isolated(monkeypatch, tmp_path):
    """No user config of either library, and no launcher variables, leak into a case."""
    for name in ("SURGE_CONFIG_FILE", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                 "MASTER_PORT", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


@pytest.mark.parametrize("case", list(CASES))
def test_surge_resolves_an_accelerate_launch_as_accelerate_does(case, isolated, monkeypatch):
    arguments, flags = CASES[case]
    path = _cluster_config(str(isolated / "accelerate.yaml"), arguments) if arguments is not None else None
    theirs = accelerate_resolution(path, flags, monkeypatch, str(isolated))
    ours = surge_resolution(path, flags, monkeypatch, str(isolated))
    assert ours == theirs, f"{case}:\n surge      {ours}\n accelerate {theirs}"


def test_a_json_config_and_a_hand_edited_yaml_read_like_the_written_one(isolated, monkeypatch):
    written = _cluster_config(str(isolated / "written.yaml"),
                              {"distributed_type": "DEEPSPEED", "num_processes": 2, "deepspeed_config": DS_ZERO3,
                               "mixed_precision": "bf16"})
    as_json = isolated / "config.json"
    ClusterConfig(compute_environment="LOCAL_MACHINE", distributed_type="DEEPSPEED", mixed_precision="bf16",
                  use_cpu=False, debug=False, num_processes=2, deepspeed_config=dict(DS_ZERO3)).to_json_file(
        str(as_json))
    by_hand = isolated / "by_hand.yaml"
    by_hand.write_text(  # what people keep in their repositories: a few keys, YAML 1.1's bare no/yes, lower case
        "distributed_type: DEEPSPEED\nnum_processes: 2\nmixed_precision: BF16\n"
        "deepspeed_config:\n  zero_stage: 3\n  offload_optimizer_device: cpu\n  offload_param_device: cpu\n"
        "  gradient_accumulation_steps: 4\n  gradient_clipping: 0.5\n  zero3_init_flag: yes\n"
        "  zero3_save_16bit_model: true\n")
    expected = surge_resolution(written, [], monkeypatch, str(isolated))
    assert surge_resolution(str(as_json), [], monkeypatch, str(isolated)) == expected
    assert surge_resolution(str(by_hand), [], monkeypatch, str(isolated)) == expected
    assert read_values(str(by_hand))["zero3_init_flag"] is True


def test_surge_launch_finds_accelerates_default_config_and_says_so(isolated, monkeypatch, capsys):
    default = isolated / "hf" / "accelerate" / "default_config.yaml"
    default.parent.mkdir(parents=True)
    _cluster_config(str(default), {"distributed_type": "FSDP", "num_processes": 2, "fsdp_config": FSDP_V2})
    config, _ = resolve_config(build_parser().parse_args(["launch", "train.py"]))
    assert config.use_fsdp and config.num_processes == 2 and config.fsdp_offload_params is True
    assert f"using Accelerate's {default}" in capsys.readouterr().err
    # Accelerate's rule: --cpu does not read its default config.
    config, _ = resolve_config(build_parser().parse_args(["launch", "--cpu", "train.py"]))
    assert not config.use_fsdp and config.num_processes == 1
    # A surge config, when there is one, comes first.
    write_config({"num_processes": 3}, str(isolated / "cache" / "surge" / "default_config.yaml"))
    config, _ = resolve_config(build_parser().parse_args(["launch", "train.py"]))
    assert config.num_processes == 3 and not config.use_fsdp


@pytest.mark.parametrize(("arguments", "message"), [
    ({"distributed_type": "XLA", "num_processes": 8}, "TPUs"),
    ({"distributed_type": "MEGATRON_LM", "num_processes": 2}, "Megatron-LM"),
    ({"distributed_type": "MULTI_XPU", "num_processes": 2}, "another accelerator"),
    ({"distributed_type": "MULTI_CPU", "num_processes": 2, "mpirun_config": {"mpirun_hostfile": "~/hosts"}}, "mpirun"),
    ({"distributed_type": "DEEPSPEED", "num_processes": 2, "deepspeed_config": {"zero_stage": 2},
      "parallelism_config": {"parallelism_config_tp_size": 2}}, "tp_size=2"),
    ({"distributed_type": "DEEPSPEED", "num_processes": 4, "num_machines": 2, "main_process_ip": "10.0.0.1",
      "deepspeed_config": {"zero_stage": 2, "deepspeed_multinode_launcher": "pdsh"}}, "one launcher per machine"),
    ({"distributed_type": "DEEPSPEED", "num_processes": 2, "deepspeed_config": {"offload_param_device": "nvme",
                                                                              "zero_stage": 3}}, "NVMe"),
    ({"distributed_type": "MULTI_GPU", "num_processes": 2, "mixed_precision": "fp8",
      "fp8_config": {"backend": "TE"}}, "torchao"),
    ({"distributed_type": "MULTI_GPU"}, "num_processes"),
])
def test_settings_surge_cannot_honour_are_one_clear_error(arguments, message, isolated):
    path = _cluster_config(str(isolated / "accelerate.yaml"), arguments)
    with pytest.raises(ConfigError, match=message):
        resolve_config(build_parser().parse_args(["launch", "--config_file", path, "train.py"]))


def test_tpu_sagemaker_and_megatron_settings_are_accepted_and_named(isolated, capsys):
    path = _cluster_config(str(isolated / "accelerate.yaml"),
                           {"distributed_type": "MULTI_GPU", "num_processes": 2, "downcast_bf16": True,
                            "main_training_function": "train", "megatron_lm_config": {"megatron_lm_tp_degree": 2}})
    config, _ = resolve_config(build_parser().parse_args(
        ["launch", "--config_file", path, "--tpu_use_sudo", "--aws_access_key_id", "x", "--megatron_lm_pp_degree",
         "2", "--fp8_margin", "1", "train.py"]))
    assert config.num_processes == 2
    err = capsys.readouterr().err
    assert "downcast_bf16, main_training_function only apply to TPU launches" in err
    assert "--tpu_use_sudo only apply to TPU launches" in err and "--aws_access_key_id only apply to SageMaker" in err
    assert "--megatron_lm_pp_degree only apply to Megatron-LM" in err and "Transformer Engine" in err
    for flag, message in (("--tpu", "TPUs"), ("--use_megatron_lm", "Megatron-LM"),
                          ("--mpirun_hostfile=h", "mpirun")):
        with pytest.raises(ConfigError, match=message):
            resolve_config(build_parser().parse_args(["launch", "--config_file", path, flag, "train.py"]))


def test_sagemaker_and_unknown_keys_are_refused_as_accelerate_refuses_them(isolated):
    sagemaker = isolated / "sm.yaml"
    sagemaker.write_text(json.dumps({"compute_environment": "AMAZON_SAGEMAKER", "distributed_type": "DATA_PARALLEL",
                                     "ec2_instance_type": "ml.p3.2xlarge", "iam_role_name": "r"}))
    with pytest.raises(ConfigError, match="SageMaker"):
        read_values(str(sagemaker))
    typo = isolated / "typo.yaml"
    typo.write_text("distributed_type: MULTI_GPU\nnum_processes: 2\nnum_procesess: 4\n")
    with pytest.raises(ConfigError, match=r"unknown keys.*num_procesess"):
        read_values(str(typo))


def test_strategy_flags_are_exclusive_and_multi_gpu_needs_two_processes(isolated):
    for flags, message in ((["--cpu", "--use_fsdp"], "contradict"), (["--use_deepspeed", "--use_fsdp"], "contradict"),
                           (["--multi_gpu", "--num_processes", "1"], "at least 2")):
        with pytest.raises(ConfigError, match=message):
            resolve_config(build_parser().parse_args(["launch", *flags, "train.py"]))


@pytest.mark.parametrize("values", [
    {"num_processes": 1},
    {"num_processes": 2, "use_cpu": True, "mixed_precision": "bf16"},
    {"machine_type": "multi_gpu", "num_processes": 4, "gpu_ids": "all", "mixed_precision": "fp16"},
    {"num_processes": 2, "zero_stage": 3, "offload_optimizer_device": "cpu", "offload_param_device": "cpu",
     "gradient_accumulation_steps": 4, "gradient_clipping": 0.5},
    {"num_processes": 2, "use_deepspeed": True},
    {"num_processes": 2, "use_fsdp": True, "fsdp_version": 2, "fsdp_reshard_after_forward": "false",
     "fsdp_offload_params": True, "dynamo_backend": "eager", "dynamo_mode": "reduce-overhead"},
])
def test_surge_config_writes_accelerates_format_and_both_launchers_read_it_alike(values, isolated, monkeypatch):
    from accelerate.commands.config.config_args import load_config_from_file

    from surge.config.accelerate_file import to_accelerate

    native = str(isolated / "surge.yaml")
    write_config(values, native)
    converted, lost = to_accelerate(values)
    assert lost == []
    theirs = str(isolated / "accelerate.yaml")
    write_config(converted, theirs)
    load_config_from_file(theirs)  # Accelerate accepts every key
    expected = surge_resolution(native, [], monkeypatch, str(isolated))
    if values.get("zero_stage") and not values.get("use_deepspeed"):
        expected["clipping"] = 0.5  # the native form clips only where asked: here it was
    assert surge_resolution(theirs, [], monkeypatch, str(isolated)) == expected
    assert accelerate_resolution(theirs, [], monkeypatch, str(isolated)) == expected


def test_surge_config_names_what_accelerates_format_cannot_hold():
    from surge.config.accelerate_file import to_accelerate

    _, lost = to_accelerate({"num_processes": 2, "gradient_accumulation_steps": 4, "nonfinite": "skip",
                             "max_restarts": 2})
    assert lost == ["nonfinite", "max_restarts", "gradient_accumulation_steps"]


def test_accelerates_format_holds_parallelism_only_when_asked():
    """Sizes of 1 and an unset cp_comm_strategy write no parallelism_config (Accelerate would
    turn on its parallelism config for a plain DDP launch); the strategy is written with cp."""
    from surge.config.accelerate_file import to_accelerate

    assert "parallelism_config" not in to_accelerate({"num_processes": 2})[0]
    converted, _ = to_accelerate({"num_processes": 2, "parallelism_config_cp_size": 2,
                                  "parallelism_config_cp_comm_strategy": "alltoall"})
    assert converted["parallelism_config"] == {"parallelism_config_cp_size": 2,
                                               "parallelism_config_cp_comm_strategy": "alltoall"}


def test_surge_config_default_in_accelerates_format_goes_where_accelerate_looks(isolated, capsys):
    from accelerate.commands.config.config_args import load_config_from_file

    from surge.commands.main import main

    assert main(["config", "--default", "--format", "accelerate"]) == 0
    written = isolated / "hf" / "accelerate" / "default_config.yaml"
    assert f"wrote {written}" in capsys.readouterr().out
    assert load_config_from_file(str(written)).distributed_type.value in ("NO", "MULTI_GPU")
    assert main(["config", "--default", "--format", "accelerate"]) == 1  # kept: --force replaces it


def test_every_accelerate_launch_flag_is_a_surge_launch_flag(isolated, capsys):
    """Each option of Accelerate's launch parser, in each of its spellings, parses under surge
    launch and resolves (or is refused with one error naming it, for TPU / Megatron-LM / mpirun)."""
    import argparse

    import accelerate.commands.launch as accelerate_launch

    values = {"mixed_precision": "bf16", "dynamo_backend": "inductor", "dynamo_mode": "default", "tee": "1",
              "rdzv_backend": "c10d", "rdzv_conf": "", "zero_stage": "2", "offload_optimizer_device": "cpu",
              "offload_param_device": "none", "fsdp_version": "2", "fsdp_sharding_strategy": "FULL_SHARD",
              "fsdp_auto_wrap_policy": "SIZE_BASED_WRAP", "fsdp_backward_prefetch": "BACKWARD_PRE",
              "fsdp_state_dict_type": "FULL_STATE_DICT", "fsdp_reshard_after_forward": "true", "fp8_backend": "AO",
              "deepspeed_multinode_launcher": "standard", "gpu_ids": "all", "main_process_ip": "127.0.0.1",
              "log_dir": str(isolated), "config_file": None, "deepspeed_config_file": str(isolated / "ds.json")}
    (isolated / "ds.json").write_text('{"zero_optimization": {"stage": 2}}')
    refused = {"tpu": "TPUs", "tpu_use_cluster": "TPU pods", "use_megatron_lm": "Megatron-LM",
               "mpirun_hostfile": "mpirun"}
    parser = accelerate_launch.launch_command_parser()
    seen = 0
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction) or action.dest == "config_file":
            continue
        for option in action.option_strings:
            if action.nargs == 0:
                argv = [option]
            else:
                text = values.get(action.dest, "true" if isinstance(action.default, str)
                                  and action.default.lower() in ("true", "false") else "1")
                argv = [option, text]
            args = build_parser().parse_args(["launch", *argv, "train.py"])  # parses: no SystemExit
            assert args.script == "train.py", option
            must_refuse = action.dest in refused and refused[action.dest] and not option.startswith("--no")
            try:
                resolve_config(args)
            except ConfigError as exc:
                assert action.dest in refused or option.lstrip("-").replace("-", "_") in str(exc) \
                    or "contradict" in str(exc), f"{option}: {exc}"
                if must_refuse:
                    assert refused[action.dest] in str(exc), f"{option}: {exc}"
            else:
                assert not must_refuse, f"{option} was accepted"
            seen += 1
    assert seen > 150  # every spelling of every flag
    capsys.readouterr()


def test_older_files_and_unused_section_keys_read_as_accelerate_reads_them():
    from surge.config.accelerate_file import from_accelerate

    # Accelerate's own upgrades: `fp16: true` and a top-level `dynamo_backend`.
    old = from_accelerate({"distributed_type": "MULTI_GPU", "num_processes": 2, "fp16": True,
                           "dynamo_backend": "INDUCTOR"}, "old.yaml")
    assert old.values["mixed_precision"] == "fp16" and old.values["dynamo_backend"] == "inductor"
    assert old.notes == []
    # What `accelerate config` writes for a TPU-less job is not a note; a key Accelerate never reads is.
    quiet = from_accelerate({"distributed_type": "FSDP", "num_processes": 2, "downcast_bf16": "no",
                             "tpu_env": [], "main_training_function": "main",
                             "fsdp_config": {"fsdp_version": 2, "fsdp_typo": 1}, "deepspeed_config": {"x": 1}},
                            "cfg.yaml")
    assert quiet.notes == ["fsdp_config keys fsdp_typo are not read by Accelerate's launcher or by surge; ignored"]
    assert "zero_stage" not in quiet.values and quiet.values["fsdp_version"] == 2  # the unselected section is unused
    # keys inside fsdp_config may omit the prefix, as Accelerate allows
    short = from_accelerate({"distributed_type": "FSDP", "num_processes": 2,
                             "fsdp_config": {"version": 2, "offload_params": "true"}}, "cfg.yaml")
    assert short.values["fsdp_version"] == 2 and short.values["fsdp_offload_params"] is True


def test_tensor_parallel_sizes_go_through_to_the_worker(isolated):
    from surge.config.resolve import settle_parallelism

    config, _ = resolve_config(build_parser().parse_args(
        ["launch", "--num_processes", "4", "--parallelism_config_dp_shard_size", "2",
         "--parallelism_config_tp_size", "2", "train.py"]))
    assert config.use_fsdp and config.parallelism_config_tp_size == 2
    pc = settle_parallelism(None, {k: getattr(config, k) for k in ("parallelism_config_dp_shard_size",
                                                                   "parallelism_config_tp_size")}, 4)
    assert pc is not None and (pc.dp_shard_size, pc.tp_size) == (2, 2)
    # Ulysses: sp alone keeps the strategy (DDP here); tp x sp shards over sp with FSDP2.
    sp, _ = resolve_config(build_parser().parse_args(
        ["launch", "--num_processes", "2", "--parallelism_config_sp_size", "2", "train.py"]))
    assert not sp.use_fsdp and sp.parallelism_config_sp_size == 2
    tp_sp, _ = resolve_config(build_parser().parse_args(
        ["launch", "--num_processes", "4", "--parallelism_config_sp_size", "2", "--parallelism_config_tp_size", "2",
         "train.py"]))
    assert tp_sp.use_fsdp
    alone_free, _ = resolve_config(build_parser().parse_args(["launch", "--num_processes", "2", "train.py"]))
    cp, _ = resolve_config(build_parser().parse_args(
        ["launch", "--num_processes", "2", "--parallelism_config_cp_size", "2", "--parallelism_config_cp_comm_strategy",
         "alltoall", "train.py"]))
    assert not cp.use_fsdp and cp.parallelism_config_cp_comm_strategy == "alltoall"  # ring attention under DDP
    from surge.launch.runner import worker_environment

    env = worker_environment(cp, {})
    assert env["PARALLELISM_CONFIG_CP_COMM_STRATEGY"] == "alltoall"
    assert (env["PARALLELISM_CONFIG_CP_SIZE"], env["PARALLELISM_CONFIG_DP_SHARD_SIZE"]) == ("2", "1")  # as Accelerate
    assert not any(k.startswith("PARALLELISM_CONFIG") for k in worker_environment(alone_free, {}))
    # A launch from inside a cp worker: the outer launch's sizes are not this job's; a user's own export is
    # kept (Accelerate keeps it too).
    nested = worker_environment(alone_free, env)
    assert not any(k.startswith("PARALLELISM_CONFIG") for k in nested) and "SURGE_PARALLELISM_FROM_LAUNCH" not in nested
    assert worker_environment(alone_free, {"PARALLELISM_CONFIG_CP_SIZE": "2"})["PARALLELISM_CONFIG_CP_SIZE"] == "2"
    tp_cp, _ = resolve_config(build_parser().parse_args(
        ["launch", "--num_processes", "4", "--parallelism_config_cp_size", "2", "--parallelism_config_tp_size", "2",
         "train.py"]))
    assert tp_cp.use_fsdp  # FSDP2 shards over the cp ranks
    alone, _ = resolve_config(build_parser().parse_args(
        ["launch", "--num_processes", "4", "--parallelism_config_tp_size", "4", "train.py"]))
    assert not alone.use_fsdp and alone.parallelism_config_tp_size == 4  # tensor parallelism alone
    for flags, words in ((["--parallelism_config_tp_size", "4", "--use_deepspeed"], "composes with FSDP2"),
                         (["--parallelism_config_cp_size", "2", "--parallelism_config_dp_replicate_size", "2"],
                          r"cp_size=2 cannot be composed with pure data parallelism"),
                         (["--parallelism_config_tp_size", "2", "--parallelism_config_dp_replicate_size", "2"],
                          "composes with FSDP2"),
                         (["--parallelism_config_sp_size", "2"], r"sp_size=2 = 2 must equal num_processes=4"),
                         (["--parallelism_config_sp_size", "2", "--parallelism_config_cp_size", "2"],
                          "cp_size=2 and sp_size=2: context and sequence parallelism are mutually exclusive"),
                         (["--parallelism_config_cp_size", "2", "--parallelism_config_tp_size", "2", "--use_deepspeed"],
                          "dp_shard_size, cp_size or sp_size > 1")):
        with pytest.raises(ConfigError, match=words):
            resolve_config(build_parser().parse_args(["launch", "--num_processes", "4", *flags, "train.py"]))
