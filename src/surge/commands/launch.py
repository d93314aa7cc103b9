"""``surge launch``: run a script on every local process through torch's elastic launcher.

The flags are derived from the config schema (config/file.py), so every config key is
also a flag with the same name and help.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from surge.config.file import (
    ENV_VAR,
    FIELDS,
    SHARDING_KEYS,
    ConfigError,
    SurgeConfig,
    default_config_path,
    read_values,
)

# Short aliases users know from `accelerate launch`.
ALIASES = {"use_cpu": ["--cpu"]}


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per config key (``--num_processes``, ``--mixed_precision``, ...), plus
    ``--config_file`` and ``--multi_gpu``. Unset flags are None (the file decides)."""
    parser.add_argument("--config_file", default=None,
                        help=f"Config file to start from (default: {default_config_path()}).")
    parser.add_argument("--multi_gpu", action="store_true",
                        help="Shorthand for --machine_type multi_gpu (one process per GPU).")
    group = parser.add_argument_group("settings (each overrides the same key of the config file)")
    for name, f in FIELDS.items():
        meta = f.metadata
        flags = [f"--{name}", *ALIASES.get(name, [])]
        if isinstance(f.default, bool):
            group.add_argument(*flags, dest=name, action="store_const", const=True, default=None, help=meta["help"])
        elif isinstance(f.default, float):
            group.add_argument(*flags, dest=name, type=_float, default=None, help=meta["help"])
        elif isinstance(f.default, int) or name == "main_process_port":
            group.add_argument(*flags, dest=name, type=_int, default=None, help=meta["help"])
        else:
            group.add_argument(*flags, dest=name, default=None, help=meta["help"], metavar=name.upper())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_flags(parser)
    parser.add_argument("-m", "--module", action="store_true", help="Run the target as a module (python -m).")
    parser.add_argument("script", help="The training script (or module with -m).")
    parser.add_argument("script_args", nargs=argparse.REMAINDER, default=[],
                        help="Arguments passed to the script untouched.")


def resolve_config(args: argparse.Namespace) -> tuple[SurgeConfig, dict[str, Any]]:
    """Config file values overlaid with the flags that were given.

    Returns the validated config and the mapping of keys that were set (by the file or
    a flag), which is what the workers are handed.

    Raises:
        ConfigError: a bad file or flag value, or an impossible combination.
    """
    path = args.config_file
    if path == "":
        raise ConfigError("--config_file '' is empty; give the path of a YAML file")
    if path is not None or os.environ.get(ENV_VAR):
        # An explicit file (flag or SURGE_CONFIG_FILE) must exist; a typo is an error.
        values = read_values(path or default_config_path())
    else:
        default = default_config_path()
        values = read_values(default) if os.path.exists(default) else {}
    flags = {name: getattr(args, name) for name in FIELDS if getattr(args, name, None) is not None}
    values.update(flags)
    if getattr(args, "multi_gpu", False):
        if values.get("use_cpu"):
            raise ConfigError("--multi_gpu and --cpu contradict each other; choose one")
        values["machine_type"] = "multi_gpu"
        if "num_processes" not in values:  # neither the file nor a flag set it: one per GPU
            ids = values.get("gpu_ids")
            values["num_processes"] = len(ids.split(",")) if ids not in (None, "all") else (_gpu_count() or 1)
    config = SurgeConfig(**values)
    _check_runnable(config)
    return config, values


def _check_runnable(config: SurgeConfig) -> None:
    """Refuse, before starting any process, what every worker would refuse."""
    from surge.config.plugins import plugins_from_config

    sharding = {k: v for k, v in config.changed().items() if k in SHARDING_KEYS}
    try:
        plugins_from_config(sharding)  # the plugins validate in their constructors
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    if config.mixed_precision == "fp8" and _gpu_count() == 0:
        raise ConfigError("mixed_precision='fp8' needs a CUDA GPU with compute capability >= 8.9 and none is visible; "
                          "use --mixed_precision bf16")


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def run(args: argparse.Namespace) -> int:
    from surge.launch.runner import launch

    config, values = resolve_config(args)
    return launch(config, values, args.script, list(args.script_args), module=args.module)
