"""Micro-step counting and the "synchronise and step now?" decision, and the context
``Accelerator.accumulate`` returns. No torch: the strategy's ``no_sync`` is passed in.

[Note: one gradient state per Accelerator]
The Accelerator, its prepared optimizers, schedulers and dataloaders share one
``GradientState``. The Accelerator decides ``sync_gradients`` once per micro-step (in
``accumulate``); optimizers step and schedulers advance only when it is true;
dataloaders report their last batch so the final micro-step of an epoch is always a
boundary (unless ``sync_with_dataloader`` is False: cycles then run on across epochs).

[Note: the short cycle]
When the data ends inside an accumulation cycle, the cycle closes early with fewer
micro-batches than ``num_steps``. ``Accelerator.backward`` divides each micro-batch's
loss by the cycle's length, so by default ("cycle") the gradients already accumulated are
rescaled by ``num_steps / cycle_length`` on the closing micro-step: the step is the true
mean over the micro-batches the cycle has. HF Accelerate always divides by ``num_steps``,
so its short cycle's gradient is ``cycle_length / num_steps`` of the mean;
``Accelerator(accumulation_divisor="num_steps")`` gives its numbers. docs/migrating.md lists
this as a deliberate difference.
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
        "adjust_scheduler",
        "advice",
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
        "sync_each_batch",
        "sync_gradients",
        "sync_with_dataloader",
    )

    def __init__(self, num_steps: int = 1, gradient_accumulation_plugin: Any = None, *, sync_each_batch: bool = False,
                 sync_with_dataloader: bool = True, adjust_scheduler: bool = True) -> None:
        plugin = gradient_accumulation_plugin
        if plugin is not None:  # Accelerate's signature: GradientState(gradient_accumulation_plugin=...)
            num_steps = plugin.num_steps or 1
            sync_each_batch, sync_with_dataloader = plugin.sync_each_batch, plugin.sync_with_dataloader
            adjust_scheduler = plugin.adjust_scheduler
        self.num_steps = num_steps
        self.sync_each_batch = sync_each_batch
        """Synchronise gradients on every micro-batch (the optimizer still waits for the cycle)."""
        self.sync_with_dataloader = sync_with_dataloader
        """A prepared dataloader's last batch closes the cycle."""
        self.adjust_scheduler = adjust_scheduler
        """Read back only (see ``GradientAccumulationPlugin.adjust_scheduler``)."""
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
        self.advice: Any = None
        """The Accelerator's run-time checks (surge.advice.Advice) that prepared optimizers
        report their steps to; None: off."""

    def advance(self) -> bool:
        """Count one micro-step and decide whether it ends a cycle.

        A cycle ends every ``num_steps`` micro-steps and, so that no gradients are left
        behind, on the last batch of a prepared dataloader (the next epoch then starts a
        fresh cycle).
        """
        self.step += 1
        self.cycle_step += 1
        at_end = self.end_of_dataloader and self.sync_with_dataloader
        self.sync_gradients = self.cycle_step >= self.num_steps or at_end
        self.cycle_length = self.cycle_step if self.sync_gradients else self.num_steps
        self.rescaled = False
        if self.sync_gradients:
            self.cycle_step = 0
        return self.sync_gradients

    def _set_sync_gradients(self, sync_gradients: bool) -> None:
        """Decide this micro-step by hand (Accelerate's name, which transformers' Trainer
        calls; the DeepSpeed engine's ``set_gradient_accumulation_boundary``)."""
        self.sync_gradients = sync_gradients

    @property
    def in_dataloader(self) -> bool:
        """True while a prepared dataloader is yielding a batch (Accelerate's name)."""
        return self.batch_real_count is not None

    @property
    def plugin_kwargs(self) -> dict[str, Any]:
        """The accumulation settings as Accelerate's ``GradientState.plugin_kwargs`` shows them."""
        return {"num_steps": self.num_steps, "adjust_scheduler": self.adjust_scheduler,
                "sync_with_dataloader": self.sync_with_dataloader, "sync_each_batch": self.sync_each_batch}

    @property
    def initialized(self) -> bool:
        """Always True: a GradientState belongs to an Accelerator (Accelerate's singleton flag)."""
        return True

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
        if not self.gradient_state.advance() and not self.gradient_state.sync_each_batch:
            for model in self.models:
                ctx = self.no_sync(model)
                ctx.__enter__()
                self.contexts.append(ctx)

    def __exit__(self, *exc: Any) -> None:
        while self.contexts:
            self.contexts.pop().__exit__(*exc)
