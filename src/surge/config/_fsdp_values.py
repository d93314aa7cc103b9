"""The many forms Accelerate's ``FullyShardedDataParallelPlugin`` accepts for one value
(a string in any case, an int, torch's enum member, a torch policy object, a dict),
turned into the one form surge keeps. No torch at import: a torch object given by
the user means torch is already loaded, and dtype strings import it only when used.
"""

from __future__ import annotations

import enum
from typing import Any

SHARDING_STRATEGIES = ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD", "HYBRID_SHARD_ZERO2")
"""In torch's ``ShardingStrategy`` order (its values are 1..5)."""
STATE_DICT_TYPES = ("FULL_STATE_DICT", "LOCAL_STATE_DICT", "SHARDED_STATE_DICT")
"""In torch's ``StateDictType`` order (1..3)."""
BACKWARD_PREFETCH = ("BACKWARD_PRE", "BACKWARD_POST", "NO_PREFETCH")
WRAP_POLICIES = ("TRANSFORMER_AUTO_WRAP", "SIZE_BASED_WRAP", "NO_WRAP")
WRAP_ALIASES = {"TRANSFORMER_BASED_WRAP": "TRANSFORMER_AUTO_WRAP"}  # Accelerate >= 1.0's spelling
PRECISION_NAMES = ("fp8", "fp16", "bf16", "fp32")
"""Accelerate's names for a mixed-precision policy given as a string (fp8 computes in bf16)."""
POLICY_KEYS = ("param_dtype", "reduce_dtype", "output_dtype", "cast_forward_inputs")
"""FSDP2 ``MixedPrecisionPolicy``'s fields."""
FSDP1_ONLY_KEYS = ("buffer_dtype", "keep_low_precision_grads", "cast_root_forward_inputs", "_module_classes_to_ignore")
"""FSDP1 ``MixedPrecision`` fields FSDP2 has no counterpart for (see :func:`mixed_precision_policy`)."""


def enum_name(name: str, value: Any, names: tuple[str, ...], *, fix: str = "") -> str:
    """The canonical name of ``value`` given as a name (any case), a digit string, an int
    (torch's enum value: position + 1) or an enum member (torch's ``ShardingStrategy``,
    ``StateDictType``, ``BackwardPrefetch``).

    Raises:
        TypeError: another type. ValueError: no such member (the allowed ones listed).
    """
    shown = ", ".join(repr(n) for n in names)
    if isinstance(value, enum.Enum):
        value = str(value.name).lstrip("_")  # torch spells HYBRID_SHARD_ZERO2 with a leading underscore
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError(f"{name}={value!r} has type {type(value).__name__}; expected one of {shown} (a name, its "
                        f"number 1..{len(names)}, or torch's enum member).{' ' + fix if fix else ''}")
    if isinstance(value, int) or value.strip().isdigit():
        number = int(value)
        if 1 <= number <= len(names):
            return names[number - 1]
        raise ValueError(f"{name}={value!r} is out of range; torch numbers them 1..{len(names)}: {shown}.")
    lowered = value.strip().upper()
    for choice in names:
        if choice == lowered:
            return choice
    raise ValueError(f"{name}={value!r} is not supported; choose one of {shown}.{' ' + fix if fix else ''}")


