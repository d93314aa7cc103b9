"""``accelerate.utils.other``: small helpers scripts import from Accelerate."""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path
from typing import Any

from torch import nn

from surge.extras import keep_compiled
from surge.precision.base import remove_autocast_forward
from surge.strategies.base import unwrap_module

__all__ = [
    "convert_bytes",
    "extract_model_from_parallel",
    "get_free_port",
    "get_pretty_name",
    "is_compiled_module",
    "is_port_in_use",
    "merge_dicts",
    "recursive_getattr",
    "wait_for_everyone",
    "write_basic_config",
]


def extract_model_from_parallel(model: nn.Module, keep_fp32_wrapper: bool = True, keep_torch_compile: bool = True,
                                recursive: bool = False) -> nn.Module:
    """The user's module inside DDP / DataParallel wrappers (``Accelerator.unwrap_model``'s
    rules: ``keep_fp32_wrapper=False`` removes the mixed-precision forward;
    ``keep_torch_compile=True`` keeps a compiled model compiled, without changing it)."""
    inner = unwrap_module(model)
    if not keep_fp32_wrapper:
        inner = remove_autocast_forward(inner)
    return keep_compiled(model, inner) if keep_torch_compile else inner


def is_compiled_module(module: Any) -> bool:
    """True for a ``torch.compile``-d module."""
    return hasattr(module, "dynamo_ctx") and isinstance(getattr(module, "_orig_mod", None), nn.Module)


def wait_for_everyone() -> None:
    """Block until every process reaches this line (a barrier; nothing for one process)."""
    from surge.process_group import process_group_active

    if process_group_active():
        import torch.distributed as dist

        dist.barrier()


def write_basic_config(mixed_precision: str = "no", save_location: str | os.PathLike[str] | None = None) -> Path | bool:
    """Write surge's default config file (every GPU, else one CPU process) with
    ``mixed_precision``, as ``surge config --default`` does; ``save_location`` defaults to
    surge's default config path. An existing file is kept (returns False, as Accelerate).

    Returns:
        The path written, or False when a file was already there.

    Raises:
        ValueError: an unknown ``mixed_precision``.
    """
    from surge.commands.config import _gpus, default_config
    from surge.config._validate import check_choice
    from surge.config.file import default_config_path, write_config

    mixed_precision = check_choice("mixed_precision", mixed_precision, ("no", "fp16", "bf16", "fp8"))
    path = Path(save_location) if save_location is not None else Path(default_config_path())
    if path.exists():
        print(f"Configuration already exists at {path}, will not override. Run `surge config` or pass another "
              "save_location.")
        return False
    config = dataclasses.replace(default_config(*_gpus()), mixed_precision=mixed_precision)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_config(config, str(path))
    return path


def get_pretty_name(obj: Any) -> str:
    """``obj``'s qualified name (of its class when it has none)."""
    if not hasattr(obj, "__qualname__") and not hasattr(obj, "__name__"):
        obj = getattr(obj, "__class__", obj)
    return str(getattr(obj, "__qualname__", getattr(obj, "__name__", obj)))


def merge_dicts(source: dict[str, Any], destination: dict[str, Any]) -> dict[str, Any]:
    """Merge ``source`` into ``destination`` recursively (nested dicts merged); returns it."""
    for key, value in source.items():
        if isinstance(value, dict):
            merge_dicts(value, destination.setdefault(key, {}))
        else:
            destination[key] = value
    return destination


def is_port_in_use(port: int | None = None) -> bool:
    """Whether something listens on ``port`` of localhost (default 29500)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex(("localhost", port or 29500)) == 0


def get_free_port() -> int:
    """A TCP port on localhost that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def convert_bytes(size: float) -> str:
    """``size`` bytes as a human-readable string ("1.5 GB")."""
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if size < 1024.0:
            return f"{round(size, 2)} {unit}"
        size /= 1024.0
    return f"{round(size, 2)} PB"


def recursive_getattr(obj: Any, attr: str) -> Any:
    """``obj.a.b.c`` for ``attr="a.b.c"``."""
    for name in attr.split("."):
        obj = getattr(obj, name)
    return obj

