"""Training checkpoints: models, optimizers, schedulers, the loss scaler and caller
state, saved and loaded by every process together.

[Note: checkpoint layout]
A checkpoint is a directory:

- ``model_optimizer/``: the models' and optimizers' tensors through
  ``torch.distributed.checkpoint`` (DCP), keyed by parameter name. Sharded states
  (FSDP2 DTensors, optimizer state of parameter shards) are written by the process
  holding each piece and can be read back at another world size or strategy;
  replicated ones are written once.
- ``optimizer_<i>.pt``: an optimizer that consolidates its own state (ZeRO-1's
  ``ZeroRedundancyOptimizer``), written whole by the main process.
- ``state.pt``: schedulers, the loss scaler and the caller's ``extra`` state (main
  process), read back with ``torch.load(weights_only=True)``: no code runs on load.
- ``surge_checkpoint.json``: the manifest (version, world size, strategy, files),
  written last inside the checkpoint.

The directory is assembled under a temporary name next to its destination and renamed
into place only once every process has finished (see checkpoint/atomic.py): a save
killed midway leaves the previous checkpoint as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from surge.checkpoint.atomic import TMP_PREFIX, _fsync_dir, atomic_write

MANIFEST = "surge_checkpoint.json"
TENSORS = "model_optimizer"
STATE = "state.pt"


def _consolidates(optimizer: Any) -> bool:
    """True for optimizers that gather their sharded state themselves (ZeRO-1)."""
    return hasattr(optimizer, "consolidate_state_dict")


def _owner(models: list[nn.Module], optimizer: torch.optim.Optimizer) -> int:
    """Which model holds the optimizer's parameters."""
    params = {id(p) for g in optimizer.param_groups for p in g["params"]}
    for i, model in enumerate(models):
        if any(id(p) in params for p in model.parameters()):
            return i
    raise ValueError("an optimizer to checkpoint holds parameters of no prepared model; prepare the model with it.")


def _tensor_state(models: list[nn.Module], optimizers: list[Any]) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    state: dict[str, Any] = {f"model_{i}": get_model_state_dict(m) for i, m in enumerate(models)}
    for i, opt in enumerate(optimizers):
        if not _consolidates(opt):
            state[f"optimizer_{i}"] = get_optimizer_state_dict(models[_owner(models, opt)], opt)
    return state


@contextlib.contextmanager
def _single_process_is_fine() -> Iterator[None]:
    """DCP warns when there is no process group; one process is a normal case here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _inner(optimizer: Any) -> Any:
    return getattr(optimizer, "optimizer", optimizer)


def save_training_state(
    directory: str | os.PathLike[str],
    *,
    topology: Any,
    strategy_name: str,
    models: list[nn.Module],
    optimizers: list[Any],
    schedulers: list[Any],
    precision_state: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> str:
    """Write a checkpoint to ``directory`` (a collective: every process calls it).

    An existing checkpoint at ``directory`` is replaced only after the new one is
    complete. Returns the directory.
    """
    import torch.distributed.checkpoint as dcp

    from surge.ops import broadcast_object_list

    directory = os.path.abspath(os.fspath(directory))
    parent = os.path.dirname(directory)
    main = topology.is_main_process
    staging = os.path.join(parent, f"{TMP_PREFIX}{os.path.basename(directory)}")
    if main:
        os.makedirs(parent, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)  # what an earlier killed save left
        os.mkdir(staging)
    if topology.is_distributed:
        broadcast_object_list([None])  # the staging directory exists before anyone writes
    optimizers = [_inner(o) for o in optimizers]
    with _single_process_is_fine():
        dcp.save(_tensor_state(models, optimizers), checkpoint_id=os.path.join(staging, TENSORS))
    files = [TENSORS]
    for i, opt in enumerate(optimizers):
        if _consolidates(opt):
            full = opt.state_dict()  # collective; the whole state on the main process
            if main:
                torch.save(full, os.path.join(staging, f"optimizer_{i}.pt"))
            files.append(f"optimizer_{i}.pt")
    if main:
        torch.save({"schedulers": [s.state_dict() for s in schedulers], "precision": precision_state,
                    "extra": extra or {}}, os.path.join(staging, STATE))
        files.append(STATE)
        from surge import __version__

        manifest = {"format": 1, "surge_version": __version__, "world_size": topology.world_size,
                    "strategy": strategy_name, "models": len(models), "optimizers": len(optimizers),
                    "schedulers": len(schedulers), "files": files}
        with open(os.path.join(staging, MANIFEST), "w") as f:
            json.dump(manifest, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
    if topology.is_distributed:
        broadcast_object_list([None])  # every process finished writing
    if main:
        _replace_directory(staging, directory)
    if topology.is_distributed:
        broadcast_object_list([None])  # the checkpoint is in place before anyone reads it
    return directory


def _replace_directory(staging: str, directory: str) -> None:
    """Rename ``staging`` to ``directory``; an old ``directory`` is set aside first and
    removed only after the new one is in place."""
    old = None
    if os.path.exists(directory):
        old = os.path.join(os.path.dirname(directory), f"{TMP_PREFIX}old-{os.path.basename(directory)}")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(directory, old)
    os.rename(staging, directory)
    _fsync_dir(os.path.dirname(directory))
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a complete checkpoint.

    Raises:
        ValueError: ``directory`` is not a complete surge checkpoint (named).
    """
    path = os.path.join(os.fspath(directory), MANIFEST)
    try:
        with open(path) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{os.fspath(directory)!r} is not a complete surge checkpoint: {MANIFEST} is missing "
                         "(the save did not finish, or this is not a checkpoint directory).") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"checkpoint manifest {path!r} is corrupted: {exc.msg}.") from None
    return manifest


