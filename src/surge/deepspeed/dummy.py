"""``DummyOptim`` / ``DummyScheduler`` (HF Accelerate's ``accelerate.utils`` names): stand-ins
a script passes to ``prepare`` when its DeepSpeed config carries the optimizer and the
scheduler. ``prepare`` builds the real ones from the config's sections
(:mod:`surge.deepspeed.optimizers`, :mod:`surge.deepspeed.schedulers`), filling their
"auto" values from the stand-ins as Accelerate does:

- ``optimizer.params.lr`` / ``weight_decay`` from ``DummyOptim(lr=, weight_decay=)``;
- ``scheduler.params.warmup_min_lr`` 0, ``warmup_max_lr`` the optimizer's lr,
  ``warmup_num_steps`` ``max(1, DummyScheduler.warmup_num_steps)``, and
  ``total_num_steps`` ``ceil(DummyScheduler.total_num_steps / num_processes)`` (the whole
  number without ``split_batches``: scripts pass ``max_train_steps * num_processes``).

Values the config gives win. As under DeepSpeed's engine, a scheduler built from the
config advances once per optimizer step on any number of processes. The mistakes
Accelerate refuses are refused here with its rules (:func:`swap_config_objects`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

AUTO = "auto"


class DummyOptim:
    """The optimizer of the DeepSpeed config, built by ``prepare`` over ``params``.

    Args:
        params: The parameters (or parameter groups) to optimise.
        lr: Fills the config's ``"lr": "auto"``.
        weight_decay: Fills the config's ``"weight_decay": "auto"``.
        **kwargs: Kept (``self.kwargs``), as Accelerate does; not used.

    Example:
        >>> optimizer = DummyOptim(model.parameters(), lr=3e-4)
        >>> model, optimizer = accelerator.prepare(model, optimizer)  # the config's AdamW
    """

    def __init__(self, params: Any, lr: float = 0.001, weight_decay: float = 0, **kwargs: Any) -> None:
        self.params = params
        self.lr = lr
        self.weight_decay = weight_decay
        self.kwargs = kwargs


class DummyScheduler:
    """The scheduler of the DeepSpeed config, built by ``prepare`` on the optimizer, or by
    ``lr_scheduler_callable(optimizer)`` when the config has no scheduler section.

    Args:
        optimizer: The ``DummyOptim`` (or optimizer) it schedules.
        total_num_steps: Fills the config's ``"total_num_steps": "auto"`` (divided by the
            number of processes without ``split_batches``, as Accelerate does).
        warmup_num_steps: Fills ``"warmup_num_steps": "auto"`` (at least 1).
        lr_scheduler_callable: Builds the scheduler from the real optimizer instead.
        **kwargs: Kept (``self.kwargs``); not used.
    """

    def __init__(self, optimizer: Any, total_num_steps: int | None = None, warmup_num_steps: int = 0,
                 lr_scheduler_callable: Callable[[Any], Any] | None = None, **kwargs: Any) -> None:
        self.optimizer = optimizer
        self.total_num_steps = total_num_steps
        self.warmup_num_steps = warmup_num_steps
        self.lr_scheduler_callable = lr_scheduler_callable
        self.kwargs = kwargs


def _filled(section: dict[str, Any], values: dict[str, Any], what: str) -> dict[str, Any]:
    """``section`` with its "auto" params replaced from ``values``.

    Raises:
        ValueError: an "auto" that nothing fills (named, with the fix).
    """
    params = dict(section.get("params") or {})
    for key, value in params.items():
        if value == AUTO:
            if key not in values:
                raise ValueError(f"DeepSpeed config {what}.params.{key} = \"auto\" and nothing fills it; give a value "
                                 "in the config (prepare fills lr and weight_decay from DummyOptim; warmup_min_lr, "
                                 "warmup_max_lr, warmup_num_steps and total_num_steps from DummyScheduler).")
            params[key] = values[key]
    return {**section, "params": params}


def swap_config_objects(accelerator: Any, args: tuple[Any, ...]) -> tuple[tuple[Any, ...], Callable[[list[Any]], None]]:
    """``prepare``'s arguments with any ``DummyOptim`` / ``DummyScheduler`` replaced by the
    optimizer / scheduler the DeepSpeed config describes, and a function to call on the
    prepared results (it makes a config scheduler advance once per optimizer step).

    Raises:
        ValueError: Accelerate's refusals: a DummyOptim without an optimizer section (or
            without a DeepSpeed config), an optimizer passed while the config has one, the
            same for schedulers, a DummyScheduler with neither a section nor a callable, a
            DummyScheduler with a real optimizer, a DummyOptim with a real scheduler.
    """
    import torch

    from surge.deepspeed.optimizers import build_optimizer
    from surge.deepspeed.schedulers import build_scheduler

    ds = accelerator.plan.deepspeed
    optimizer_section = ds.optimizer if ds is not None else None
    scheduler_section = ds.scheduler if ds is not None else None
    schedulers = torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau
    optimizer = next((a for a in args if isinstance(a, (torch.optim.Optimizer, DummyOptim))), None)
    scheduler = next((a for a in args if isinstance(a, (*schedulers, DummyScheduler))), None)
    no_change: Callable[[list[Any]], None] = lambda result: None  # noqa: E731
    if (optimizer is None and scheduler is None) or (ds is None and not isinstance(optimizer, DummyOptim) \
            and not isinstance(scheduler, DummyScheduler)):
        return args, no_change
    if isinstance(optimizer, DummyOptim) and optimizer_section is None:
        raise ValueError("prepare got a DummyOptim, but " + ("the DeepSpeed config has no optimizer section" if ds
                         is not None else "there is no DeepSpeed config") + "; a DummyOptim stands for the config's "
                         "optimizer. Add an \"optimizer\" section to the config, or pass a torch optimizer.")
    if isinstance(optimizer, torch.optim.Optimizer) and optimizer_section is not None:
        raise ValueError("prepare got an optimizer and the DeepSpeed config has an optimizer section: keep one. Remove "
                         "the section, or pass surge.utils.DummyOptim(model.parameters(), lr=...) instead.")
    if isinstance(scheduler, schedulers) and scheduler_section is not None:
        raise ValueError("prepare got an LR scheduler and the DeepSpeed config has a scheduler section: keep one. "
                         "Remove the section, or pass surge.utils.DummyScheduler(optimizer, ...) instead.")
    if isinstance(scheduler, DummyScheduler) and scheduler_section is None and scheduler.lr_scheduler_callable is None:
        raise ValueError("prepare got a DummyScheduler, but the DeepSpeed config has no scheduler section and it "
                         "has no lr_scheduler_callable: add a \"scheduler\" section, or pass "
                         "DummyScheduler(optimizer, lr_scheduler_callable=lambda opt: ...).")
    if isinstance(optimizer, DummyOptim) and scheduler is not None and not isinstance(scheduler, DummyScheduler):
        raise ValueError("a DummyOptim goes with a DummyScheduler (the real optimizer does not exist until prepare); "
                         "pass DummyScheduler(optimizer, ...) or DummyScheduler(optimizer, lr_scheduler_callable=...).")
    real_optimizer: Any = optimizer
    if isinstance(optimizer, DummyOptim):
        section = _filled(optimizer_section or {}, {"lr": optimizer.lr, "weight_decay": optimizer.weight_decay},
                          "optimizer")
        real_optimizer = build_optimizer(section, optimizer.params)
    real_scheduler: Any = scheduler
    built_scheduler = False
    if isinstance(scheduler, DummyScheduler):
        if real_optimizer is None or isinstance(real_optimizer, DummyOptim):
            raise ValueError("a DummyScheduler needs its optimizer in the same prepare call.")
        if scheduler_section is not None:
            target = scheduler.optimizer
            max_lr = target.lr if isinstance(target, DummyOptim) else real_optimizer.defaults.get("lr")
            values: dict[str, Any] = {"warmup_min_lr": 0, "warmup_max_lr": max_lr,
                                      "warmup_num_steps": max(1, scheduler.warmup_num_steps)}
            if scheduler.total_num_steps is not None:
                values["total_num_steps"] = scheduler.total_num_steps if accelerator.plan.config.split_batches \
                    else math.ceil(scheduler.total_num_steps / accelerator.num_processes)
            real_scheduler = build_scheduler(_filled(scheduler_section, values, "scheduler"), real_optimizer)
        else:
            assert scheduler.lr_scheduler_callable is not None  # refused above
            real_scheduler = scheduler.lr_scheduler_callable(real_optimizer)
        built_scheduler = True
    swapped = tuple(real_optimizer if a is optimizer and optimizer is not None else
                    real_scheduler if a is scheduler and scheduler is not None else a for a in args)

    def once_per_step(result: list[Any]) -> None:
        # DeepSpeed's engine advances the config's scheduler once per optimizer step.
        if built_scheduler:
            for item in result:
                if getattr(item, "scheduler", None) is real_scheduler:
                    item.steps_per_optimizer_step = 1
                    item.stop_at_total_steps = False

    return swapped, once_per_step
