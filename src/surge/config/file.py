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
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

MachineType = Literal["cpu", "single_gpu", "multi_gpu", "multi_node"]
MACHINE_TYPES: tuple[str, ...] = get_args(MachineType)
MIXED_PRECISION = ("no", "fp16", "bf16", "fp8")
FSDP_SHARDING = ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD")
ENV_VAR = "SURGE_CONFIG_FILE"
HANDOFF_NAME = "surge-launch-config.yaml"  # the file surge launch hands to its workers


class ConfigError(ValueError):
    """A config file or value that cannot be used; the message says what and how to fix."""


def _help(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


@dataclass(frozen=True)
class SurgeConfig:
    """Everything `surge config` asks and `surge launch` uses. Field help is shown by
    the CLI (its flags are derived from these fields)."""

    machine_type: MachineType = field(
        default="cpu",
        metadata=_help("Where the job runs: cpu, single_gpu, multi_gpu or multi_node.", choices=MACHINE_TYPES),
    )
    num_machines: int = field(default=1, metadata=_help("Number of machines in the job.", minimum=1, maximum=100_000))
    num_processes: int = field(
        default=1,
        metadata=_help("Total number of processes over all machines (one per GPU on GPU machines).", minimum=1,
                       maximum=1_000_000),
    )
    machine_rank: int = field(default=0, metadata=_help("Index of this machine, 0 to num_machines-1.", minimum=0))
    main_process_ip: str | None = field(
        default=None, metadata=_help("Address of machine 0 (multi-machine jobs); single-machine jobs use 127.0.0.1.")
    )
    main_process_port: int | None = field(
        default=None,
        metadata=_help("Rendezvous port on machine 0; a free port is chosen when unset.", minimum=1, maximum=65535),
    )
    gpu_ids: str | None = field(
        default=None, metadata=_help('GPUs to use on this machine: "all" or a list like "0,1".')
    )
    use_cpu: bool = field(default=False, metadata=_help("Train on the CPU even when GPUs are present."))
    mixed_precision: str = field(
        default="no", metadata=_help("Number format: no, fp16, bf16 or fp8.", choices=MIXED_PRECISION)
    )
    gradient_accumulation_steps: int = field(
        default=1, metadata=_help("Micro-batches per optimizer step.", minimum=1)
    )
    zero_stage: int = field(
        default=0,
        metadata=_help("ZeRO sharding stage: 0 (none), 1 (optimizer), 2 (+gradients), 3 (+parameters).", minimum=0,
                       maximum=3),
    )
    offload_optimizer_device: str = field(
        default="none",
        metadata=_help("Keep optimizer state on: none or cpu (ZeRO stages 1-3).", choices=("none", "cpu")),
    )
    offload_param_device: str = field(
        default="none", metadata=_help("Keep parameters on: none or cpu (ZeRO stage 3 only).", choices=("none", "cpu"))
    )
    deepspeed_config_file: str | None = field(
        default=None, metadata=_help("A DeepSpeed JSON config to take ZeRO / precision / batch settings from.")
    )
    fsdp_sharding_strategy: str | None = field(
        default=None,
        metadata=_help("FSDP sharding instead of ZeRO: FULL_SHARD, SHARD_GRAD_OP, NO_SHARD or HYBRID_SHARD.",
                       choices=FSDP_SHARDING),
    )
    fsdp_cpu_offload: bool = field(default=False, metadata=_help("FSDP: keep parameters on the CPU."))
    nonfinite: str = field(
        default="ignore",
        metadata=_help("At each optimizer step, on a NaN/inf loss or gradient: ignore, skip (the step) or raise.",
                       choices=("ignore", "skip", "raise")),
    )
    dynamo_backend: str = field(
        default="no", metadata=_help("torch.compile the prepared models with this backend: no, inductor, eager, "
                                     "aot_eager, ...")
    )
    collective_timeout: float = field(
        default=600.0, metadata=_help("Seconds a collective may wait for the other ranks before every rank stops with "
                                      "a report of who waited where and who never arrived.", positive=True,
                                      maximum=7 * 24 * 3600)
    )
    max_restarts: int = field(
        default=0,
        metadata=_help("Restart all workers up to this many times when one fails.", minimum=0, maximum=1000),
    )
    monitor_interval: float = field(
        default=0.1, metadata=_help("Seconds between checks of the workers' health.", positive=True, maximum=60)
    )

    def __post_init__(self) -> None:
        errors = validate_values(dataclasses.asdict(self))
        if errors:
            raise ConfigError(_join(errors))

    @property
    def processes_per_machine(self) -> int:
        return self.num_processes // self.num_machines

    def changed(self) -> dict[str, Any]:
        """The fields that differ from the schema's defaults."""
        default = SurgeConfig()
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != getattr(default, f.name)}


