"""DeepSpeed's learning-rate schedules (``WarmupLR``, ``WarmupDecayLR``,
``WarmupCosineLR``) as ordinary PyTorch LR schedulers.

They take DeepSpeed's parameter names and meanings and give DeepSpeed's learning rate at
every optimizer step, and are ``torch.optim.lr_scheduler`` classes otherwise (``step()``
once per optimizer step, ``get_last_lr``, ``state_dict`` / ``load_state_dict``, which also
takes DeepSpeed's ``{"last_batch_iteration": i}``).

DeepSpeed's timing: its ``last_batch_iteration`` starts at -1 and its schedule is read at
``t = last_batch_iteration``; construction applies ``t = -1`` (the minimum, or 0 for
``WarmupCosineLR``'s first group) and each ``step()`` adds one, so the first two optimizer
steps both run at the start of the warm-up. Here ``last_batch_iteration = last_epoch - 1``.

With ``t`` DeepSpeed's ``last_batch_iteration`` and ``w = max(2, warmup_num_steps)``,
the warm-up factor ``g(t)`` is ``log(t + 1) / log(w)`` ("log", the default) or ``t / w``
("linear") while ``t < w``, and 1 afterwards.

- ``WarmupLR``: ``lr = warmup_min_lr + (warmup_max_lr - warmup_min_lr) * g(t)``.
- ``WarmupDecayLR``: the same, then after warm-up the factor decays linearly,
  ``(total_num_steps - t) / (total_num_steps - w)``, to 0 at ``total_num_steps``.
- ``WarmupCosineLR``: a ratio of each group's own ``lr``: during warm-up
  ``warmup_min_ratio + (1 - warmup_min_ratio) * g(t)``, then a half cosine from 1 down
  to ``cos_min_ratio`` at ``total_num_steps`` (and, as DeepSpeed's, on along the cosine
  past it, never below 0).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler

from surge.deepspeed.ds_config import reject_auto

WARMUP_TYPES = ("log", "linear")


def _per_group(optimizer: torch.optim.Optimizer, name: str, value: Any) -> list[float]:
    groups = len(optimizer.param_groups)
    if isinstance(value, (list, tuple)):
        if len(value) != groups:
            raise ValueError(f"{name}={list(value)!r} has {len(value)} values but the optimizer has {groups} "
                             "param groups; give one value per group, or a single number.")
        values = list(value)
    else:
        values = [value] * groups
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ValueError(f"{name}={value!r} must be a non-negative number (or one per param group).")
    return [float(v) for v in values]


def _check_steps(name: str, value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}.")
    return value


class _Warmup(LRScheduler):
    """The warm-up factor shared by the three schedules."""

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_num_steps: int, warmup_type: str,
                 last_epoch: int) -> None:
        _check_steps("warmup_num_steps", warmup_num_steps)
        if warmup_type not in WARMUP_TYPES:
            raise ValueError(f"warmup_type={warmup_type!r} must be one of {', '.join(map(repr, WARMUP_TYPES))}.")
        self.warmup_num_steps = max(2, warmup_num_steps)
        self.warmup_type = warmup_type
        super().__init__(optimizer, last_epoch)

    @property
    def last_batch_iteration(self) -> int:
        """DeepSpeed's step counter: -1 before the first ``step()``."""
        return self.last_epoch - 1

    def step(self, last_batch_iteration: int | None = None) -> None:
        """Advance one optimizer step or, as DeepSpeed's, jump to ``last_batch_iteration``."""
        if last_batch_iteration is None:
            super().step()
            return
        self.last_epoch = int(last_batch_iteration) + 1
        for group, lr in zip(self.optimizer.param_groups, self.get_lr(), strict=True):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's state, or DeepSpeed's ``{"last_batch_iteration": i}`` (a checkpoint of
        DeepSpeed's own scheduler)."""
        if set(state_dict) == {"last_batch_iteration"}:
            state = self.state_dict()
            state.update(last_epoch=int(state_dict["last_batch_iteration"]) + 1,
                         _step_count=int(state_dict["last_batch_iteration"]) + 2)
            super().load_state_dict(state)
            return
        super().load_state_dict(state_dict)

    def _warmup_factor(self, t: int) -> float:
        if t >= self.warmup_num_steps:
            return 1.0
        if self.warmup_type == "log":
            return math.log(t + 1) / math.log(self.warmup_num_steps)
        return t / self.warmup_num_steps

    def _gamma(self, t: int) -> float:
        return self._warmup_factor(t)


class WarmupLR(_Warmup):
    """Warm up from ``warmup_min_lr`` to ``warmup_max_lr`` over ``warmup_num_steps``,
    then stay there (DeepSpeed's ``WarmupLR``; see the module docstring)."""

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_min_lr: float | list[float] = 0.0,
                 warmup_max_lr: float | list[float] = 0.001, warmup_num_steps: int = 1000,
                 warmup_type: str = "log", last_epoch: int = -1) -> None:
        self.min_lrs = _per_group(optimizer, "warmup_min_lr", warmup_min_lr)
        self.max_lrs = _per_group(optimizer, "warmup_max_lr", warmup_max_lr)
        super().__init__(optimizer, warmup_num_steps, warmup_type, last_epoch)

    def get_lr(self) -> list[float]:  # type: ignore[override]
        gamma = self._gamma(max(self.last_batch_iteration, 0))  # t = -1: the minimum, as DeepSpeed
        return [lo + (hi - lo) * gamma for lo, hi in zip(self.min_lrs, self.max_lrs, strict=True)]