def reshard_flag(name: str, value: Any) -> bool | str:
    """``reshard_after_forward`` as FSDP2's bool, or (Accelerate's FSDP1 form) the name of
    the sharding strategy it stands for.

    Raises:
        TypeError / ValueError: neither a bool, "true"/"false", nor a sharding strategy.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no"):
        return value.strip().lower() in ("true", "yes")
    return enum_name(name, value, SHARDING_STRATEGIES,
                     fix="FSDP2's form is a bool: True frees gathered parameters after forward (FULL_SHARD), "
                         "False keeps them until backward (SHARD_GRAD_OP).")


def _dtype(name: str, value: Any) -> Any:
    import torch

    if value is None or isinstance(value, torch.dtype):
        return value
    if isinstance(value, str):
        key = value.strip().lower().replace("torch.", "")
        named = {"fp8": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
                 "bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32,
                 "float32": torch.float32, "float": torch.float32}
        if key in named:
            return named[key]
    raise ValueError(f"{name}={value!r} is not a dtype; use torch.float32 / torch.bfloat16 / torch.float16 or one of "
                     f"{', '.join(PRECISION_NAMES)}.")


def mixed_precision_policy(value: Any) -> Any:
    """FSDP2's ``MixedPrecisionPolicy`` for what Accelerate accepts as
    ``mixed_precision_policy``: a policy (returned as it is), FSDP1's ``MixedPrecision``,
    a dict of either's fields, a dtype, or a name (fp8/fp16/bf16/fp32: params, reduction
    and output in that dtype; fp8 computes in bf16). FSDP1 fields with no FSDP2 meaning
    (``buffer_dtype``: FSDP2 leaves buffers in their own dtype; ``keep_low_precision_grads``:
    FSDP2's sharded gradients take the parameters' dtype) are accepted and dropped.

    Raises:
        TypeError: another type. ValueError: unknown keys or dtypes (named).
    """
    import dataclasses

    import torch
    from torch.distributed.fsdp import MixedPrecision, MixedPrecisionPolicy

    name = "FullyShardedDataParallelPlugin.mixed_precision_policy"
    if isinstance(value, MixedPrecisionPolicy):
        return value
    if isinstance(value, (str, torch.dtype)):
        if isinstance(value, str) and value.strip().lower() not in PRECISION_NAMES:
            raise ValueError(f"{name}={value!r} is not supported; choose one of {', '.join(PRECISION_NAMES)}, a "
                             "torch dtype, a dict or a MixedPrecisionPolicy.")
        dtype = _dtype(name, value)
        return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=dtype, output_dtype=dtype)
    if isinstance(value, MixedPrecision):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        # FSDP1 casts the root's inputs by default; FSDP2 has one switch for every module.
        value["cast_forward_inputs"] = value["cast_forward_inputs"] or value["cast_root_forward_inputs"]
    if not isinstance(value, dict):
        raise TypeError(f"{name}={value!r} has type {type(value).__name__}; expected a MixedPrecisionPolicy, "
                        "MixedPrecision, dict, torch dtype or one of " + ", ".join(PRECISION_NAMES) + ".")
    unknown = sorted(set(value) - set(POLICY_KEYS) - set(FSDP1_ONLY_KEYS))
    if unknown:
        raise ValueError(f"{name} has unknown key(s) {unknown}; FSDP2's policy takes {', '.join(POLICY_KEYS)} "
                         f"(FSDP1's {', '.join(FSDP1_ONLY_KEYS[:2])} are accepted and have no effect).")
    kwargs = {k: _dtype(f"{name}[{k!r}]", value[k]) for k in POLICY_KEYS[:3] if k in value}
    if "cast_forward_inputs" in value:
        kwargs["cast_forward_inputs"] = bool(value["cast_forward_inputs"])
    return MixedPrecisionPolicy(**kwargs)


def cpu_offload(value: Any) -> tuple[bool, bool | None]:
    """(offload?, pin_memory or None for surge's choice) for a bool, FSDP1's ``CPUOffload``
    or FSDP2's ``CPUOffloadPolicy`` / ``OffloadPolicy`` (no offload).

    Raises:
        TypeError: another type.
    """
    if isinstance(value, bool):
        return value, None
    kind = type(value).__name__
    if kind == "CPUOffload":
        return bool(value.offload_params), None
    if kind == "CPUOffloadPolicy":
        return True, bool(value.pin_memory)
    if kind == "OffloadPolicy":
        return False, None
    raise TypeError(f"FullyShardedDataParallelPlugin.cpu_offload={value!r} has type {kind}; expected True/False, "
                    "torch's CPUOffload(offload_params=...) or CPUOffloadPolicy().")


def class_names(name: str, value: Any) -> list[str] | None:
    """A list of class names from a list or a comma-separated string.

    Raises:
        TypeError: anything else.
    """
    if value is None:
        return None
    if isinstance(value, str):
        value = [n.strip() for n in value.split(",") if n.strip()]
    if isinstance(value, (set, tuple)):
        value = sorted(value) if isinstance(value, set) else list(value)
    if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
        raise TypeError(f"{name} must be a list of class names (or one comma-separated string); got {value!r}.")
    return list(value)


def optional_bool(name: str, value: Any, default: bool) -> bool:
    """``value`` as a bool; None gives ``default``; "true"/"false" strings (config files) are read.

    Raises:
        TypeError: anything else.
    """
    if value is None:
        return default
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if not isinstance(value, bool):
        raise TypeError(f"{name}={value!r} has type {type(value).__name__}; expected True or False.")
    return value
