"""Finding a model's blocks (the units sharded one by one and checkpointed one by one),
and per-block activation checkpointing."""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch import nn


def find_blocks_by_size(model: nn.Module, min_num_params: int) -> list[nn.Module]:
    """SIZE_BASED_WRAP: every submodule holding at least ``min_num_params`` parameters
    that no already chosen descendant covers, innermost first (the order ``fully_shard``
    must be applied in). The root is never chosen: it is sharded last anyway."""
    chosen: list[nn.Module] = []

    def uncovered(module: nn.Module) -> int:
        count = sum(p.numel() for p in module.parameters(recurse=False))
        count += sum(uncovered(child) for child in module.children())
        if module is not model and count >= min_num_params:
            chosen.append(module)
            return 0
        return count

    uncovered(model)
    return chosen


def outermost(modules: list[nn.Module]) -> list[nn.Module]:
    """``modules`` without those nested inside another of them."""
    return [m for m in modules if not any(m is not o and any(m is d for d in o.modules()) for o in modules)]


def find_blocks(model: nn.Module, class_names: list[str] | None = None) -> list[nn.Module]:
    """The modules to shard one by one, outermost first, never nested in each other.

    Taken from ``class_names`` when given, else from transformers'
    ``_no_split_modules``, else the children of any ``nn.ModuleList`` whose entries
    repeat one class (the usual stack of transformer layers).
    """
    if class_names is not None and not class_names:
        return []  # NO_WRAP: the root alone
    names = set(class_names or getattr(model, "_no_split_modules", None) or [])
    if names:
        chosen = [m for m in model.modules() if type(m).__name__ in names and m is not model]
        if class_names and not chosen:
            raise ValueError(
                f"transformer_layer_cls_to_wrap={class_names} matches no submodule of {type(model).__name__}; "
                f"its submodule classes include {sorted({type(m).__name__ for m in model.modules()})[:12]}."
            )
    else:
        chosen = []
        for m in model.modules():
            if isinstance(m, nn.ModuleList) and len(m) > 1:
                kinds = Counter(type(c) for c in m)
                if len(kinds) == 1:
                    chosen.extend(m)
    return outermost(chosen)


class CheckpointedForward:
    """Replaces a block's ``forward``: its activations are recomputed in backward instead
    of stored (non-reentrant ``torch.utils.checkpoint``). Set as an instance attribute,
    like the autocast forward, so the block's class and state dict keys are unchanged."""

    def __init__(self, forward: Any) -> None:
        self.__wrapped__ = forward

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from torch.utils.checkpoint import checkpoint

        return checkpoint(self.__wrapped__, *args, use_reentrant=False, **kwargs)


def checkpoint_block(block: nn.Module) -> None:
    """Recompute ``block``'s activations in backward (idempotent)."""
    if not isinstance(block.__dict__.get("forward"), CheckpointedForward):
        block.forward = CheckpointedForward(block.forward)


def compile_forward(module: nn.Module, options: dict[str, Any]) -> None:
    """Replace ``module.forward`` by a ``torch.compile``d call of it, in place.

    Dynamo does not start tracing inside torch.nn's own files (``Module.compile`` on
    ``_call_impl`` is skipped), so compilation starts at a small function of ours that
    calls the forward; the module's hooks stay outside the compiled code.
    """
    forward = module.forward

    def compiled_region(*args: Any, **kwargs: Any) -> Any:
        return forward(*args, **kwargs)

    module.forward = torch.compile(compiled_region, **options)
