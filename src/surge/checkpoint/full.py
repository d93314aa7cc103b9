"""The full checkpoint layout: the main process writes every tensor in one file per
model (safetensors) and per optimizer (``torch.save``, keyed by parameter name).

Chosen by strategies where one process holds everything (one process, DDP), and by
FSDP with ``state_dict_type="FULL_STATE_DICT"``, which gathers the shards to the main
process first (see [Note: checkpoint layout] in checkpoint/training.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn

from surge.checkpoint.keys import optimizer_state, owner_index
from surge.process_group import barrier


def dedup_storage(state: dict[str, torch.Tensor], copy: bool) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors for safetensors; shared storage (tied weights) is written
    under each of its names as separate copies. ``copy`` makes every tensor a copy."""
    seen: set[tuple[int, Any]] = set()
    out = {}
    for name, tensor in state.items():
        cpu = tensor.detach().cpu()
        key = (cpu.untyped_storage().data_ptr(), cpu.storage_offset())
        out[name] = cpu.clone(memory_format=torch.contiguous_format) if copy or key in seen else cpu.contiguous()
        seen.add(key)
    return out


def _save_safetensors(state: dict[str, torch.Tensor], path: str) -> None:
    from safetensors.torch import save_file

    save_file(state, path, metadata={"format": "pt"})


def load_safetensors(path: str) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors, with a clear error naming a missing or corrupted file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file as load_safetensors_file

    try:
        return load_safetensors_file(path)
    except FileNotFoundError:
        raise ValueError(f"checkpoint file {path!r} is missing.") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"checkpoint file {path!r} is corrupted or truncated ({exc}).") from None


Write = tuple[str, Callable[[Any, str], None], Any]
"""A file the main process writes: (name in the checkpoint, saver(value, path), value)."""


class FullWriter:
    """Writes the full layout; ``gather=True`` gathers sharded state to the main process
    first (a collective: every process must call it)."""

    sharded = False

    def __init__(self, gather: bool = False) -> None:
        self.gather = gather

    @property
    def collective(self) -> bool:
        return self.gather

    def write_tensors(self, staging: str, *, topology: Any, models: list[nn.Module], optimizers: list[Any],
                      copy: Callable[[Any], Any], background: bool, group: Any = None,
                      weighted: list[nn.Module] | None = None) -> tuple[list[Write], list[str], Any]:
        """The model and optimizer files for the main process to write (nothing is
        written here), no files written directly, no background future. ``weighted``
        (default: ``models``) are the models whose weights are written, in that order;
        ``models`` name the optimizers' parameters."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        main = topology.is_main_process
        # Gathering is a collective that leaves the whole state on the main process (in
        # CPU memory); without it the main process holds everything already.
        options = StateDictOptions(full_state_dict=True, cpu_offload=True) if self.gather else None
        writes: list[Write] = []
        for i, model in enumerate(models if weighted is None else weighted):
            weights = cast(dict[str, torch.Tensor], get_model_state_dict(model, options=options))  # plain tensors
            if main:
                writes.append((f"model_{i}.safetensors", _save_safetensors, dedup_storage(weights, copy=background)))
        for i, opt in enumerate(optimizers):
            state, _ = optimizer_state(models[owner_index(models, opt)], opt, options=options)
            if main:
                writes.append((f"optimizer_{i}.pt", torch.save, copy(state)))
        if self.gather:
            barrier(topology)  # every process's own file is written
        return writes, [], None


def load_models(directory: str, models: list[nn.Module], strict: bool) -> None:
    """Load each ``model_<i>.safetensors`` into its model, whatever its sharding."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    full = StateDictOptions(full_state_dict=True, strict=strict)
    for i, model in enumerate(models):
        weights: dict[str, Any] = load_safetensors(os.path.join(directory, f"model_{i}.safetensors"))
        set_model_state_dict(model, weights, options=full)
