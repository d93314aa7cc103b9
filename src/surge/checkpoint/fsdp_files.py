"""HF Accelerate's FSDP checkpoint functions (``accelerate.utils.save_fsdp_model`` and
friends), in Accelerate's file layout, on surge's writers.

``state_dict_type`` (the plugin's, else the Accelerator's) chooses the layout, as in
Accelerate:

- FULL_STATE_DICT: the main process writes ``pytorch_model_fsdp.bin``
  (``pytorch_model_fsdp_<i>.bin`` for ``model_index`` i > 0) and ``optimizer.bin``
  (``optimizer_<i>.bin``) with ``torch.save``, gathered from every process's shards;
- SHARDED_STATE_DICT: every process writes its shards through
  ``torch.distributed.checkpoint`` into ``pytorch_model_fsdp_<i>/`` (``{"model": ...}``)
  and ``optimizer_<i>/`` (``{"optimizer": ...}``), readable at another world size and
  mergeable offline (``merge_fsdp_weights``).

Files and directories are written aside and renamed into place (see [Note: write aside,
then rename] in atomic.py); loading reads with ``weights_only=True``. Every function is a
collective: all processes call it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from surge.checkpoint.atomic import atomic_write, replace_directory
from surge.checkpoint.sharded import single_process_is_fine

MODEL_NAME = "pytorch_model_fsdp"
OPTIMIZER_NAME = "optimizer"

__all__ = ["load_fsdp_model", "load_fsdp_optimizer", "save_fsdp_model", "save_fsdp_optimizer"]


def _full(fsdp_plugin: Any, accelerator: Any) -> bool:
    plugin = fsdp_plugin
    if plugin is None:
        plugin = getattr(getattr(accelerator, "plan", None), "fsdp_plugin", None)
    kind = getattr(plugin, "state_dict_type", "FULL_STATE_DICT")
    name = str(getattr(kind, "name", kind)).upper()
    if name not in ("FULL_STATE_DICT", "SHARDED_STATE_DICT"):
        raise ValueError(f"state_dict_type={kind!r}: surge writes FULL_STATE_DICT or SHARDED_STATE_DICT.")
    return name == "FULL_STATE_DICT"


def _check(adapter_only: bool, use_dcp: bool) -> None:
    if adapter_only:
        raise ValueError("adapter_only=True is not available in surge's save/load_fsdp_*; save a PEFT adapter with "
                         "accelerator.unwrap_model(model).save_pretrained(dir) instead.")
    if not use_dcp:
        raise ValueError("use_dcp=False (one torch.save file per rank) is not available in surge; use the default "
                         "use_dcp=True, whose files load at any world size.")


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _main(accelerator: Any) -> bool:
    return bool(accelerator.is_main_process)


def _inner(optimizer: Any) -> torch.optim.Optimizer:
    """The optimizer that holds the parameters (surge's prepared wrapper unwrapped)."""
    while hasattr(optimizer, "optimizer") and isinstance(optimizer.optimizer, torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer  # type: ignore[no-any-return]


def _file(output_dir: str | os.PathLike[str], stem: str, index: int) -> str:
    return os.path.join(os.fspath(output_dir), f"{stem}.bin" if index == 0 else f"{stem}_{index}.bin")


def _dcp_dir(directory: str | os.PathLike[str], stem: str, index: int) -> str:
    directory = os.fspath(directory)
    name = f"{stem}_{index}"
    return directory if os.path.basename(os.path.normpath(directory)) == name else os.path.join(directory, name)


@contextlib.contextmanager
def _shared_staging(accelerator: Any, target: str) -> Iterator[str]:
    """A staging directory beside ``target`` that every process writes into; renamed to
    ``target`` by the main process once all have written."""
    import uuid

    from surge.checkpoint.atomic import TMP_PREFIX
    from surge.ops import broadcast_object_list

    parent = os.path.dirname(os.path.abspath(target))
    name = f"{TMP_PREFIX}{uuid.uuid4().hex}-{os.path.basename(target)}"
    if _distributed():
        name = broadcast_object_list([name])[0]  # rank 0's choice for everyone
    staging = os.path.join(parent, name)
    if _main(accelerator):
        os.makedirs(staging)
    accelerator.wait_for_everyone()
    yield staging
    accelerator.wait_for_everyone()
    if _main(accelerator):
        replace_directory(staging, target)
    accelerator.wait_for_everyone()


def _dcp_save(state: dict[str, Any], directory: str) -> None:
    from torch.distributed.checkpoint.state_dict_saver import save

    with single_process_is_fine():
        save(state, checkpoint_id=directory, no_dist=not _distributed())


def _dcp_load(state: dict[str, Any], directory: str) -> None:
    from torch.distributed.checkpoint.state_dict_loader import load

    if not os.path.isdir(directory):
        raise ValueError(f"{directory!r} does not exist: no sharded checkpoint to load there.")
    with single_process_is_fine():
        load(state, checkpoint_id=directory, no_dist=not _distributed())


def _torch_save(obj: Any, path: str) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _torch_load(path: str) -> Any:
    if not os.path.isfile(path):
        raise ValueError(f"{path!r} does not exist: no full checkpoint to load there.")
    return torch.load(path, map_location="cpu", weights_only=True)


def save_fsdp_model(fsdp_plugin: Any, accelerator: Any, model: nn.Module, output_dir: str | os.PathLike[str],
                    model_index: int = 0, adapter_only: bool = False, use_dcp: bool = True) -> None:
    """Save ``model``'s weights in Accelerate's FSDP layout (see the module doc). Works for
    any prepared model (sharded or not).

    Raises:
        ValueError: ``adapter_only=True`` or ``use_dcp=False`` (not available), a state-dict type
            other than full/sharded.
    """
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    _check(adapter_only, use_dcp)
    if _full(fsdp_plugin, accelerator):
        state = accelerator.get_state_dict(model)  # a collective; whole on the main process
        if _main(accelerator):
            os.makedirs(output_dir, exist_ok=True)
            _torch_save(state, _file(output_dir, MODEL_NAME, model_index))
        accelerator.wait_for_everyone()
        return
    if _main(accelerator):
        os.makedirs(output_dir, exist_ok=True)
    target = _dcp_dir(output_dir, MODEL_NAME, model_index)
    with _shared_staging(accelerator, target) as staging:
        _dcp_save({"model": get_model_state_dict(accelerator.unwrap_model(model))}, staging)


def load_fsdp_model(fsdp_plugin: Any, accelerator: Any, model: nn.Module, input_dir: str | os.PathLike[str],
                    model_index: int = 0, adapter_only: bool = False, use_dcp: bool = True) -> Any:
    """Load what :func:`save_fsdp_model` (or Accelerate's) wrote into the prepared ``model``;
    a full file is read by the main process and sent into every process's shards.

    Returns:
        The ``load_state_dict`` result (missing and unexpected keys).

    Raises:
        ValueError: as :func:`save_fsdp_model`; no checkpoint at ``input_dir``.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict

    _check(adapter_only, use_dcp)
    module = accelerator.unwrap_model(model)
    accelerator.wait_for_everyone()
    if _full(fsdp_plugin, accelerator):
        path = _file(input_dir, MODEL_NAME, model_index)
        if not _distributed():
            return module.load_state_dict(_torch_load(path))
        state = _torch_load(path) if _main(accelerator) else {}
        result = set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True,
                                                                              broadcast_from_rank0=True))
    else:
        template = {"model": get_model_state_dict(module)}
        _dcp_load(template, _dcp_dir(input_dir, MODEL_NAME, model_index))
        result = set_model_state_dict(module, template["model"])
    accelerator.wait_for_everyone()
    return result


def save_fsdp_optimizer(fsdp_plugin: Any, accelerator: Any, optimizer: Any, model: nn.Module,
                        output_dir: str | os.PathLike[str], optimizer_index: int = 0, use_dcp: bool = True) -> None:
    """Save ``optimizer``'s state (keyed by parameter name) in Accelerate's FSDP layout.

    Raises:
        ValueError: ``use_dcp=False``; an optimizer surge shards itself (ZeRO-1, optimizer
            offload: save those with ``accelerator.save_state``).
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    _check(False, use_dcp)
    module, inner = accelerator.unwrap_model(model), _optimizer_for(optimizer)
    if _full(fsdp_plugin, accelerator):
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_optimizer_state_dict(module, inner, options=options)  # a collective
        if _main(accelerator):
            os.makedirs(output_dir, exist_ok=True)
            _torch_save(state, _file(output_dir, OPTIMIZER_NAME, optimizer_index))
        accelerator.wait_for_everyone()
        return
    if _main(accelerator):
        os.makedirs(output_dir, exist_ok=True)
    target = _dcp_dir(output_dir, OPTIMIZER_NAME, optimizer_index)
    with _shared_staging(accelerator, target) as staging:
        _dcp_save({"optimizer": get_optimizer_state_dict(module, inner)}, staging)


def load_fsdp_optimizer(fsdp_plugin: Any, accelerator: Any, optimizer: Any, model: nn.Module,
                        input_dir: str | os.PathLike[str], optimizer_index: int = 0, adapter_only: bool = False,
                        use_dcp: bool = True) -> None:
    """Load what :func:`save_fsdp_optimizer` (or Accelerate's) wrote into ``optimizer``.

    Raises:
        ValueError: as :func:`save_fsdp_optimizer`; no checkpoint at ``input_dir``.
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    _check(adapter_only, use_dcp)
    module, inner = accelerator.unwrap_model(model), _optimizer_for(optimizer)
    accelerator.wait_for_everyone()
    if _full(fsdp_plugin, accelerator):
        path = _file(input_dir, OPTIMIZER_NAME, optimizer_index)
        if not _distributed():
            set_optimizer_state_dict(module, inner, _torch_load(path), options=StateDictOptions(full_state_dict=True))
            return
        state = _torch_load(path) if _main(accelerator) else {}
        set_optimizer_state_dict(module, inner, state, options=StateDictOptions(full_state_dict=True,
                                                                                broadcast_from_rank0=True))
    else:
        template = {"optimizer": get_optimizer_state_dict(module, inner)}
        _dcp_load(template, _dcp_dir(input_dir, OPTIMIZER_NAME, optimizer_index))
        set_optimizer_state_dict(module, inner, template["optimizer"])
    accelerator.wait_for_everyone()


def _optimizer_for(optimizer: Any) -> torch.optim.Optimizer:
    inner = _inner(optimizer)
    kind = type(inner).__name__
    if kind in ("ShardedOptimizer", "ZeroRedundancyOptimizer", "OffloadedOptimizer"):
        raise ValueError(f"save/load_fsdp_optimizer cannot read a {kind} (surge's ZeRO-1 / optimizer-offload "
                         "optimizer keeps its own state layout); use accelerator.save_state / load_state for it.")
    return inner
