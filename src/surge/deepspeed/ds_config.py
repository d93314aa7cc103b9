"""Reading DeepSpeed JSON configs (a dict or a path), with DeepSpeed's meanings.

No torch here: the Accelerate-style ``DeepSpeedPlugin(hf_ds_config=...)`` and the
config file read DeepSpeed JSON through this module, and ``surge --help`` stays fast.

This module covers what an ``Accelerator`` needs: batch-size arithmetic, ZeRO stage and
offload, precision, gradient clipping, accumulation. Keys that surge knows but cannot
honour are collected for one warning; keys it does not know are an error that names them.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from surge.config.kwargs import LossScaleSettings

AUTO = "auto"

# Top-level keys and, for sections, the sub-keys surge understands.
_KNOWN: dict[str, set[str] | None] = {
    "train_batch_size": None,
    "train_micro_batch_size_per_gpu": None,
    "gradient_accumulation_steps": None,
    "gradient_clipping": None,
    "steps_per_print": None,
    "wall_clock_breakdown": None,
    "prescale_gradients": None,
    "gradient_predivide_factor": None,
    "fp16": {"enabled", "auto_cast", "loss_scale", "initial_scale_power", "loss_scale_window", "hysteresis",
             "consecutive_hysteresis", "min_loss_scale"},
    "bf16": {"enabled", "immediate_grad_update"},
    "zero_optimization": {"stage", "offload_optimizer", "offload_param", "overlap_comm", "contiguous_gradients",
                          "reduce_bucket_size", "allgather_bucket_size", "reduce_scatter", "allgather_partitions",
                          "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold",
                          "stage3_max_live_parameters", "stage3_max_reuse_distance", "sub_group_size",
                          "stage3_gather_16bit_weights_on_model_save", "round_robin_gradients",
                          "zero_quantized_weights", "zero_quantized_gradients", "zero_hpz_partition_size",
                          "memory_efficient_linear"},
    "activation_checkpointing": {"partition_activations", "cpu_checkpointing", "contiguous_memory_optimization",
                                 "number_checkpoints", "synchronize_checkpoint_boundary", "profile"},
    "optimizer": {"type", "params"},
    "scheduler": {"type", "params"},
    "zero_allow_untested_optimizer": None,
    "dataloader_drop_last": None,
    "zero_force_ds_cpu_optimizer": None,
    "communication_data_type": None,
    "tensorboard": None,
    "wandb": None,
    "flops_profiler": None,
    "comms_logger": None,
}
# Known keys whose effect surge cannot reproduce: accepted with one warning.
_UNHONOURED = {
    "prescale_gradients", "gradient_predivide_factor", "communication_data_type", "tensorboard", "wandb",
    "flops_profiler", "comms_logger", "zero_optimization.zero_quantized_weights",
    "zero_optimization.zero_quantized_gradients", "zero_optimization.zero_hpz_partition_size",
    "activation_checkpointing.partition_activations", "activation_checkpointing.cpu_checkpointing",
    "activation_checkpointing.contiguous_memory_optimization",
}


@dataclass
class DeepSpeedSettings:
    """What a DeepSpeed config asks of surge."""

    zero_stage: int = 0
    offload_optimizer_device: str = "none"
    offload_param_device: str = "none"
    mixed_precision: str | None = "no"
    """"no", "fp16", "bf16", or None when the config says "auto" (the run decides)."""
    loss_scale: LossScaleSettings | None = None
    drop_last: bool = False
    gradient_clipping: float | None = None
    gradient_accumulation_steps: int | None = None
    train_micro_batch_size_per_gpu: int | None = None
    train_batch_size: int | None = None
    activation_checkpointing: bool = False
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    unhonoured: list[str] = field(default_factory=list)


def load_json(config: dict[str, Any] | str | os.PathLike[str]) -> dict[str, Any]:
    """A DeepSpeed config as a dict (from a dict, or a JSON file path).

    Raises:
        ValueError: the file is missing, not JSON, or not an object.
    """
    if isinstance(config, dict):
        return dict(config)
    path = os.fspath(config)
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"DeepSpeed config {path!r} does not exist.") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"DeepSpeed config {path!r} is not valid JSON (line {exc.lineno}, column {exc.colno}): "
                         f"{exc.msg}.") from None
    except IsADirectoryError:
        raise ValueError(f"DeepSpeed config {path!r} is a directory; give the path of a JSON file.") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:  # unreadable, not UTF-8, absurd
        raise ValueError(f"DeepSpeed config {path!r} cannot be read: {' '.join(str(exc).split())[:200]}.") from None
    if not isinstance(data, dict):
        raise ValueError(f"DeepSpeed config {path!r} must hold a JSON object, not a {type(data).__name__}.")
    return data


def _int_or_auto(name: str, value: Any) -> int | None:
    if value == AUTO or value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"DeepSpeed config {name}={value!r} must be a positive integer or \"auto\".")
    return value


def resolve_batch_sizes(train: int | None, micro: int | None, accumulation: int | None,
                        world_size: int) -> tuple[int, int, int]:
    """DeepSpeed's rule: train_batch_size = micro x accumulation x world_size; any two
    give the third (accumulation defaults to 1 when only one is known).

    Raises:
        ValueError: the three given numbers disagree (all three are shown), or too few.
    """
    if train is not None and micro is not None and accumulation is not None:
        if train != micro * accumulation * world_size:
            raise ValueError(
                f"DeepSpeed config batch sizes disagree: train_batch_size={train} but train_micro_batch_size_per_gpu="
                f"{micro} x gradient_accumulation_steps={accumulation} x {world_size} processes = "
                f"{micro * accumulation * world_size}. Fix one of them (or set it to \"auto\")."
            )
        return train, micro, accumulation
    if train is not None and micro is not None:
        accumulation, rest = divmod(train, micro * world_size)
        if rest or accumulation < 1:
            raise ValueError(f"DeepSpeed config train_batch_size={train} is not a multiple of "
                             f"train_micro_batch_size_per_gpu={micro} x {world_size} processes.")
        return train, micro, accumulation
    accumulation = accumulation or 1
    if train is not None:
        micro, rest = divmod(train, accumulation * world_size)
        if rest or micro < 1:
            raise ValueError(f"DeepSpeed config train_batch_size={train} is not a multiple of "
                             f"gradient_accumulation_steps={accumulation} x {world_size} processes.")
        return train, micro, accumulation
    if micro is not None:
        return micro * accumulation * world_size, micro, accumulation
    raise ValueError("DeepSpeed config needs train_batch_size or train_micro_batch_size_per_gpu (or \"auto\" with a "
                     "prepared DataLoader to fill it in).")


def _number(section: str, name: str, value: Any, minimum: float, integer: bool = False,
            maximum: float = math.inf) -> Any:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not minimum <= value <= maximum \
            or not math.isfinite(value):
        kind = "an integer" if integer else "a number"
        limit = f"from {minimum} to {maximum}" if maximum != math.inf else f">= {minimum}"
        raise ValueError(f"DeepSpeed config {section}.{name}={value!r} must be {kind} {limit}.")
    return value


def _loss_scale(fp16: dict[str, Any]) -> LossScaleSettings:
    """The loss-scaling settings of an ``fp16`` section, with DeepSpeed's defaults."""
    static = _number("fp16", "loss_scale", fp16.get("loss_scale", 0), 0)
    power = _number("fp16", "initial_scale_power", fp16.get("initial_scale_power", 16), 0, integer=True, maximum=64)
    return LossScaleSettings(
        initial_scale=float(static) if static else 2.0**power,
        window=_number("fp16", "loss_scale_window", fp16.get("loss_scale_window", 1000), 1, integer=True),
        hysteresis=_number("fp16", "hysteresis", fp16.get("hysteresis", 2), 1, integer=True),
        consecutive_hysteresis=bool(fp16.get("consecutive_hysteresis", False)),
        min_scale=float(_number("fp16", "min_loss_scale", fp16.get("min_loss_scale", 1), 0)),
        static=bool(static),
    )