class WarmupDecayLR(WarmupLR):
    """``WarmupLR``, then a linear decay to 0 at ``total_num_steps`` (DeepSpeed's
    ``WarmupDecayLR``)."""

    def __init__(self, optimizer: torch.optim.Optimizer, total_num_steps: int,
                 warmup_min_lr: float | list[float] = 0.0, warmup_max_lr: float | list[float] = 0.001,
                 warmup_num_steps: int = 1000, warmup_type: str = "log", last_epoch: int = -1) -> None:
        self.total_num_steps = _check_steps("total_num_steps", total_num_steps, 1)
        super().__init__(optimizer, warmup_min_lr, warmup_max_lr, warmup_num_steps, warmup_type, last_epoch)

    def _gamma(self, t: int) -> float:
        if t < self.warmup_num_steps:
            return self._warmup_factor(t)
        return max(0.0, (self.total_num_steps - t) / max(1.0, self.total_num_steps - self.warmup_num_steps))


class WarmupCosineLR(_Warmup):
    """Warm up as a ratio of each group's ``lr`` from ``warmup_min_ratio`` to 1, then a
    half cosine down to ``cos_min_ratio`` at ``total_num_steps`` (DeepSpeed's
    ``WarmupCosineLR``)."""

    def __init__(self, optimizer: torch.optim.Optimizer, total_num_steps: int, warmup_min_ratio: float = 0.0,
                 warmup_num_steps: int = 1000, cos_min_ratio: float = 0.0001, warmup_type: str = "log",
                 last_epoch: int = -1) -> None:
        self.total_num_steps = _check_steps("total_num_steps", total_num_steps, 1)
        for name, value in (("warmup_min_ratio", warmup_min_ratio), ("cos_min_ratio", cos_min_ratio)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"{name}={value!r} must be a number between 0 and 1.")
        self.warmup_min_ratio = float(warmup_min_ratio)
        self.cos_min_ratio = float(cos_min_ratio)
        super().__init__(optimizer, warmup_num_steps, warmup_type, last_epoch)

    def _ratio(self, t: int) -> float:
        if t < self.warmup_num_steps:
            return self.warmup_min_ratio + (1.0 - self.warmup_min_ratio) * self._warmup_factor(t)
        done = (t - self.warmup_num_steps + 1) / max(1, self.total_num_steps - self.warmup_num_steps)
        cosine = (1.0 + math.cos(math.pi * done)) / 2.0
        return max(0.0, self.cos_min_ratio + (1.0 - self.cos_min_ratio) * cosine)

    def get_lr(self) -> list[float]:  # type: ignore[override]
        t = self.last_batch_iteration
        if t < 0:  # DeepSpeed sets the first group to 0 before the first step and leaves the others
            return [0.0] + [float(base) for base in self.base_lrs[1:]]
        ratio = self._ratio(t)
        return [float(base) * ratio for base in self.base_lrs]


SCHEDULERS = {"WarmupLR": WarmupLR, "WarmupDecayLR": WarmupDecayLR, "WarmupCosineLR": WarmupCosineLR}


def scheduler_class(section: dict[str, Any]) -> tuple[type[LRScheduler], dict[str, Any]]:
    """The class and arguments for a DeepSpeed config's ``scheduler`` section.

    Raises:
        ValueError: an unknown type or "auto" parameters (named).
    """
    kind, params = section.get("type"), dict(section.get("params") or {})
    if kind not in SCHEDULERS:
        raise ValueError(f"DeepSpeed config scheduler.type={kind!r} is not supported; choose one of "
                         f"{', '.join(SCHEDULERS)} (or pass lr_scheduler= yourself).")
    reject_auto("scheduler", params)
    return SCHEDULERS[kind], params


def build_scheduler(section: dict[str, Any], optimizer: torch.optim.Optimizer) -> LRScheduler:
    """The scheduler a DeepSpeed config's ``scheduler`` section describes.

    Raises:
        ValueError: see :func:`scheduler_class`; bad parameters (named).
    """
    cls, params = scheduler_class(section)
    kind = section.get("type")
    try:
        return cls(optimizer, **params)
    except TypeError as exc:
        raise ValueError(f"DeepSpeed config scheduler {kind} params {sorted(params)}: {exc}.") from None
