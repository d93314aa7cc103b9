"""The surge config file: one typed schema, serialised as YAML.

`surge config` writes it, `surge launch` reads it (flags override it) and hands the
resolved result to the workers as a file whose path is in ``SURGE_CONFIG_FILE``;
``Accelerator()`` reads the same file for any argument the script does not pass.

Precedence, lowest first: config file < launch flags < explicit ``Accelerator(...)``
arguments. An explicit argument that differs from a value the launcher set is
reported (a warning on the main process), not silently resolved.

[Note: the config file has no torch]
This module is imported by ``surge --help``; it must not import torch.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from surge.config.accelerate_file import AccelerateFile, from_accelerate, is_accelerate_format, normalise
from surge.config.schema import (
    DEEPSPEED_KEYS,
    FIELDS,
    FSDP_KEYS,
    FSDP_SHARDING,
    MACHINE_TYPES,
    MIXED_PRECISION,
    ConfigError,
    MachineType,
    SurgeConfig,
    join_errors,
    validate_values,
)

ENV_VAR = "SURGE_CONFIG_FILE"
HANDOFF_NAME = "surge-launch-config.yaml"  # the file surge launch hands to its workers
# Settings an Accelerator reads (the rest only concern starting processes).
ACCELERATOR_KEYS = ("use_cpu", "mixed_precision", "gradient_accumulation_steps", *DEEPSPEED_KEYS, *FSDP_KEYS,
                    "dynamo_backend", "dynamo_mode", "dynamo_use_fullgraph", "dynamo_use_dynamic",
                    "dynamo_use_regional_compilation", "fp8_backend", "fp8_enable_fsdp_float8_all_gather",
                    "fp8_pad_inner_dim", "nonfinite", "warnings", "strategy", "memory_budget_gb", "collective_timeout",
                    "debug",
                    "parallelism_config_dp_replicate_size", "parallelism_config_dp_shard_size",
                    "parallelism_config_tp_size", "parallelism_config_cp_size", "parallelism_config_sp_size",
                    "parallelism_config_cp_comm_strategy")
# Earlier names of keys, still read.
RENAMED = {"fsdp_cpu_offload": "fsdp_offload_params"}

__all__ = ["ACCELERATOR_KEYS", "ENV_VAR", "FIELDS", "FSDP_SHARDING", "HANDOFF_NAME", "MACHINE_TYPES",
           "MIXED_PRECISION", "SHARDING_KEYS", "ConfigError", "MachineType", "SurgeConfig", "active_values",
           "default_config_path", "load_config", "read_values", "resolve_accelerator_args", "validate_values",
           "write_config"]


def default_config_path() -> str:
    """``$SURGE_CONFIG_FILE``, else ``$XDG_CACHE_HOME/surge/default_config.yaml`` (XDG_CACHE_HOME
    defaults to ``~/.cache``)."""
    explicit = os.environ.get(ENV_VAR)
    if explicit:
        return explicit
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "surge", "default_config.yaml")


def _load_mapping(path: str) -> dict[str, Any]:
    import yaml

    try:
        with open(path) as f:
            data = yaml.safe_load(f)  # JSON is YAML too: Accelerate's .json config files read the same way
    except FileNotFoundError:
        raise ConfigError(f"config file {path!r} does not exist; create one with `surge config` or pass another "
                          "path") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path!r} is a directory; give the path of a YAML file") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
        problem = " ".join(str(getattr(exc, "problem", None) or getattr(exc, "reason", None) or exc).split())
        raise ConfigError(f"config file {path!r} is not valid YAML{line}: {problem}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path!r} cannot be read: {exc}") from None
    except (ValueError, RecursionError) as exc:  # a number past Python's int-conversion limit, absurd nesting
        raise ConfigError(f"config file {path!r} cannot be read: {' '.join(str(exc).split())[:200]}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path!r} must hold a mapping of keys to values, not a {type(data).__name__}")
    bad_keys = [k for k in data if not isinstance(k, str)]
    if bad_keys:
        raise ConfigError(f"config file {path!r} has non-text keys {bad_keys!r}; allowed keys are {', '.join(FIELDS)}")
    return data


def read_config(path: str) -> tuple[dict[str, Any], AccelerateFile | None]:
    """The validated values of a config file, and, for an Accelerate-format file, what
    reading it found (notes to print; see config/accelerate_file.py).

    Raises:
        ConfigError: missing file, unreadable YAML/JSON, not a mapping, or bad values.
    """
    data = _load_mapping(path)
    accelerate = None
    if is_accelerate_format(data):
        accelerate = from_accelerate(data, path)
        data = accelerate.values
    else:
        for old, new in RENAMED.items():
            if old in data:
                if new in data:
                    raise ConfigError(f"config file {path!r} sets both {old} and {new} (its newer name); keep {new}")
                data[new] = data.pop(old)
        data = {key: normalise(key, value) for key, value in data.items()}
    errors = validate_values(data)
    if errors:
        raise ConfigError(f"config file {path!r}: " + join_errors(errors))
    return data, accelerate


def read_values(path: str) -> dict[str, Any]:
    """The raw key/values of a config file (validated, not yet filled with defaults), in
    surge's keys whichever format the file is in (see :func:`read_config`).

    Raises:
        ConfigError: missing file, unreadable YAML, not a mapping, or bad values.
    """
    return read_config(path)[0]


def load_config(path: str) -> SurgeConfig:
    """Read and validate a config file (see :func:`read_values`)."""
    return SurgeConfig(**read_values(path))


def write_config(config: SurgeConfig | dict[str, Any], path: str, *,
                 header: str = "# surge config: edit by hand or rerun `surge config`\n") -> None:
    """Write ``config`` as YAML to ``path`` atomically (all fields, or the given mapping).

    Raises:
        ConfigError: the path cannot be written (the message names it).
    """
    import tempfile

    import yaml

    values = dataclasses.asdict(config) if isinstance(config, SurgeConfig) else dict(config)
    text = header + yaml.safe_dump(values, sort_keys=False)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".surge-tmp-", suffix=".yaml")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # a normal file, not mkstemp's private 0600
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfigError(f"cannot write the config file {path!r}: {exc.strerror or exc}") from None


def active_values() -> tuple[dict[str, Any], str | None]:
    """The values an Accelerator should default to, and the file they came from.

    The file is ``$SURGE_CONFIG_FILE`` when set (``surge launch`` sets it to the resolved
    config), else the default config file if it exists, else nothing.
    """
    explicit = os.environ.get(ENV_VAR)
    path = explicit or default_config_path()
    if not explicit and not os.path.exists(path):
        return {}, None
    return read_values(path), path


# Accelerator argument <- config file key
_ACCELERATOR_ARGS = {"cpu": "use_cpu", "mixed_precision": "mixed_precision",
                     "gradient_accumulation_steps": "gradient_accumulation_steps", "dynamo_backend": "dynamo_backend",
                     "nonfinite": "nonfinite", "warnings": "warnings", "strategy": "strategy",
                     "memory_budget_gb": "memory_budget_gb"}
SHARDING_KEYS = (*DEEPSPEED_KEYS, *FSDP_KEYS, "parallelism_config_dp_replicate_size",
                 "parallelism_config_dp_shard_size", "parallelism_config_tp_size", "parallelism_config_cp_size",
                 "parallelism_config_sp_size")


def resolve_accelerator_args(explicit: dict[str, Any], active: tuple[dict[str, Any], str | None] | None = None
                             ) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
    """Fill the Accelerator arguments the script left as None from the active config
    (``active``: what :func:`active_values` returned, when the caller read it already).

    Returns:
        (values, conflicts, sharding): ``values`` for every key of ``explicit``;
        ``conflicts`` describes explicit arguments that differ from what the config
        file / launcher set; ``sharding`` holds the file's sharding settings that differ
        from the defaults.
    """
    file_values, source = active if active is not None else active_values()
    if source is not None and os.path.basename(source) == HANDOFF_NAME:
        source = "surge launch (its config file and flags)"
    values: dict[str, Any] = {}
    conflicts = []
    for arg, given in explicit.items():
        key = _ACCELERATOR_ARGS[arg]
        if given is None:
            values[arg] = file_values.get(key, FIELDS[key].default)
        else:
            values[arg] = given
            if key in file_values and file_values[key] != given:
                conflicts.append(
                    f"Accelerator({arg}={given!r}) overrides {key}={file_values[key]!r} from {source}; the script's "
                    "explicit argument wins. Remove one of them to silence this."
                )
    sharding = {k: file_values[k] for k in SHARDING_KEYS if k in file_values and file_values[k] != FIELDS[k].default}
    return values, conflicts, sharding