FIELDS = {f.name: f for f in dataclasses.fields(SurgeConfig)}
# Settings an Accelerator reads (the rest only concern starting processes).
ACCELERATOR_KEYS = ("use_cpu", "mixed_precision", "gradient_accumulation_steps", "zero_stage",
                    "offload_optimizer_device", "offload_param_device", "deepspeed_config_file",
                    "fsdp_sharding_strategy", "fsdp_cpu_offload", "dynamo_backend", "nonfinite", "collective_timeout")


def _join(errors: list[str]) -> str:
    if len(errors) == 1:
        return errors[0]
    return f"{len(errors)} problems in the config: " + "; ".join(errors)


def _type_ok(name: str, value: Any) -> str | None:
    """An error for a value of the wrong type, or None."""
    f = FIELDS[name]
    default = f.default
    if value is None:
        return None if default is None else f"{name} must not be empty"
    if isinstance(default, bool) or name in ("use_cpu", "fsdp_cpu_offload"):
        return None if isinstance(value, bool) else f"{name}={value!r} must be true or false"
    if name in ("monitor_interval", "collective_timeout"):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else f"{name}={value!r} must be a number of seconds"
    if isinstance(default, int) or name == "main_process_port":
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else f"{name}={value!r} must be a whole number"
    return None if isinstance(value, str) else f"{name}={value!r} must be a string"


def validate_values(values: dict[str, Any]) -> list[str]:
    """Every problem in ``values`` (keys, types, ranges, combinations), as messages."""
    errors = []
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        errors.append(
            f"unknown key(s) {', '.join(map(repr, unknown))}; allowed keys are {', '.join(FIELDS)}"
        )
    for name, value in values.items():
        if name not in FIELDS:
            continue
        problem = _type_ok(name, value)
        if problem:
            errors.append(problem)
            continue
        meta = FIELDS[name].metadata
        if value is None:
            continue
        if "choices" in meta and value not in meta["choices"]:
            errors.append(f"{name}={value!r} is not allowed; choose one of {', '.join(map(repr, meta['choices']))}")
        if "minimum" in meta and value < meta["minimum"]:
            errors.append(f"{name}={value!r} is out of range; it must be >= {meta['minimum']}"
                          + (f" and <= {meta['maximum']}" if "maximum" in meta else ""))
        elif "maximum" in meta and value > meta["maximum"]:
            errors.append(f"{name}={value!r} is out of range; it must be from {meta.get('minimum', 0)} to "
                          f"{meta['maximum']}")
        if meta.get("positive") and not value > 0:
            errors.append(f"{name}={value!r} must be > 0")
    if errors:
        return errors
    v = {**{n: f.default for n, f in FIELDS.items()}, **values}
    if v["machine_rank"] >= v["num_machines"]:
        errors.append(f"machine_rank={v['machine_rank']} must be below num_machines={v['num_machines']} "
                      "(ranks count from 0)")
    if v["num_processes"] % v["num_machines"]:
        errors.append(
            f"num_processes={v['num_processes']} must be a multiple of num_machines={v['num_machines']} "
            "(the same number of processes on every machine)"
        )
    if v["num_machines"] > 1 and not v["main_process_ip"]:
        errors.append(f"num_machines={v['num_machines']} needs main_process_ip (the address of machine 0)")
    if v["offload_param_device"] != "none" and v["zero_stage"] != 3:
        errors.append(f"offload_param_device={v['offload_param_device']!r} needs zero_stage=3 (got {v['zero_stage']}); "
                      "parameters can only be offloaded when they are sharded")
    if v["offload_optimizer_device"] != "none" and v["zero_stage"] == 0:
        errors.append("offload_optimizer_device='cpu' needs zero_stage 1, 2 or 3")
    if v["fsdp_sharding_strategy"] and v["zero_stage"]:
        errors.append(f"choose either zero_stage={v['zero_stage']} or "
                      f"fsdp_sharding_strategy={v['fsdp_sharding_strategy']!r}, not both")
    if v["gpu_ids"] not in (None, "all") and not all(p.strip().isdigit() for p in str(v["gpu_ids"]).split(",")):
        errors.append(f"gpu_ids={v['gpu_ids']!r} must be 'all' or GPU indices like '0,1'")
    if v["mixed_precision"] == "fp8" and v["use_cpu"]:
        errors.append("mixed_precision='fp8' needs a GPU with compute capability >= 8.9; it cannot run with "
                      "use_cpu=true")
    return errors


