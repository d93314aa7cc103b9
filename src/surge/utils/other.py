"""``accelerate.utils.other``: small helpers scripts import from Accelerate."""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import re
import socket
from collections import defaultdict
from pathlib import Path
from typing import IO, Any, cast

import torch
from torch import nn

from surge.extras import keep_compiled
from surge.precision.base import remove_autocast_forward
from surge.strategies.base import unwrap_module

__all__ = [
    "check_os_kernel",
    "clean_state_dict_for_safetensors",
    "compile_regions",
    "compile_regions_deepspeed",
    "convert_bytes",
    "extract_model_from_parallel",
    "get_free_port",
    "get_pretty_name",
    "has_compiled_regions",
    "is_compiled_module",
    "is_port_in_use",
    "load",
    "merge_dicts",
    "model_has_dtensor",
    "recursive_getattr",
    "save",
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



logger = logging.getLogger(__name__)


def clean_state_dict_for_safetensors(state_dict: dict[str, Any]) -> dict[str, Any]:
    """``state_dict`` ready for safetensors: of tensors sharing storage (tied weights) only
    the first name is kept (the others are removed from ``state_dict`` itself, with a
    warning), and every tensor is made contiguous."""
    from surge.utils.modeling import id_tensor_storage

    shared: defaultdict[Any, list[str]] = defaultdict(list)
    for name, tensor in state_dict.items():
        if isinstance(tensor, torch.Tensor):
            shared[id_tensor_storage(tensor)].append(name)
    removed = [name for names in shared.values() for name in names[1:]]
    for name in removed:
        del state_dict[name]
    if removed:
        logger.warning("Removed shared tensors %s while saving (tied to another entry); retie them after loading "
                       "(surge.utils.retie_parameters) if the model does not do it itself.", removed)
    return {k: v.contiguous() if isinstance(v, torch.Tensor) else v for k, v in state_dict.items()}


def save(obj: Any, f: str | os.PathLike[str] | IO[bytes], save_on_each_node: bool = False,
         safe_serialization: bool = False) -> None:
    """``torch.save`` (``safe_serialization``: safetensors, for a dict of tensors) on the
    main process only (``save_on_each_node``: on each machine's local main process).
    A path is written atomically (a temporary file, then renamed): an existing file is
    replaced whole or not at all.

    Raises:
        TypeError: ``safe_serialization`` with something other than a dict of tensors.
    """
    from surge.state import PartialState

    state = PartialState()
    if not (state.is_local_main_process if save_on_each_node else state.is_main_process):
        return
    if safe_serialization:
        if not isinstance(obj, dict):
            raise TypeError(f"save(safe_serialization=True) writes a dict of tensors, not {type(obj).__name__}; "
                            "pass a state_dict, or safe_serialization=False.")
        from safetensors.torch import save as to_bytes
        from safetensors.torch import save_file

        tensors = clean_state_dict_for_safetensors(dict(obj))

        def write(path: str) -> None:
            save_file(tensors, path, metadata={"format": "pt"})

        if not isinstance(f, (str, os.PathLike)):
            f.write(to_bytes(tensors, metadata={"format": "pt"}))
            return
    else:
        if not isinstance(f, (str, os.PathLike)):
            torch.save(obj, f)
            return

        def write(path: str) -> None:
            torch.save(obj, path)

    from surge.checkpoint.atomic import atomic_write

    atomic_write(f, write)


def load(f: str | os.PathLike[str] | IO[bytes], map_location: Any = None, **kwargs: Any) -> Any:
    """``torch.load`` with ``weights_only=True`` unless ``kwargs`` says otherwise (nothing
    but tensors and plain values is unpickled)."""
    kwargs.setdefault("weights_only", True)
    return torch.load(f, map_location=map_location, **kwargs)


def check_os_kernel() -> None:
    """Warn (main process) on Linux older than 5.5, where processes can hang."""
    info = platform.uname()
    if info.system != "Linux":
        return
    found = re.match(r"(\d+)\.(\d+)\.(\d+)", info.release)
    if found is None:
        return
    version = tuple(int(x) for x in found.groups())
    if version < (5, 5, 0):
        from surge.logging import get_logger

        get_logger(__name__).warning(
            f"Detected kernel version {found.group(0)}, which is below the recommended minimum of 5.5.0; this can "
            "cause the process to hang. Upgrade the kernel to 5.5.0 or newer.", main_process_only=True)


def _is_repeated_blocks(module: nn.Module) -> bool:
    return isinstance(module, nn.ModuleList) and len(module) > 0 and all(isinstance(m, type(module[0])) for m in module)


def _has_repeated_blocks(module: nn.Module) -> bool:
    return bool(module._modules) and any(_is_repeated_blocks(m) for m in module.modules())


def compile_regions(module: nn.Module, **compile_kwargs: Any) -> nn.Module:
    """Regional compilation: each block of a ``ModuleList`` of same-class blocks (a
    transformer's layers) is compiled on its own, so the compiler compiles one and reuses
    it for the others; the modules around the blocks are compiled whole. ``compile_kwargs``
    go to ``torch.compile``.

    Returns a new module sharing ``module``'s parameters (``module`` is not changed), which
    keeps ``module`` as ``_orig_mod``; a model without repeated blocks is compiled whole.

    Example:
        >>> model = compile_regions(model, mode="reduce-overhead")
    """

    def compiled(part: nn.Module) -> nn.Module:
        if _is_repeated_blocks(part):
            blocks = cast(nn.ModuleList, part)
            return nn.ModuleList(cast(nn.Module, torch.compile(block, **compile_kwargs)) for block in blocks)
        if not _has_repeated_blocks(part):
            return torch.compile(part, **compile_kwargs)  # type: ignore[return-value]  # an OptimizedModule
        new = type(part).__new__(type(part))
        new.__dict__.update(part.__dict__)
        for name, value in list(new.__dict__.items()):  # methods bound to the old module
            if getattr(value, "__self__", None) is part and hasattr(value, "__func__"):
                new.__dict__[name] = value.__func__.__get__(new)
        new._modules = {name: compiled(child) for name, child in part.named_children()}
        return new

    result = compiled(module)
    if "_orig_mod" not in result.__dict__:
        result.__dict__["_orig_mod"] = module
    return result


def compile_regions_deepspeed(module: nn.Module, **compile_kwargs: Any) -> None:
    """:func:`compile_regions` in place, with ``Module.compile`` (for a model inside a
    DeepSpeed engine, whose hooks must stay on the same modules)."""
    if _is_repeated_blocks(module):
        for block in cast(nn.ModuleList, module):
            block.compile(**compile_kwargs)
    elif _has_repeated_blocks(module):
        for child in module.children():
            compile_regions_deepspeed(child, **compile_kwargs)
    else:
        module.compile(**compile_kwargs)


def has_compiled_regions(module: nn.Module) -> bool:
    """Whether a submodule of ``module`` is a ``torch.compile``-d module (as
    :func:`compile_regions` makes)."""
    from torch._dynamo.eval_frame import OptimizedModule

    return bool(module._modules) and any(isinstance(m, OptimizedModule) for m in module.modules())


def model_has_dtensor(model: nn.Module) -> bool:
    """Whether a parameter of ``model`` is a ``DTensor`` (sharded by FSDP2 / tensor parallelism)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())
