"""Prepared optimizers and LR schedulers.

They behave like the objects they wrap (``param_groups``, ``state``, ``state_dict``,
``defaults`` are the wrapped optimizer's own) and add one thing: they step only when
the shared ``GradientState`` says the accumulation cycle is complete (see
[Note: one gradient state per Accelerator] in accumulation.py).

Hot path: ``step`` and ``zero_grad`` do one attribute read and one call. Nothing is
looked up, inspected or constructed per step.

[Note: unused parameters]
A trainable parameter can get no gradient in a step: a BERT pooler the loss never
uses, a branch skipped this time. torch's optimizers skip it (no state, no weight
decay), and DDP fails on the next forward unless built with ``find_unused_parameters``
(Accelerate's behaviour: ``DistributedDataParallelKwargs(find_unused_parameters=True)``).
DeepSpeed instead zero-fills the missing gradients before reducing them
(``DeepSpeedEngine._get_gradients_for_reduction``; ZeRO's flat partitions do the same),
so every trainable parameter is stepped, has optimizer state and decays. Under a
DeepSpeed config (``StrategySpec.zero_fills_grads``: the engine and
``Accelerator(deepspeed_plugin=...)`` alike) surge does what DeepSpeed does: DDP looks
for unused parameters (ZeRO-0/1) and the prepared optimizer fills each missing gradient
with zeros at the boundary step, before clipping and the step. Checkpoints then hold
state for every parameter; a checkpoint where some parameter has none (the torch rule)
still loads (checkpoint/keys.py, ``keep_state_only_for``).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch

from surge.accumulation import GradientState
from surge.device import send_to_device
from surge.precision.base import Precision


class ForwardingOptimizer(torch.optim.Optimizer):
    """An optimizer that wraps another (``self.optimizer``) without ``super().__init__``:
    ``param_groups``, ``defaults`` and ``state`` are the wrapped optimizer's own."""

    optimizer: torch.optim.Optimizer

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.optimizer.param_groups = value

    @property
    def defaults(self) -> dict[str, Any]:
        return self.optimizer.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self.optimizer.defaults = value

    @property
    def state(self) -> Any:
        return self.optimizer.state

    @state.setter
    def state(self, value: Any) -> None:
        self.optimizer.state = value