def reject_auto(section: str, params: dict[str, Any]) -> None:
    """Refuse "auto" in a section surge.initialize builds itself (nothing fills it).

    Raises:
        ValueError: naming the "auto" parameters.
    """
    autos = sorted(k for k, v in params.items() if v == AUTO)
    if autos:
        raise ValueError(f"DeepSpeed config {section}.params {', '.join(autos)} = \"auto\": surge.initialize has "
                         "nothing to fill them from; give numbers.")


def _asks_for(data: dict[str, Any], dotted: str) -> bool:
    """True when the config sets ``dotted`` to something other than off (false, 0,
    null, an empty or disabled section): only then is there something to honour."""
    value: Any = data
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return False
        value = value[part]
    if isinstance(value, dict):
        return bool(value) and value.get("enabled", True) not in (False, None)
    return value not in (False, None, 0, "none")


def parse_deepspeed_config(config: dict[str, Any] | str | os.PathLike[str]) -> DeepSpeedSettings:
    """Validate a DeepSpeed config and translate it (batch sizes stay unresolved here:
    "auto" values are filled from the run).

    Raises:
        ValueError: unknown keys (all named, with the allowed ones), bad values.
    """
    data = load_json(config)
    unknown = [k for k in data if k not in _KNOWN]
    for key, subkeys in _KNOWN.items():
        if subkeys is not None and isinstance(data.get(key), dict):
            unknown += [f"{key}.{sub}" for sub in data[key] if sub not in subkeys]
        elif subkeys is not None and key in data and not isinstance(data[key], dict):
            raise ValueError(f"DeepSpeed config {key}={data[key]!r} must be an object.")
    if unknown:
        raise ValueError(f"DeepSpeed config has unknown key(s) {', '.join(map(repr, sorted(unknown, key=str)))}; surge "
                         f"understands {', '.join(sorted(_KNOWN))} (and their documented sub-keys).")
    s = DeepSpeedSettings()
    s.unhonoured = sorted(k for k in _UNHONOURED if _asks_for(data, k))
    zero = data.get("zero_optimization", {})
    stage = zero.get("stage", 0)
    if isinstance(stage, bool) or not isinstance(stage, int) or not 0 <= stage <= 3:
        raise ValueError(f"DeepSpeed config zero_optimization.stage={stage!r} must be 0, 1, 2 or 3.")
    s.zero_stage = stage
    for part in ("offload_optimizer", "offload_param"):
        section = zero.get(part) or {}
        if not isinstance(section, dict):
            raise ValueError(f"DeepSpeed config zero_optimization.{part}={section!r} must be an object such as "
                             '{"device": "cpu"}.')
        device = section.get("device", "none")
        if device not in ("none", "cpu", "nvme"):
            raise ValueError(f"DeepSpeed config zero_optimization.{part}.device={device!r} must be none, cpu or nvme.")
        if device == "nvme":
            s.unhonoured.append(f"zero_optimization.{part}.device=nvme (surge offloads to the CPU instead)")
            device = "cpu"
        setattr(s, f"{part}_device", device)
    fp16, bf16 = data.get("fp16", {}), data.get("bf16", {})
    for name, section in (("fp16", fp16), ("bf16", bf16)):
        if section.get("enabled", False) not in (True, False, AUTO):
            raise ValueError(f"DeepSpeed config {name}.enabled={section['enabled']!r} must be true, false or \"auto\".")
    if fp16.get("enabled") is True and bf16.get("enabled") is True:
        raise ValueError("DeepSpeed config enables both fp16 and bf16; choose one.")
    if fp16.get("enabled") is True:
        s.mixed_precision = "fp16"
        s.loss_scale = _loss_scale(fp16)
    elif bf16.get("enabled") is True:
        s.mixed_precision = "bf16"
    elif AUTO in (fp16.get("enabled"), bf16.get("enabled")):
        s.mixed_precision = None
        s.loss_scale = _loss_scale(fp16)  # used if the run picks fp16
    clip = data.get("gradient_clipping")
    if clip not in (None, AUTO, 0, 0.0):
        if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not 0 <= clip < math.inf:
            raise ValueError(f"DeepSpeed config gradient_clipping={clip!r} must be a non-negative number.")
        s.gradient_clipping = float(clip)
    s.gradient_accumulation_steps = _int_or_auto("gradient_accumulation_steps", data.get("gradient_accumulation_steps"))
    s.train_micro_batch_size_per_gpu = _int_or_auto("train_micro_batch_size_per_gpu",
                                                    data.get("train_micro_batch_size_per_gpu"))
    s.train_batch_size = _int_or_auto("train_batch_size", data.get("train_batch_size"))
    s.activation_checkpointing = "activation_checkpointing" in data
    s.drop_last = data.get("dataloader_drop_last", False) is True
    s.optimizer = data.get("optimizer")
    s.scheduler = data.get("scheduler")
    return s
