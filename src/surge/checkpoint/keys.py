"""Optimizer state keyed by parameter name, so it loads into any strategy.

A torch optimizer keys its state by position in its param groups; positions change
when a strategy replaces the parameters (FSDP2's DTensors) or the optimizer (ZeRO-1).
Names (``model.named_parameters()``) do not.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def consolidates(optimizer: Any) -> bool:
    """True for optimizers that gather their sharded state themselves (ZeRO-1)."""
    return hasattr(optimizer, "consolidate_state_dict")


def inner_optimizer(optimizer: Any) -> Any:
    """The torch optimizer inside a prepared (wrapped) one."""
    return getattr(optimizer, "optimizer", optimizer)


def owner_index(models: list[nn.Module], optimizer: torch.optim.Optimizer) -> int:
    """Which model holds the optimizer's parameters.

    Raises:
        ValueError: none does.
    """
    params = {id(p) for g in optimizer.param_groups for p in g["params"]}
    for i, model in enumerate(models):
        if any(id(p) in params for p in model.parameters()):
            return i
    raise ValueError("an optimizer to checkpoint holds parameters of no prepared model; prepare the model with it.")


def named_positions(model: nn.Module, optimizer: Any) -> list[str]:
    """The parameter name of each position in the optimizer's param groups."""
    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    prefix = "module."
    out = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            name = names.get(id(p))
            if name is None:
                raise ValueError("an optimizer parameter is not a parameter of its model; cannot name its state.")
            out.append(name[len(prefix):] if name.startswith(prefix) else name)
    return out


def by_name(state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """An index-keyed optimizer state dict (ZeRO-1's consolidated one) keyed by name."""
    groups = [{**group, "params": [names[i] for i in group["params"]]} for group in state["param_groups"]]
    return {"state": {names[i]: v for i, v in state["state"].items()}, "param_groups": groups}


def by_index(state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """:func:`by_name`'s inverse."""
    index = {n: i for i, n in enumerate(names)}
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]]
    return {"state": {index[n]: v for n, v in state["state"].items()}, "param_groups": groups}


def optimizer_state(model: nn.Module, optimizer: Any, options: Any = None) -> tuple[dict[str, Any], bool]:
    """The optimizer's state dict keyed by parameter name (torch's
    ``get_optimizer_state_dict``), and whether the optimizer has not stepped yet.

    torch creates the state of an optimizer that has none by running one step with zero
    gradients, which changes training: Adam's step count becomes 1, so the first real
    update is bias-corrected as a second one. A fresh optimizer is therefore left fresh,
    and its saved state is empty (its param groups are kept), so saving before the first
    step changes neither this run nor one resumed from it.
    """
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    fresh = not optimizer.state
    state = dict(get_optimizer_state_dict(model, optimizer, options=options))
    if fresh:
        optimizer.state.clear()  # undo torch's zero-gradient step (parameters are unchanged: lr was 0)
        state = {"state": {}, "param_groups": state["param_groups"]}
    return state, fresh


def keep_state_only_for(optimizer: Any, model: nn.Module, names: set[str]) -> None:
    """Drop the optimizer state of every parameter not named in ``names``.

    Loading creates state for every parameter (torch's zero-gradient step); a parameter
    that had none when saved (it never received a gradient, e.g. an unused pooler) must
    have none after loading too, as in the run that saved it.
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    # An offloaded optimizer keys its state by the CPU masters of the parameters.
    masters = getattr(optimizer, "masters", None)
    keys = [m for group in masters for m in group] if masters is not None else params
    for name, key in zip(named_positions(model, optimizer), keys, strict=True):
        if name not in names:
            optimizer.state.pop(key, None)


def load_named_state(optimizer: Any, model: nn.Module, state: dict[str, Any]) -> None:
    """Load a whole optimizer state keyed by parameter name (surge's full layout, or an
    Accelerate checkpoint's once mapped by :func:`by_name`) into ``optimizer``, whatever
    the strategy: sharded models get their shards, ZeRO-1 its consolidated form.
    Parameters without saved state (never given a gradient) keep none."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    if consolidates(optimizer):
        optimizer.load_state_dict(by_index(state, named_positions(model, optimizer)))
        return
    # A full state is split into shards only for a sharded model (and only when there are
    # tensors to split: a stateless SGD has none).
    split = bool(state.get("state")) and any(hasattr(p, "device_mesh") for p in model.parameters())
    # Not strict: parameters without saved state are allowed, and keep none.
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=split, strict=False))
    keep_state_only_for(optimizer, model, set(state.get("state", {})))
