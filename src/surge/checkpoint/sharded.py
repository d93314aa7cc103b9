"""The sharded checkpoint layout: every process writes its own shards of the models
and optimizers through ``torch.distributed.checkpoint`` (DCP), keyed by parameter
name, so they read back at another world size or strategy.

Chosen by ZeRO-1/2/3 and FSDP with ``SHARDED_STATE_DICT`` (see [Note: checkpoint
layout] in checkpoint/training.py). Optimizers that consolidate their own state
(ZeRO-1's) are written whole by the main process instead.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from surge.checkpoint.full import Write
from surge.checkpoint.keys import (
    by_name,
    consolidates,
    keep_state_only_for,
    named_positions,
    optimizer_state,
    owner_index,
)

TENSORS = "model_optimizer"
"""The DCP directory inside a sharded checkpoint."""


@contextlib.contextmanager
def single_process_is_fine() -> Iterator[None]:
    """DCP warns when there is no process group; one process is a normal case here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


class ShardedWriter:
    """Writes the sharded layout: a collective, every process must call it."""

    sharded = True
    collective = True

    def write_tensors(self, staging: str, *, topology: Any, models: list[nn.Module], optimizers: list[Any],
                      copy: Callable[[Any], Any], background: bool, group: Any = None,
                      weighted: list[nn.Module] | None = None) -> tuple[list[Write], list[str], Any]:
        """Save the shards into ``staging`` (in the background: DCP's ``async_save`` on
        ``group``, after staging the tensors to CPU memory); returns the consolidated
        optimizer files for the main process, the DCP directory's name and the future
        of a background save. ``weighted`` (default: ``models``) are the models whose
        weights are written, in that order; ``models`` name the optimizers' parameters."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict
        from torch.distributed.checkpoint.state_dict_saver import async_save, save

        main = topology.is_main_process
        writes: list[Write] = []
        tensors: dict[str, Any] = {f"model_{i}": get_model_state_dict(m)
                                   for i, m in enumerate(models if weighted is None else weighted)}
        for i, opt in enumerate(optimizers):
            if not consolidates(opt):
                state, fresh = optimizer_state(models[owner_index(models, opt)], opt)
                if not fresh:
                    tensors[f"optimizer_{i}"] = state
                elif main:  # no tensors yet: its param groups, whole, from the main process
                    writes.append((f"optimizer_{i}.pt", torch.save, copy(state)))
        for i, opt in enumerate(optimizers):
            if consolidates(opt):
                full = opt.state_dict()  # collective; the whole state on the main process
                if main:
                    names = named_positions(models[owner_index(models, opt)], opt)
                    writes.append((f"optimizer_{i}.pt", torch.save, copy(by_name(full, names))))
        # Each process wrote its own file before entering DCP's save, whose last step on
        # the main process gathers every process's result: once it returns (or its
        # background future completes) there, all files are written.
        checkpoint_id = os.path.join(staging, TENSORS)
        future = None
        with single_process_is_fine():
            if background:
                # DCP stages (copies) the tensors to CPU memory before returning.
                future = async_save(tensors, checkpoint_id=checkpoint_id, process_group=group)
            else:
                save(tensors, checkpoint_id=checkpoint_id)
        return writes, [TENSORS], future


def load_tensors(directory: str, models: list[nn.Module], optimizers: list[Any], strict: bool,
                 weighted: list[nn.Module] | None = None) -> None:
    """Load the DCP shards into the models (``weighted``, default ``models``, in their
    saved order) and the optimizers that have no whole ``optimizer_<i>.pt`` file,
    resharding to this run's layout."""
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )
    from torch.distributed.checkpoint.state_dict_loader import load

    weighted = models if weighted is None else weighted
    state: dict[str, Any] = {f"model_{i}": get_model_state_dict(m) for i, m in enumerate(weighted)}
    saved = _saved_keys(os.path.join(directory, TENSORS))
    kept: dict[int, set[str]] = {}  # parameters that have optimizer state in the checkpoint
    for i, opt in enumerate(optimizers):
        if not consolidates(opt) and not os.path.exists(os.path.join(directory, f"optimizer_{i}.pt")):
            target: dict[str, Any] = dict(get_optimizer_state_dict(models[owner_index(models, opt)], opt))
            prefix = f"optimizer_{i}.state."
            kept[i] = {name for name in target["state"]
                       if any(key.startswith(f"{prefix}{name}.") for key in saved)}
            target["state"] = {name: v for name, v in target["state"].items() if name in kept[i]}
            state[f"optimizer_{i}"] = target
    try:
        with single_process_is_fine():
            load(state, checkpoint_id=os.path.join(directory, TENSORS),
                 planner=DefaultLoadPlanner(allow_partial_load=not strict))
    except Exception as exc:  # DCP wraps reader errors (per rank) in its own exception types
        detail = [line for line in str(exc).strip().splitlines() if line.strip()]
        raise ValueError(f"checkpoint {os.path.join(directory, TENSORS)!r} could not be read: "
                         f"{detail[-1] if detail else type(exc).__name__}.") from None
    for i, model in enumerate(weighted):
        set_model_state_dict(model, state[f"model_{i}"], options=StateDictOptions(strict=strict))
    for i, opt in enumerate(optimizers):
        if f"optimizer_{i}" in state:
            model = models[owner_index(models, opt)]
            # Not strict: parameters without saved state (never given a gradient) keep none.
            set_optimizer_state_dict(model, opt, state[f"optimizer_{i}"], options=StateDictOptions(strict=False))
            keep_state_only_for(opt, model, kept[i])


def _saved_keys(checkpoint_id: str) -> set[str]:
    """The (flattened) keys a DCP checkpoint holds; empty when its metadata is unreadable
    (the load below then names the problem)."""
    from torch.distributed.checkpoint.filesystem import FileSystemReader

    try:
        return set(FileSystemReader(checkpoint_id).read_metadata().state_dict_metadata)
    except Exception:  # a missing or corrupted .metadata: reported by the load itself
        return set()
