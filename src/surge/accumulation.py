"""Micro-step counting and the "synchronise and step now?" decision, and the context
``Accelerator.accumulate`` returns. No torch: the strategy's ``no_sync`` is passed in.

[Note: one gradient state per Accelerator]
The Accelerator, its prepared optimizers, schedulers and dataloaders share one
``GradientState``. The Accelerator decides ``sync_gradients`` once per micro-step (in
``accumulate``); optimizers step and schedulers advance only when it is true;
dataloaders report their last batch so the final micro-step of an epoch is always a
boundary.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any


class GradientState:
    """Where we are inside an accumulation cycle.

    Example:
        >>> g = GradientState(num_steps=4)
        >>> [g.advance() for _ in range(5)]
        [False, False, False, True, False]
    """

    __slots__ = (
        "batch_real_count",
        "batch_size",
        "cycle_length",
        "cycle_step",
        "end_of_dataloader",
        "epoch_padding",
        "epoch_samples",
        "num_steps",
        "rescaled",
        "step",
        "sync_gradients",
    )

    def __init__(self, num_steps: int = 1) -> None:
        self.num_steps = num_steps
        self.step = 0
        """Micro-steps counted by ``accumulate`` since the start."""
        self.cycle_step = 0
        """Micro-steps taken in the current, still open cycle."""
        self.cycle_length = num_steps
        """Micro-steps in the cycle the current micro-step belongs to, known once the
        cycle closes: ``num_steps``, or fewer when a dataloader ran out first."""
        self.sync_gradients = True
        """True on the micro-step that ends an accumulation cycle: gradients are
        synchronised and the optimizer really steps."""
        self.end_of_dataloader = False
        """Set by a prepared dataloader while it yields its last batch."""
        self.batch_real_count: int | None = None
        """Set by a prepared dataloader while it yields a batch: how many of the batch's
        samples are real (the rest repeat earlier samples); None outside a loop."""
        self.batch_size: int | None = None
        """The number of samples (real and repeated) in the batch being yielded."""
        self.epoch_samples = 0
        """Samples (real and repeated) this process received in the last finished epoch
        of a prepared loader."""
        self.epoch_padding = 0
        """How many of those were repeats; they are always the last ones."""
        self.rescaled = False
        """True once the gradients of a short closing cycle were rescaled."""

    def advance(self) -> bool:
        """Count one micro-step and decide whether it ends a cycle.

        A cycle ends every ``num_steps`` micro-steps and, so that no gradients are left
        behind, on the last batch of a prepared dataloader (the next epoch then starts a
        fresh cycle).
        """
        self.step += 1
        self.cycle_step += 1
        self.sync_gradients = self.cycle_step >= self.num_steps or self.end_of_dataloader
        self.cycle_length = self.cycle_step if self.sync_gradients else self.num_steps
        self.rescaled = False
        if self.sync_gradients:
            self.cycle_step = 0
        return self.sync_gradients

    @property
    def closes_short_cycle(self) -> bool:
        """True on the last micro-step of a cycle cut short by the end of the data."""
        return self.sync_gradients and self.cycle_length < self.num_steps

    def reset(self) -> None:
        self.step = 0
        self.cycle_step = 0
        self.cycle_length = self.num_steps
        self.sync_gradients = True
        self.end_of_dataloader = False
        self.batch_real_count = None
        self.batch_size = None
        self.epoch_samples = 0
        self.epoch_padding = 0
        self.rescaled = False


class AccumulateContext:
    """The context ``Accelerator.accumulate`` returns: counts the micro-step and, unless
    it closes a cycle, keeps each model's gradients from being synchronised (``no_sync``,
    the strategy's). A small class rather than a generator-based context manager: it runs
    on every training step. ``models`` is read when the block is entered."""

    __slots__ = ("contexts", "gradient_state", "models", "no_sync")

    def __init__(self, gradient_state: GradientState,
                 no_sync: Callable[[Any], contextlib.AbstractContextManager[Any]], models: Sequence[Any]) -> None:
        self.gradient_state = gradient_state
        self.no_sync = no_sync
        self.models = models
        self.contexts: list[contextlib.AbstractContextManager[Any]] = []

    def __enter__(self) -> None:
        if not self.gradient_state.advance():
            for model in self.models:
                ctx = self.no_sync(model)
                ctx.__enter__()
                self.contexts.append(ctx)

    def __exit__(self, *exc: Any) -> None:
        while self.contexts:
            self.contexts.pop().__exit__(*exc)