def default_config_path() -> str:
    """``$SURGE_CONFIG_FILE``, else ``$XDG_CACHE_HOME/surge/default_config.yaml`` (XDG_CACHE_HOME
    defaults to ``~/.cache``)."""
    explicit = os.environ.get(ENV_VAR)
    if explicit:
        return explicit
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "surge", "default_config.yaml")


def read_values(path: str) -> dict[str, Any]:
    """The raw key/values of a config file (validated, not yet filled with defaults).

    Raises:
        ConfigError: missing file, unreadable YAML, not a mapping, or bad values.
    """
    import yaml

    try:
        with open(path) as f:
            data = yaml.safe_load(f)
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
    # YAML 1.1 reads `mixed_precision: no` (and `dynamo_backend: no`) as false and `gpu_ids: 0` as a number; take
    # them as the user meant them.
    for key in ("mixed_precision", "dynamo_backend"):
        if data.get(key) is False:
            data[key] = "no"
    if isinstance(data.get("gpu_ids"), int) and not isinstance(data.get("gpu_ids"), bool):
        data["gpu_ids"] = str(data["gpu_ids"])
    bad_keys = [k for k in data if not isinstance(k, str)]
    if bad_keys:
        raise ConfigError(f"config file {path!r} has non-text keys {bad_keys!r}; allowed keys are {', '.join(FIELDS)}")
    errors = validate_values(data)
    if errors:
        raise ConfigError(f"config file {path!r}: " + _join(errors))
    return data


def load_config(path: str) -> SurgeConfig:
    """Read and validate a config file (see :func:`read_values`)."""
    return SurgeConfig(**read_values(path))


def write_config(config: SurgeConfig | dict[str, Any], path: str) -> None:
    """Write ``config`` as YAML to ``path`` atomically (all fields, or the given mapping).

    Raises:
        ConfigError: the path cannot be written (the message names it).
    """
    import tempfile

    import yaml

    values = dataclasses.asdict(config) if isinstance(config, SurgeConfig) else dict(config)
    text = "# surge config: edit by hand or rerun `surge config`\n" + yaml.safe_dump(values, sort_keys=False)
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
                     "nonfinite": "nonfinite"}
SHARDING_KEYS = ("zero_stage", "offload_optimizer_device", "offload_param_device", "deepspeed_config_file",
                  "fsdp_sharding_strategy", "fsdp_cpu_offload")


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