def _load_file(path: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"checkpoint file {path!r} is missing.") from None
    except (RuntimeError, pickle.UnpicklingError, EOFError, OSError) as exc:
        raise ValueError(f"checkpoint file {path!r} is corrupted or truncated ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}).") from None


def load_training_state(
    directory: str | os.PathLike[str],
    *,
    models: list[nn.Module],
    optimizers: list[Any],
    schedulers: list[Any],
    load_precision_state: Any = None,
    strict: bool = True,
    partial: bool = False,
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_training_state` into the given objects
    (a collective). Returns the caller's ``extra`` state.

    ``strict=False`` tolerates model keys missing on either side; ``partial=True``
    loads only the optimizers/schedulers given (the first ones saved), e.g. weights only.

    Raises:
        ValueError: an incomplete or corrupted checkpoint, or one holding a different
            number of models/optimizers/schedulers (the file or count is named).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    directory = os.fspath(directory)
    manifest = read_manifest(directory)
    counts = {"models": len(models), "optimizers": len(optimizers), "schedulers": len(schedulers)}
    for key, count in counts.items():
        if (manifest.get(key) != count) if not partial or key == "models" else (manifest.get(key, 0) < count):
            raise ValueError(f"checkpoint {directory!r} holds {manifest.get(key)} {key} but {count} were prepared; "
                             "prepare the same objects as the run that saved it.")
    optimizers = [_inner(o) for o in optimizers]
    state = _tensor_state(models, optimizers)
    try:
        with _single_process_is_fine():
            dcp.load(state, checkpoint_id=os.path.join(directory, TENSORS),
                     planner=DefaultLoadPlanner(allow_partial_load=not strict))
    except Exception as exc:  # DCP wraps reader errors in its own exception types
        detail = str(exc).strip().splitlines()
        raise ValueError(f"checkpoint {os.path.join(directory, TENSORS)!r} could not be read: "
                         f"{detail[-1] if detail else type(exc).__name__}.") from None
    for i, model in enumerate(models):
        set_model_state_dict(model, state[f"model_{i}"], options=StateDictOptions(strict=strict))
    for i, opt in enumerate(optimizers):
        if _consolidates(opt):
            opt.load_state_dict(_load_file(os.path.join(directory, f"optimizer_{i}.pt")))
        else:
            set_optimizer_state_dict(models[_owner(models, opt)], opt, state[f"optimizer_{i}"])
    rest = _load_file(os.path.join(directory, STATE))
    for scheduler, sd in zip(schedulers, rest["schedulers"]):
        scheduler.load_state_dict(sd)
    if load_precision_state is not None:
        load_precision_state(rest["precision"])
    return rest["extra"]


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Atomically write a small text file (e.g. ``latest``)."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)

    atomic_write(path, write)