class AcceleratedOptimizer(ForwardingOptimizer):
    """A prepared optimizer. ``isinstance(opt, torch.optim.Optimizer)`` holds, so LR
    schedulers can be built on it after ``prepare``.

    Args:
        optimizer: The user's optimizer, built on the model's parameters.
        gradient_state: The Accelerator's shared gradient state.
        precision: Steps the optimizer (through the fp16 loss scaler when there is one).
        device: When given, optimizer state already present (e.g. loaded before
            ``prepare``) is moved to this device.
        max_grad_norm: Clip the gradient norm of this optimizer's parameters to this
            before every real step (DeepSpeed's ``gradient_clipping``).
        clip: The strategy's norm clipping (it knows how to reduce sharded norms).
        zero_fill_grads: Step trainable parameters that got no gradient with a zero
            gradient, as DeepSpeed does (see [Note: unused parameters]).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_state: GradientState | None = None,
        precision: Precision | None = None,
        device: torch.device | None = None,
        max_grad_norm: float | None = None,
        clip: Any = None,
        guard: Any = None,
        zero_fill_grads: bool = False,
    ) -> None:
        # Deliberately no super().__init__: the wrapped optimizer owns the parameters,
        # groups and state; this object only forwards to it.
        self.optimizer = optimizer
        self.original = optimizer  # the user's optimizer, when a strategy replaced it
        self.gradient_state = gradient_state if gradient_state is not None else GradientState()
        self.precision = precision if precision is not None else Precision(torch.device("cpu"))
        self.precision.register_optimizer(optimizer)
        self._max_grad_norm = max_grad_norm  # DeepSpeed's gradient_clipping, applied at each step
        self._clip = clip if clip is not None else torch.nn.utils.clip_grad_norm_
        self._step_was_skipped = False
        self._guard = guard  # the non-finite guard (guard.py), when on
        self.last_grad_norm: torch.Tensor | None = None  # before clipping, when max_grad_norm clips
        self._zero_fill_grads = zero_fill_grads
        self.measure_grad_norm = False
        """Compute ``last_grad_norm`` at every step even without clipping (the DeepSpeed
        engine's ``get_global_grad_norm``): one more pass over the gradients (a collective
        when they are sharded)."""
        if device is not None and optimizer.state:
            optimizer.load_state_dict(send_to_device(optimizer.state_dict(), device))

    # -- what torch.optim.Optimizer users touch ------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.optimizer.add_param_group(param_group)

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict)

    def zero_grad(self, set_to_none: bool | None = None) -> None:
        """Clear gradients, but only at an accumulation boundary: inside a cycle the
        gradients of earlier micro-steps must survive."""
        if self.gradient_state.sync_gradients:
            if self._guard is not None:
                self._guard.reset()
            if set_to_none is None:
                self.optimizer.zero_grad()
            else:
                self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure: Any = None) -> Any:
        """Step the wrapped optimizer at an accumulation boundary; a no-op otherwise."""
        if not self.gradient_state.sync_gradients:
            return None
        if self.gradient_state.advice is not None:  # integer compares ([Note: run-time advice])
            self.gradient_state.advice.on_step(self)
        if self._zero_fill_grads:
            fill_missing_grads(self.optimizer)
        if self._guard is not None and not self._guard.allows_step(self.optimizer):
            self._step_was_skipped = True  # parameters and optimizer state untouched
            return None
        if self._max_grad_norm is not None or self.measure_grad_norm:
            self.precision.unscale(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
            # An infinite bound measures the norm and leaves the gradients as they are.
            bound = math.inf if self._max_grad_norm is None else self._max_grad_norm
            self.last_grad_norm = self._clip(params, bound)
        stepped, result = self.precision.step(self.optimizer, closure)
        self._step_was_skipped = not stepped
        return result

    def train(self) -> None:
        """Forward ``train()`` to optimizers that have it (schedule-free optimizers)."""
        if hasattr(self.optimizer, "train"):
            self.optimizer.train()

    def eval(self) -> None:
        """Forward ``eval()`` to optimizers that have it (schedule-free optimizers)."""
        if hasattr(self.optimizer, "eval"):
            self.optimizer.eval()

    @property
    def step_was_skipped(self) -> bool:
        """True when the last boundary step was skipped (fp16 overflow, or the
        non-finite guard)."""
        return self._step_was_skipped

    # -- plumbing ------------------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes this wrapper does not define: forward them
        # (e.g. optimizer-specific methods). Guard against recursion during unpickling.
        if name == "optimizer":
            raise AttributeError(name)
        return getattr(self.optimizer, name)

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__.copy()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"AcceleratedOptimizer({self.optimizer!r})"


def fill_missing_grads(optimizer: torch.optim.Optimizer) -> None:
    """Give every trainable parameter of ``optimizer`` that has no gradient a zero one
    (DeepSpeed's rule, see [Note: unused parameters]). A pass over the parameters: only
    under a DeepSpeed config; the zeros are allocated only for the parameters missing one."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is None and p.requires_grad:
                p.grad = torch.zeros_like(p)


class AcceleratedScheduler:
    """A prepared LR scheduler.

    [Note: the scheduler rule]
    With ``step_scheduler_with_optimizer=True`` (the default) the scheduler advances
    only at optimizer steps that really changed the parameters: not on accumulation
    micro-steps, not on skipped fp16-overflow (or non-finite-guard) steps. At such a step
    it advances ``steps_per_optimizer_step`` times. By default that is HF Accelerate's
    rule, because real scripts compensate for it (transformers' and diffusers'
    no-trainer scripts build their schedule for ``max_train_steps * num_processes``):
    num_processes times without ``split_batches`` (each process's batches are a share of
    a global batch num_processes times larger), and then a scheduler with a
    ``total_steps`` (OneCycleLR) stops there instead of raising; once with it. surge's own rule,
    ``Accelerator(scheduler_steps="once")``, advances once per optimizer step on any
    number of processes, so a schedule built for ``len(prepared_loader) * epochs /
    gradient_accumulation_steps`` optimizer steps (``len`` of the *prepared*, per-process
    loader) ends exactly at the last one. The DeepSpeed engine uses "once", as DeepSpeed
    does. ``step_scheduler_with_optimizer=False`` steps on every call.
    """

    def __init__(
        self,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        optimizers: list[AcceleratedOptimizer],
        gradient_state: GradientState,
        step_with_optimizer: bool = True,
        steps_per_optimizer_step: int = 1,
        stop_at_total_steps: bool = False,
    ) -> None:
        self.scheduler = scheduler
        self.optimizers = optimizers
        self.gradient_state = gradient_state
        self.step_with_optimizer = step_with_optimizer
        self.steps_per_optimizer_step = steps_per_optimizer_step
        self.stop_at_total_steps = stop_at_total_steps
        self.rebound = False  # set when prepare pointed the scheduler at a replacement optimizer

    def step(self, *args: Any, **kwargs: Any) -> None:
        if not self.step_with_optimizer:
            self._step(*args, **kwargs)
            return
        if not self.gradient_state.sync_gradients:
            return
        for opt in self.optimizers:
            if opt._step_was_skipped:
                return
        total = getattr(self.scheduler, "total_steps", None) if self.stop_at_total_steps else None
        for _ in range(self.steps_per_optimizer_step):
            if total is not None and self.scheduler._step_count > total:
                break  # OneCycleLR's end (it raises past it); its last LR stays
            self._step(*args, **kwargs)

    def _step(self, *args: Any, **kwargs: Any) -> None:
        if self.rebound and getattr(self.scheduler, "_step_count", 0) == 1:
            # torch warns on the first step that the optimizer's step was "overridden":
            # true of the replacement (ZeRO-1), and harmless; the order is ours to keep.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Seems like `optimizer.step\\(\\)` has been overridden")
                self.scheduler.step(*args, **kwargs)
            return
        self.scheduler.step(*args, **kwargs)

    def get_last_lr(self) -> list[float | torch.Tensor]:
        return self.scheduler.get_last_lr()

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state_dict)

    def get_lr(self) -> list[float | torch.Tensor]:
        return self.scheduler.get_lr()

    def __getattr__(self, name: str) -> Any:
        if name == "scheduler":
            raise AttributeError(name)
        return getattr(self.scheduler, name)

    def __repr__(self) -> str:
        return f"AcceleratedScheduler({self.scheduler!r})"
