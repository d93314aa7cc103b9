"""Accelerate's config files (``accelerate config`` output, YAML or JSON), read as surge values.

``surge launch --config_file cfg.yaml`` takes either format. An Accelerate file is
recognised by its ``distributed_type`` / ``compute_environment`` keys and read the way
``accelerate launch`` reads it: ``distributed_type`` selects the strategy (DEEPSPEED ->
``use_deepspeed``, FSDP -> ``use_fsdp``, MULTI_GPU/MULTI_CPU -> several processes), the
sections of the selected strategy are flattened into the flag names (``fsdp_config``'s
keys gain ``fsdp_``, ``dynamo_config``'s ``dynamo_``, ``fp8_config``'s ``fp8_``), and the
sections of strategies not selected are ignored, as Accelerate ignores them. The result
is a mapping of surge keys (config/schema.py), so everything after this point knows one
format. Settings only TPUs, SageMaker or Megatron-LM use are accepted; switched on, the
ones that would change what runs are one error naming the setting, the others a note.

[Note: the config file has no torch] holds here too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from surge.config.schema import FIELDS, ConfigError

# distributed_type -> (surge's strategy switch, several processes)
_DISTRIBUTED = {
    "NO": (None, False), "MULTI_CPU": (None, True), "MULTI_GPU": (None, True),
    "DEEPSPEED": ("use_deepspeed", True), "FSDP": ("use_fsdp", True),
}
_OTHER_ACCELERATORS = ("MULTI_NPU", "MULTI_MLU", "MULTI_SDAA", "MULTI_MUSA", "MULTI_XPU", "MULTI_HPU", "MULTI_NEURON")
# Keys of Accelerate's ClusterConfig that only TPU launches read, with their defaults.
TPU_KEYS = {"downcast_bf16": False, "main_training_function": "main", "tpu_name": None, "tpu_zone": None,
            "tpu_use_cluster": False, "tpu_use_sudo": False, "command_file": None, "commands": None,
            "tpu_vm": None, "tpu_env": None}
_TOP_KEYS = {"compute_environment", "distributed_type", "mixed_precision", "use_cpu", "debug", "num_processes",
             "machine_rank", "num_machines", "gpu_ids", "main_process_ip", "main_process_port", "rdzv_backend",
             "same_network", "enable_cpu_affinity", "fp8_config", "deepspeed_config", "fsdp_config",
             "parallelism_config", "megatron_lm_config", "mpirun_config", "dynamo_config", *TPU_KEYS}
_SAGEMAKER_KEYS = {"ec2_instance_type", "iam_role_name", "image_uri", "profile", "region", "base_job_name",
                   "pytorch_version", "transformers_version", "py_version", "sagemaker_inputs_file",
                   "sagemaker_metrics_file", "additional_args"}
# fp8 settings only Transformer Engine / MS-AMP read (Accelerate ignores them with torchao).
_FP8_TE_ONLY = ("fp8_use_autocast_during_eval", "fp8_margin", "fp8_interval", "fp8_format",
                "fp8_amax_history_length", "fp8_amax_history_len", "fp8_amax_compute_algorithm",
                "fp8_amax_compute_algo", "fp8_override_linear_precision", "fp8_opt_level")
# parallelism_config settings that only matter once cp/sp sizes are above 1 (issue 20's N-D parallelism).
_PARALLEL_EXTRAS = ("parallelism_config_cp_backend", "parallelism_config_sp_backend",
                    "parallelism_config_sp_seq_length",
                    "parallelism_config_sp_seq_length_is_variable", "parallelism_config_sp_attn_implementation")


@dataclass
class AccelerateFile:
    """An Accelerate config file read as surge values."""

    values: dict[str, Any]
    """surge keys (config/schema.py)."""
    notes: list[str] = field(default_factory=list)
    """Settings accepted but without effect here, one line each (the launcher prints them)."""
    needs_num_processes: bool = False
    """The file leaves num_processes unset (-1): the launch command must give it, as in Accelerate."""


def accelerate_default_config_path() -> str:
    """Where ``accelerate config`` writes and ``accelerate launch`` looks:
    ``$HF_HOME/accelerate/default_config.yaml``, HF_HOME defaulting to
    ``$XDG_CACHE_HOME/huggingface`` (``~/.cache/huggingface``)."""
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return os.path.join(os.path.expanduser(home), "accelerate", "default_config.yaml")


def is_accelerate_format(data: dict[str, Any]) -> bool:
    """Whether a config mapping is in Accelerate's format rather than surge's."""
    return "distributed_type" in data or "compute_environment" in data


def from_accelerate(data: dict[str, Any], source: str) -> AccelerateFile:
    """Read an Accelerate config mapping (as ``accelerate launch`` reads it) into surge values.

    Raises:
        ConfigError: a key Accelerate would not accept, or a setting that is switched on
            and that surge cannot honour (TPU, SageMaker, Megatron-LM, mpirun, other
            accelerator types); the message names it and the fix.
    """
    data = dict(data)
    where = f"Accelerate config file {source!r}"
    environment = str(data.get("compute_environment") or "LOCAL_MACHINE").upper()
    if environment == "AMAZON_SAGEMAKER":
        raise ConfigError(f"{where}: compute_environment AMAZON_SAGEMAKER starts a SageMaker job, which surge does "
                          "not do; run `surge launch` on the machines themselves with compute_environment: "
                          "LOCAL_MACHINE")
    if environment != "LOCAL_MACHINE":
        raise ConfigError(f"{where}: compute_environment={data['compute_environment']!r} is not one of "
                          "'LOCAL_MACHINE', 'AMAZON_SAGEMAKER'")
    unknown = sorted(set(data) - _TOP_KEYS - _SAGEMAKER_KEYS - {"fp16", "dynamo_backend"})
    if unknown:
        raise ConfigError(f"{where} has unknown keys {unknown} (Accelerate refuses them too); remove them or check "
                          "their spelling")
    if "distributed_type" not in data:
        raise ConfigError(f"{where} has no distributed_type; add one of {', '.join(_DISTRIBUTED)}")
    # Accelerate's own upgrades of older files.
    if "mixed_precision" not in data and data.pop("fp16", False):
        data["mixed_precision"] = "fp16"
    data.pop("fp16", None)
    if "dynamo_backend" in data:
        backend = data.pop("dynamo_backend")
        data["dynamo_config"] = {} if str(backend).upper() == "NO" else {"dynamo_backend": backend}
    kind = str(data["distributed_type"]).upper()
    if kind in ("XLA", "TPU"):
        raise ConfigError(f"{where}: distributed_type {kind} runs on TPUs, which surge does not support; use "
                          "MULTI_GPU, MULTI_CPU, DEEPSPEED, FSDP or NO")
    if kind == "MEGATRON_LM":
        raise ConfigError(f"{where}: distributed_type MEGATRON_LM needs Megatron-LM, which surge does not drive; use "
                          "FSDP or DEEPSPEED (tensor parallelism is planned through parallelism_config)")
    if kind in _OTHER_ACCELERATORS:
        raise ConfigError(f"{where}: distributed_type {kind} is for another accelerator; surge runs on CUDA GPUs and "
                          "CPUs: use MULTI_GPU or MULTI_CPU")
    if kind not in _DISTRIBUTED:
        raise ConfigError(f"{where}: distributed_type={data['distributed_type']!r} is not one of "
                          f"{', '.join(_DISTRIBUTED)}")
    switch, several = _DISTRIBUTED[kind]
    result = AccelerateFile(values={})
    values = result.values
    _top_level(data, kind, several, values, result)
    if switch is not None:
        values[switch] = True
    sections = {"deepspeed_config": ("", kind == "DEEPSPEED"), "fsdp_config": ("fsdp_", kind == "FSDP"),
                "dynamo_config": ("dynamo_", True), "fp8_config": ("fp8_", True),
                "parallelism_config": ("parallelism_config_", True)}
    for name, (prefix, used) in sections.items():
        section = data.get(name) or {}
        if not isinstance(section, dict):
            raise ConfigError(f"{where}: {name} must be a mapping of keys to values, not {section!r}")
        if used:
            _section(name, prefix, section, values, result)
    mpirun = data.get("mpirun_config") or {}
    if isinstance(mpirun, dict) and mpirun.get("mpirun_hostfile"):
        raise ConfigError(f"{where}: mpirun_config.mpirun_hostfile asks Accelerate to start the processes with "
                          "mpirun; surge starts them itself: remove mpirun_config and run `surge launch` on each "
                          "machine (with --machine_rank)")
    tpu_on = [k for k, default in TPU_KEYS.items() if data.get(k) not in (None, default, [], "", "no")]
    if tpu_on:
        result.notes.append(f"{', '.join(tpu_on)} only apply to TPU launches; ignored")
    sagemaker = sorted(set(data) & _SAGEMAKER_KEYS)
    if sagemaker:
        result.notes.append(f"{', '.join(sagemaker)} only apply to SageMaker launches; ignored")
    return result


def _top_level(data: dict[str, Any], kind: str, several: bool, values: dict[str, Any], result: AccelerateFile) -> None:
    for key in ("num_machines", "machine_rank", "main_process_ip", "main_process_port", "gpu_ids", "rdzv_backend",
                "same_network", "enable_cpu_affinity", "debug", "use_cpu"):
        if data.get(key) is not None:
            values[key] = normalise(key, data[key])
    precision = data.get("mixed_precision")
    values["mixed_precision"] = "no" if precision in (None, False) else str(precision).lower()
    processes = data.get("num_processes", 1 if kind == "NO" else -1)
    if processes == -1:
        result.needs_num_processes = True
    else:
        values["num_processes"] = processes
    machines = values.get("num_machines", 1)
    if kind == "MULTI_CPU":
        values["use_cpu"] = True
    if machines > 1:
        values["machine_type"] = "multi_node"
    elif values.get("use_cpu"):
        values["machine_type"] = "cpu"
    else:
        values["machine_type"] = "multi_gpu" if several else "single_gpu"


def _section(name: str, prefix: str, section: dict[str, Any], values: dict[str, Any], result: AccelerateFile) -> None:
    ignored = []
    for raw_key, value in section.items():
        key = str(raw_key)
        if prefix and not key.startswith(prefix) and not (prefix == "fp8_" and key.startswith("fp8")):
            key = prefix + key
        if (key in FIELDS and FIELDS[key].metadata["group"] not in ("main", "processes")) or key in (
                "gradient_accumulation_steps",):
            values[key] = normalise(key, value)
        elif key in _FP8_TE_ONLY or key in _PARALLEL_EXTRAS:
            continue  # read only by a backend or a size that is refused (or unused) below
        else:
            ignored.append(str(raw_key))
    if ignored:
        result.notes.append(f"{name} keys {', '.join(ignored)} are not read by Accelerate's launcher or by surge; "
                            "ignored")


def normalise(key: str, value: Any) -> Any:
    """A value as YAML or a command line gives it, in the type the schema wants: YAML 1.1
    reads ``no`` as false and ``0`` as a number; Accelerate writes some booleans as text."""
    kind = FIELDS[key].metadata["kind"] if key in FIELDS else None
    if kind == "str":
        if value is False and key in ("mixed_precision", "dynamo_backend"):
            return "no"
        if isinstance(value, bool) and key == "warnings":  # YAML 1.1 reads `warnings: off` as false
            return "on" if value else "off"
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, (int, float)):
            return str(value)
        if key == "dynamo_backend" and isinstance(value, str):
            return value.lower()
        if isinstance(value, str) and FIELDS[key].metadata.get("upper"):
            upper = value.strip().upper()
            return upper.lower() if upper in ("TRUE", "FALSE") else upper
    if kind == "bool" and isinstance(value, str) and value.strip().lower() in _TRUTH:
        return _TRUTH[value.strip().lower()]
    if kind in ("int", "float") and isinstance(value, str):
        try:
            return int(value) if kind == "int" else float(value)
        except ValueError:
            return value  # validation names it
    return value


_TRUTH = {"true": True, "yes": True, "1": True, "y": True, "on": True,
          "false": False, "no": False, "0": False, "n": False, "off": False}


# surge keys with no place in Accelerate's config format (it refuses unknown keys); `surge config
# --format accelerate` names them when they differ from the defaults.
_NO_PLACE = ("nonfinite", "warnings", "collective_timeout", "max_restarts", "monitor_interval", "quiet", "tee",
             "log_dir", "role", "rdzv_conf", "num_cpu_threads_per_process")


def to_accelerate(values: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A surge config (its set keys) in Accelerate's format, as ``accelerate config``
    writes it, and the names of settings that format has no place for.

    Reading the result back (:func:`from_accelerate`, or ``accelerate launch``) gives the
    same job, except for those settings."""
    v: dict[str, Any] = {name: f.default for name, f in FIELDS.items()} | values
    stage = v["zero_stage"] if v["zero_stage"] is not None else (2 if v["use_deepspeed"] else 0)
    several = v["num_processes"] > 1 or v["num_machines"] > 1
    if v["use_deepspeed"] or stage or v["offload_optimizer_device"] != "none" or v["deepspeed_config_file"]:
        kind = "DEEPSPEED"
    elif v["use_fsdp"] or v["fsdp_sharding_strategy"] is not None:
        kind = "FSDP"
    elif several:
        kind = "MULTI_CPU" if v["use_cpu"] else "MULTI_GPU"
    else:
        kind = "NO"
    out: dict[str, Any] = {"compute_environment": "LOCAL_MACHINE", "distributed_type": kind,
                           "mixed_precision": v["mixed_precision"], "use_cpu": v["use_cpu"], "debug": v["debug"],
                           "num_processes": v["num_processes"], "machine_rank": v["machine_rank"],
                           "num_machines": v["num_machines"], "rdzv_backend": v["rdzv_backend"],
                           "same_network": v["same_network"], "main_training_function": "main",
                           "enable_cpu_affinity": v["enable_cpu_affinity"], "downcast_bf16": "no",
                           "tpu_use_cluster": False, "tpu_use_sudo": False, "tpu_env": []}
    for key in ("gpu_ids", "main_process_ip", "main_process_port"):
        if v[key] is not None:
            out[key] = v[key]
    lost = [k for k in _NO_PLACE if k in values and values[k] != FIELDS[k].default]
    if kind == "DEEPSPEED":
        section = {k: v[k] for k in ("offload_optimizer_device", "offload_param_device", "gradient_clipping",
                                     "zero3_init_flag", "zero3_save_16bit_model", "deepspeed_config_file",
                                     "deepspeed_moe_layer_cls_names", "deepspeed_multinode_launcher",
                                     "deepspeed_hostfile", "deepspeed_inclusion_filter",
                                     "deepspeed_exclusion_filter", "offload_optimizer_nvme_path",
                                     "offload_param_nvme_path") if v[k] is not None}
        out["deepspeed_config"] = {"zero_stage": stage, "gradient_accumulation_steps":
                                   v["gradient_accumulation_steps"], **section}
    else:
        if v["gradient_accumulation_steps"] != 1:
            lost.append("gradient_accumulation_steps")  # Accelerate's file holds it for DeepSpeed only
        if v["gradient_clipping"] is not None:
            lost.append("gradient_clipping")
    if kind == "FSDP":
        out["fsdp_config"] = {k: v[k] for k in FIELDS if k.startswith("fsdp_") and v[k] is not None}
        out["fsdp_config"].setdefault("fsdp_version", 2)
    if v["dynamo_backend"] != "no":
        out["dynamo_config"] = {"dynamo_backend": v["dynamo_backend"].upper(), "dynamo_mode": v["dynamo_mode"] or
                                "default", "dynamo_use_fullgraph": v["dynamo_use_fullgraph"],
                                "dynamo_use_dynamic": bool(v["dynamo_use_dynamic"]),
                                "dynamo_use_regional_compilation": v["dynamo_use_regional_compilation"]}
    fp8 = {k.removeprefix("fp8_"): v[k] for k in ("fp8_backend", "fp8_enable_fsdp_float8_all_gather",
                                                    "fp8_pad_inner_dim") if v[k] is not None}
    if fp8:
        out["fp8_config"] = fp8
    sizes = {k: v[k] for k in FIELDS if k.startswith("parallelism_config_") and k.endswith("_size") and v[k] != 1}
    if sizes.get("parallelism_config_cp_size", 1) > 1 and v["parallelism_config_cp_comm_strategy"] is not None:
        sizes["parallelism_config_cp_comm_strategy"] = v["parallelism_config_cp_comm_strategy"]
    if sizes:
        out["parallelism_config"] = sizes
    return out, lost
