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


def find_blocks_by_policy(model: nn.Module, policy: Any) -> list[nn.Module]:
    """The submodules a callable wrap policy picks, innermost first (the order
    ``fully_shard`` must be applied in); the root is never picked (it is sharded last).

    ``policy`` is FSDP1's ``policy(module, recurse, nonwrapped_numel) -> bool`` (torch's
    ``transformer_auto_wrap_policy`` / ``size_based_auto_wrap_policy`` partials), a
    one-argument ``policy(module) -> bool`` (FSDP2 style), or torch's ``_Policy`` object
    (``ModuleWrapPolicy``, ``CustomPolicy``). ``nonwrapped_numel`` counts the parameters
    no already picked descendant holds, as FSDP1's recursive wrapping does.
    """
    if hasattr(policy, "_run_policy"):  # torch's _Policy objects name their targets themselves
        targets = policy._run_policy(model, set(), {})
        return [m for m in _post_order(model) if m in targets and m is not model]
    takes_one = _takes_one_argument(policy)
    chosen: list[nn.Module] = []

    def visit(module: nn.Module) -> int:
        count = sum(p.numel() for p in module.parameters(recurse=False))
        count += sum(visit(child) for child in module.children())
        if module is model:
            return count
        picked = policy(module) if takes_one else policy(module=module, recurse=False, nonwrapped_numel=count)
        if picked:
            chosen.append(module)
            return 0
        return count

    visit(model)
    return chosen


def _post_order(module: nn.Module) -> list[nn.Module]:
    """``module`` and its descendants, children before parents (``fully_shard``'s order)."""
    order = [m for child in module.children() for m in _post_order(child)]
    return [*order, module]


def _takes_one_argument(policy: Any) -> bool:
    import inspect

    try:
        parameters = inspect.signature(policy).parameters
    except (TypeError, ValueError):  # a builtin or C callable: assume FSDP1's keywords
        return False
    names = set(parameters)
    return not {"recurse", "nonwrapped_numel"} <= names and not any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def ignored_parameters(model: nn.Module, ignored: Any) -> set[nn.Parameter]:
    """The parameters of ``ignored`` (modules of ``model``, or a regex full-matching
    module names, as Accelerate's ``ignored_modules``).

    Raises:
        ValueError: a regex that matches no module, or a module not in ``model``.
    """
    import re

    if isinstance(ignored, str):
        pattern = re.compile(ignored)
        modules = [m for name, m in model.named_modules() if name and pattern.fullmatch(name)]
        if not modules:
            raise ValueError(f"ignored_modules={ignored!r} matches no module name of {type(model).__name__}; names "
                             f"look like {[n for n, _ in model.named_modules() if n][:6]}.")
    else:
        own = {id(m) for m in model.modules()}
        modules = list(ignored)
        strangers = [type(m).__name__ for m in modules if id(m) not in own]
        if strangers:
            raise ValueError(f"ignored_modules holds modules that are not part of the prepared model: {strangers}; "
                             "give the model's own submodules.")
    return {p for m in modules for p in m.parameters()}


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
