"""Optimizers named the DeepSpeed way (the config's ``optimizer`` section), built from
``torch.optim``.

``Adam`` keeps DeepSpeed's meaning: decoupled weight decay (AdamW) unless
``"adam_w_mode": false``. ``AdamW``, ``SGD``, ``Adagrad`` and every other
``torch.optim`` class name (any letter case) map to that class. DeepSpeed-only
optimizers (Lamb, OneBitAdam, ...) have no PyTorch counterpart and are refused by name.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from surge.deepspeed.ds_config import reject_auto

_DEEPSPEED_ONLY = ("lamb", "onebitadam", "zerooneadam", "onebitlamb", "lion", "muadam", "muadamw", "musgd")
_DEEPSPEED_FLAGS = ("torch_adam", "adam_w_mode", "fused", "bias_correction")


def _torch_optimizers() -> dict[str, type[torch.optim.Optimizer]]:
    found = {}
    for name in dir(torch.optim):
        obj = getattr(torch.optim, name)
        if isinstance(obj, type) and issubclass(obj, torch.optim.Optimizer) and obj is not torch.optim.Optimizer:
            found[name.lower()] = obj
    return found


def optimizer_class(section: dict[str, Any]) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """The class and constructor arguments for a config's ``optimizer`` section.

    Raises:
        ValueError: an unknown or DeepSpeed-only type, or "auto" parameters (named).
    """
    kind = section.get("type")
    params = dict(section.get("params") or {})
    known = _torch_optimizers()
    if not isinstance(kind, str) or (kind.lower() not in known and kind.lower() != "adam"):
        extra = " (a DeepSpeed-only optimizer with no PyTorch counterpart)" \
            if isinstance(kind, str) and kind.lower() in _DEEPSPEED_ONLY else ""
        raise ValueError(f"DeepSpeed config optimizer.type={kind!r} is not supported{extra}; choose Adam, AdamW, "
                         f"SGD or another torch.optim class: {', '.join(sorted(c.__name__ for c in known.values()))}.")
    reject_auto("optimizer", params)
    adam_w_mode = params.pop("adam_w_mode", True)
    for flag in _DEEPSPEED_FLAGS:
        params.pop(flag, None)
    if "betas" in params:
        params["betas"] = tuple(params["betas"])
    if kind.lower() == "adam":
        return (torch.optim.AdamW if adam_w_mode else torch.optim.Adam), params
    return known[kind.lower()], params


def build_optimizer(section: dict[str, Any], parameters: Iterable[Any]) -> torch.optim.Optimizer:
    """The optimizer a config's ``optimizer`` section describes, over ``parameters``
    (tensors or param-group dicts).

    Raises:
        ValueError: see :func:`optimizer_class`; parameters the class does not take.
    """
    cls, params = optimizer_class(section)
    try:
        return cls(parameters, **params)
    except TypeError as exc:
        raise ValueError(f"DeepSpeed config optimizer {section.get('type')} params {sorted(params)}: {exc}.") from None
