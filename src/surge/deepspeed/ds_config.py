"""Reading DeepSpeed JSON configs (a dict or a path), with DeepSpeed's meanings.

No torch here: the Accelerate-style ``DeepSpeedPlugin(hf_ds_config=...)``, the launcher
and the config file read DeepSpeed JSON through this module, and ``surge --help`` stays fast.

This module covers what an ``Accelerator`` needs: batch-size arithmetic, ZeRO stage and
offload, precision, gradient clipping, accumulation, and reads every other key DeepSpeed
reads, legacy names included, the way DeepSpeed reads it (see [Note: what DeepSpeed
accepts] in ds_keys.py): keys whose effect surge does not reproduce are collected for one
warning, features surge does not offer are named, and refused only when they are switched
on and change what is trained.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from surge.config.kwargs import LossScaleSettings
from surge.deepspeed import ds_keys

AUTO = "auto"


@dataclass(frozen=True)
class ActivationCheckpointingSettings:
    """A config's ``activation_checkpointing`` section, with DeepSpeed's defaults. As in
    DeepSpeed, it checkpoints nothing by itself: ``surge.checkpointing.configure(mpu,
    deepspeed_config=...)`` reads it, and the model calls ``surge.checkpointing.checkpoint``."""

    partition_activations: bool = False
    """Split checkpoints across model-parallel ranks (surge has none: no effect)."""
    cpu_checkpointing: bool = False
    """Keep the checkpointed activations in CPU memory until backward needs them."""
    contiguous_memory_optimization: bool = False
    """Copy checkpoints into one buffer (a fragmentation measure; no effect in surge)."""
    number_checkpoints: int | None = None
    """The number of checkpoints per forward (sizes that buffer)."""
    synchronize_checkpoint_boundary: bool = False
    """Synchronize the device at the start and end of each checkpointed region."""
    profile: bool = False
    """Log the forward and backward time of each checkpointed region."""


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
    activation_checkpointing: ActivationCheckpointingSettings | None = None
    """The ``activation_checkpointing`` section (None: absent), for ``surge.checkpointing``."""
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    steps_per_print: int = 10
    wall_clock_breakdown: bool = False
    """``wall_clock_breakdown`` (also true when the flops profiler is enabled, as in DeepSpeed)."""
    monitors: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The enabled monitor sections (tensorboard, wandb, csv_monitor, comet) without ``enabled``."""
    unhonoured: list[str] = field(default_factory=list)
    """Keys read but not applied, each with why: reported in one warning."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"the key {key!r} appears twice in one object")
        seen[key] = value
    return seen


def _relaxed(text: str) -> str:
    """``text`` without comments (``//``, ``#``, ``/* */``) and trailing commas outside
    strings: what hjson, which DeepSpeed reads config files with, also takes."""
    out: list[str] = []
    i, n, in_string = 0, len(text), False
    while i < n:
        c = text[i]
        if in_string:
            out.append(c)
            if c == "\\" and i + 1 < n:
                out.append(text[i + 1])
                i += 1
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
            out.append(c)
        elif c == "#" or text.startswith("//", i):
            while i < n and text[i] != "\n":
                i += 1
            continue
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
            continue
        elif c == ",":
            j = i + 1
            while j < n and text[j] in " \t\r\n":
                j += 1
            if j < n and text[j] in "}]":
                i += 1
                continue
            out.append(c)
        else:
            out.append(c)
        i += 1
    return "".join(out)


def _decode(text: str, path: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        try:
            return json.loads(_relaxed(text), object_pairs_hook=_no_duplicates)
        except ValueError:
            raise ValueError(f"DeepSpeed config {path!r} is not valid JSON (line {exc.lineno}, column {exc.colno}): "
                             f"{exc.msg}.") from None
    except ValueError as exc:  # a duplicate key (DeepSpeed refuses those too)
        raise ValueError(f"DeepSpeed config {path!r}: {exc}; DeepSpeed refuses duplicate keys too. Keep one.") from None


def _from_base64(text: str) -> dict[str, Any] | None:
    """A config passed as base64 (DeepSpeed takes one where the path does not exist)."""
    try:
        decoded = base64.urlsafe_b64decode(text.encode("ascii")).decode("utf-8")
        data = json.loads(decoded, object_pairs_hook=_no_duplicates)
    except (binascii.Error, UnicodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def load_json(config: dict[str, Any] | str | os.PathLike[str]) -> dict[str, Any]:
    """A DeepSpeed config as a dict: from a dict, a JSON file path (comments and trailing
    commas allowed, as DeepSpeed's hjson reader allows them), or base64-encoded JSON.

    Raises:
        ValueError: the file is missing, not JSON, has a key twice, or is not an object.
    """
    if isinstance(config, dict):
        return dict(config)
    path = os.fspath(config)
    if not os.path.exists(path):
        decoded = _from_base64(path) if isinstance(path, str) and path else None
        if decoded is not None:
            return decoded
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ValueError(f"DeepSpeed config {path!r} does not exist.") from None
    except IsADirectoryError:
        raise ValueError(f"DeepSpeed config {path!r} is a directory; give the path of a JSON file.") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # unreadable, not UTF-8
        raise ValueError(f"DeepSpeed config {path!r} cannot be read: {' '.join(str(exc).split())[:200]}.") from None
    try:
        data = _decode(text, path)
    except RecursionError:  # absurdly nested
        raise ValueError(f"DeepSpeed config {path!r} cannot be read: nested too deeply.") from None
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


def _section(data: dict[str, Any], key: str) -> dict[str, Any]:
    """The section ``key`` (absent or null: empty).

    Raises:
        ValueError: it is not an object.
    """
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"DeepSpeed config {key}={value!r} must be an object, such as {{\"enabled\": true}}.")
    return value


def _unknown_keys(data: dict[str, Any], strict: bool, notes: list[str]) -> None:
    """Keys DeepSpeed does not read: it ignores them (see [Note: what DeepSpeed accepts])."""
    known = ds_keys.known_top_level()
    found = [(key, "", known) for key in data if key not in known]
    for key, allowed in ds_keys.LOOSE_KEYS.items():
        if isinstance(data.get(key), dict):
            found += [(sub, f"{key}.", allowed) for sub in data[key] if sub not in allowed]
    if strict and found:
        names = ", ".join(repr(where + key) for key, where, _ in found)
        raise ValueError(f"DeepSpeed config has unknown key(s) {names} (strict=True; DeepSpeed would ignore them); "
                         f"DeepSpeed's top-level keys are {', '.join(sorted(known))}.")
    notes += [ds_keys.unknown_note(key, allowed, where) for key, where, allowed in found]


def _features(data: dict[str, Any], notes: list[str]) -> None:
    """Name the DeepSpeed features surge does not offer that the config switches on.

    Raises:
        ValueError: every such feature that changes what is trained, in one message.
    """
    refusals = []
    for key, feature in ds_keys.FEATURES.items():
        detail = feature.switched_on(data[key]) if key in data else None
        if detail is None:
            continue
        if feature.changes_training:
            refusals.append(ds_keys.not_offered(key, feature, detail))
        else:
            notes.append(ds_keys.feature_note(key, feature, detail))
    optimizer, scheduler = _section(data, "optimizer"), _section(data, "scheduler")
    kind = optimizer.get("type")
    if isinstance(kind, str) and kind.lower() in ds_keys.OPTIMIZERS_NOT_OFFERED:
        what = ds_keys.OPTIMIZERS_NOT_OFFERED[kind.lower()]
        refusals.append(f"DeepSpeed config optimizer.type={kind!r} asks for {what}, a DeepSpeed feature surge does "
                        "not offer. To train with surge, choose Adam, AdamW or another torch.optim optimizer (with its "
                        "hyperparameters), or pass your own optimizer.")
    kind = scheduler.get("type")
    if isinstance(kind, str) and kind in ds_keys.SCHEDULERS_NOT_OFFERED:
        refusals.append(f"DeepSpeed config scheduler.type={kind!r} asks for {ds_keys.SCHEDULERS_NOT_OFFERED[kind]}, a "
                        "DeepSpeed feature surge does not offer. To train with surge, use WarmupLR, WarmupDecayLR or "
                        "WarmupCosineLR, or pass a torch LR scheduler as lr_scheduler=.")
    if refusals:
        raise ValueError(" ".join(refusals))
    params = optimizer.get("params")
    if params is not None and not isinstance(params, dict):
        raise ValueError(f"DeepSpeed config optimizer.params={params!r} must be an object of the optimizer's "
                         "arguments.")
    if params and "max_grad_norm" in params:
        raise ValueError("DeepSpeed config optimizer.params.max_grad_norm is not an optimizer argument (DeepSpeed "
                         "refuses it too): clip with the top-level \"gradient_clipping\": "
                         f"{params['max_grad_norm']!r} instead.")


def _zero(data: dict[str, Any], s: DeepSpeedSettings, notes: list[str]) -> None:
    """ZeRO's stage and offload, legacy names included, as DeepSpeed's ZeRO config reads them."""
    zero: Any = data.get("zero_optimization")
    if isinstance(zero, bool):  # DeepSpeed's oldest form: true is stage 1
        zero = {"stage": 1 if zero else 0}
    zero = _section({"zero_optimization": zero}, "zero_optimization")
    zero = {k: v for k, v in zero.items() if v != AUTO}  # DeepSpeed drops "auto" here (its defaults apply)
    unknown = [(f"zero_optimization.{k}", k, ds_keys.ZERO_KEYS) for k in zero if k not in ds_keys.ZERO_KEYS]
    for part, allowed in ds_keys.OFFLOAD_KEYS.items():
        if isinstance(zero.get(part), dict):
            unknown += [(f"zero_optimization.{part}.{k}", k, allowed) for k in zero[part] if k not in allowed]
    if unknown:
        hints = [f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name) for name, key, allowed in unknown
                 for close in [difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.75)]]
        raise ValueError(f"DeepSpeed config has unknown key(s) {', '.join(hints)}: DeepSpeed refuses them too. "
                         f"zero_optimization takes {', '.join(sorted(ds_keys.ZERO_KEYS))}; its offload sections take "
                         "device, nvme_path, pin_memory, buffer_count, ... (see DeepSpeed's docs).")
    stage = zero.get("stage", 0)
    if isinstance(stage, bool) or not isinstance(stage, int) or not 0 <= stage <= 3:
        raise ValueError(f"DeepSpeed config zero_optimization.stage={stage!r} must be 0, 1, 2 or 3.")
    s.zero_stage = stage
    for old, new in (("cpu_offload", "offload_optimizer"), ("cpu_offload_param", "offload_param"),
                     ("stage3_gather_fp16_weights_on_model_save", "stage3_gather_16bit_weights_on_model_save")):
        if old in zero and (new in zero or new.removeprefix("stage3_") in zero):
            raise ValueError(f"DeepSpeed config zero_optimization has both {old} (its old name) and {new}; DeepSpeed "
                             f"refuses that too. Keep {new}.")
        if old in zero and new.startswith("offload") and zero[old] is True:
            zero[new] = {"device": "cpu"}  # the legacy flag, as DeepSpeed translates it
    for part in ("offload_optimizer", "offload_param"):
        section = _section(zero, part)
        device = section.get("device", "none")
        if device in (None, AUTO):
            device = "none"
        if device not in ("none", "cpu", "nvme"):
            raise ValueError(f"DeepSpeed config zero_optimization.{part}.device={device!r} must be none, cpu or nvme.")
        if device == "nvme":
            notes.append(f"zero_optimization.{part}.device=nvme (surge offloads to the CPU instead)")
            device = "cpu"
        needs = 3 if part == "offload_param" else 1
        if device != "none" and stage < needs:
            notes.append(f"zero_optimization.{part} (DeepSpeed ignores it at ZeRO stage {stage}, and so does surge)")
            device = "none"
        ratio = section.get("ratio", 1.0)
        if device != "none" and isinstance(ratio, (int, float)) and ratio < 1:
            if stage != 3:
                raise ValueError(f"DeepSpeed config zero_optimization.offload_optimizer.ratio={ratio} (a partial "
                                 "offload) needs ZeRO stage 3; DeepSpeed refuses it too. Use stage 3 or drop ratio.")
            notes.append(f"zero_optimization.offload_optimizer.ratio={ratio} (surge offloads all of the optimizer "
                         "state, not a part)")
        setattr(s, f"{part}_device", device)
    zeropp = [k for k in ("zero_quantized_weights", "zero_quantized_nontrainable_weights", "zero_quantized_gradients")
              if zero.get(k) is True]
    hpz = zero.get("zero_hpz_partition_size", 1)
    if isinstance(hpz, int) and hpz > 1:
        zeropp.append(f"zero_hpz_partition_size={hpz}")
    if zeropp:
        notes.append(f"zero_optimization.{', '.join(zeropp)} (ZeRO++ quantized or hierarchical communication is not "
                     "applied: surge communicates full-precision weights and gradients over all processes)")
    mics = zero.get("mics_shard_size", -1)
    if isinstance(mics, int) and mics > 0:
        notes.append(f"zero_optimization.mics_shard_size={mics} (MiCS is not applied: surge shards over all processes)")


def _enabled(section: dict[str, Any], name: str) -> Any:
    value = section.get("enabled", False)
    if value not in (True, False, AUTO):
        raise ValueError(f"DeepSpeed config {name}.enabled={value!r} must be true, false or \"auto\".")
    return value


def _precision(data: dict[str, Any], s: DeepSpeedSettings, notes: list[str]) -> None:
    """fp16, bf16 (or its old name bfloat16) and apex ``amp``, as DeepSpeed reads them."""
    bf16_name = "bf16" if "bf16" in data else "bfloat16"
    if "bf16" in data and "bfloat16" in data:
        notes.append("bfloat16 (bf16 is given too and wins, as in DeepSpeed)")
    fp16, bf16, amp = _section(data, "fp16"), _section(data, bf16_name), _section(data, "amp")
    fp16_on, bf16_on, amp_on = _enabled(fp16, "fp16"), _enabled(bf16, bf16_name), _enabled(amp, "amp")
    if fp16_on is True and bf16_on is True:
        raise ValueError(f"DeepSpeed config enables both fp16 and {bf16_name}; choose one.")
    if amp_on is True:
        if fp16_on is True or bf16_on is True:
            raise ValueError("DeepSpeed config enables amp and fp16/bf16 together; DeepSpeed refuses that too. Keep "
                             "one (the fp16 section is DeepSpeed's own mixed precision).")
        if s.zero_stage > 0:
            raise ValueError("DeepSpeed config enables amp (apex) with ZeRO; DeepSpeed refuses that too (\"Amp and "
                             "ZeRO are not currently compatible\"). Use the fp16 section instead of amp.")
        level = amp.get("opt_level", "O1")
        if level == "O0":  # apex's fp32
            s.mixed_precision = "no"
            return
        # apex O1 (its default): fp16 autocast with dynamic loss scaling from 2**16, doubling
        # after 2000 clean steps: torch's autocast + GradScaler defaults are the same recipe.
        s.mixed_precision = "fp16"
        static = amp.get("loss_scale", "dynamic")
        if isinstance(static, (int, float)) and not isinstance(static, bool) and static > 0:
            s.loss_scale = LossScaleSettings(initial_scale=float(static), static=True)
        if level != "O1":
            notes.append(f"amp.opt_level={level!r} (surge runs apex AMP's O1 recipe: torch autocast fp16 over fp32 "
                         "weights with dynamic loss scaling)")
        return
    if fp16_on is True:
        s.mixed_precision = "fp16"
        s.loss_scale = _loss_scale(fp16)
        if fp16.get("fp16_master_weights_and_grads") is True:
            if s.zero_stage != 2:
                raise ValueError("DeepSpeed config fp16.fp16_master_weights_and_grads needs ZeRO stage 2 (DeepSpeed "
                                 f"refuses it at stage {s.zero_stage} too). Use stage 2 or drop the key.")
            notes.append("fp16.fp16_master_weights_and_grads (surge keeps fp32 master weights and gradients: more "
                         "exact, more memory)")
    elif bf16_on is True:
        s.mixed_precision = "bf16"
    elif AUTO in (fp16_on, bf16_on):
        s.mixed_precision = None
        s.loss_scale = _loss_scale(fp16)  # used if the run picks fp16


_DTYPES = {"fp32": ("torch.float32", "fp32", "float32", "float"),
           "fp16": ("torch.float16", "fp16", "float16", "half"),
           "bf16": ("torch.bfloat16", "bf16", "bfloat16")}


def _communication(data: dict[str, Any], notes: list[str]) -> None:
    """communication_data_type and data_types.grad_accum_dtype (DeepSpeed's values)."""
    value = data.get("communication_data_type")
    if value is not None:
        lower = value.lower() if isinstance(value, str) else value
        if lower not in ("fp32", "fp16", "bf16"):
            raise ValueError(f"DeepSpeed config communication_data_type={value!r} must be fp16, bf16 or fp32 "
                             "(DeepSpeed's choices).")
        if lower != "fp32":
            notes.append(f"communication_data_type={value} (surge reduces gradients in their own dtype, fp32 under "
                         "autocast: more exact)")
    accum = _section(data, "data_types").get("grad_accum_dtype")
    if accum is not None:
        kind = next((k for k, names in _DTYPES.items() if accum in names), None)
        if kind is None:
            raise ValueError(f"DeepSpeed config data_types.grad_accum_dtype={accum!r} must be one of "
                             f"{', '.join(n for names in _DTYPES.values() for n in names)}.")
        if kind != "fp32":
            notes.append(f"data_types.grad_accum_dtype={accum} (surge accumulates gradients in the parameters' "
                         "dtype, fp32 under autocast: more exact)")


def _activation_checkpointing(data: dict[str, Any]) -> ActivationCheckpointingSettings | None:
    if data.get("activation_checkpointing") is None:
        return None
    section = _section(data, "activation_checkpointing")
    flags = {}
    for name in ("partition_activations", "cpu_checkpointing", "contiguous_memory_optimization",
                 "synchronize_checkpoint_boundary", "profile"):
        value = section.get(name, False)
        if not isinstance(value, bool):
            raise ValueError(f"DeepSpeed config activation_checkpointing.{name}={value!r} must be true or false.")
        flags[name] = value
    number = section.get("number_checkpoints")
    if number is not None and (isinstance(number, bool) or not isinstance(number, int) or number < 1):
        raise ValueError(f"DeepSpeed config activation_checkpointing.number_checkpoints={number!r} must be a positive "
                         "integer or null.")
    return ActivationCheckpointingSettings(number_checkpoints=number, **flags)


def parse_deepspeed_config(config: dict[str, Any] | str | os.PathLike[str], *,
                           strict: bool = False) -> DeepSpeedSettings:
    """Validate a DeepSpeed config and translate it, reading every key as DeepSpeed reads
    it (batch sizes stay unresolved here: "auto" values are filled from the run).

    Args:
        config: a dict, a JSON file path or base64-encoded JSON.
        strict: refuse keys DeepSpeed does not read (by default they are named in the
            warning and ignored, as DeepSpeed ignores them).

    Raises:
        ValueError: bad values (each named, with what is allowed); a DeepSpeed feature
            surge does not offer, switched on in a way that changes training; what
            DeepSpeed itself refuses (an unknown ZeRO key, fp16 with bf16, ...).
    """
    data = load_json(config)
    s = DeepSpeedSettings()
    notes: list[str] = []
    for key in (*ds_keys.LOOSE_KEYS, "amp", *ds_keys.MONITORS, *ds_keys.FEATURES):
        _section(data, key)  # each section is an object
    _unknown_keys(data, strict, notes)
    _features(data, notes)
    _zero(data, s, notes)
    _precision(data, s, notes)
    _communication(data, notes)
    for name in ds_keys.MONITORS:
        section = _section(data, name)
        if section.get("enabled") is True:
            s.monitors[name] = {k: v for k, v in section.items() if k != "enabled"}
            notes.append(f"{name} (DeepSpeed's monitor logs are not written by surge; log with surge's trackers: "
                         "Accelerator(log_with=...) and accelerator.log)")
    clip = data.get("gradient_clipping")
    if clip not in (None, AUTO, 0, 0.0):
        if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not 0 <= clip < math.inf:
            raise ValueError(f"DeepSpeed config gradient_clipping={clip!r} must be a non-negative number.")
        s.gradient_clipping = float(clip)
    s.gradient_accumulation_steps = _int_or_auto("gradient_accumulation_steps", data.get("gradient_accumulation_steps"))
    s.train_micro_batch_size_per_gpu = _int_or_auto("train_micro_batch_size_per_gpu",
                                                    data.get("train_micro_batch_size_per_gpu"))
    s.train_batch_size = _int_or_auto("train_batch_size", data.get("train_batch_size"))
    s.activation_checkpointing = _activation_checkpointing(data)
    s.drop_last = data.get("dataloader_drop_last", False) is True
    s.optimizer = data.get("optimizer")
    s.scheduler = data.get("scheduler")
    steps = data.get("steps_per_print", 10)
    s.steps_per_print = steps if isinstance(steps, int) and not isinstance(steps, bool) and steps > 0 else 10
    s.wall_clock_breakdown = data.get("wall_clock_breakdown") is True or _section(data, "flops_profiler").get(
        "enabled") is True
    s.unhonoured = notes
    return s
