"""Micro-step counting and the "synchronise and step now?" decision. Pure: no torch.

[Note: one gradient state per Accelerator]
The Accelerator, its prepared optimizers, schedulers and dataloaders share one
``GradientState``. The Accelerator decides ``sync_gradients`` once per micro-step (in
``accumulate``); optimizers step and schedulers advance only when it is true;
dataloaders report their last batch so the final micro-step of an epoch is always a
boundary.
"""

from __future__ import annotations


class GradientState:
    """Where we are inside an accumulation cycle.

    Example:
        >>> g = GradientState(num_steps=4)
        >>> [g.advance() for _ in range(5)]
        [False, False, False, True, False]
    """

    __slots__ = ("num_steps", "step", "sync_gradients", "end_of_dataloader", "in_accumulate", "optimizer_stepped")

    def __init__(self, num_steps: int = 1) -> None:
        self.num_steps = num_steps
        self.step = 0
        """Micro-steps taken since the start (counted by ``accumulate``)."""
        self.sync_gradients = True
        """True on the micro-step that ends an accumulation cycle: gradients are
        synchronised and the optimizer really steps."""
        self.end_of_dataloader = False
        """Set by a prepared dataloader while it yields its last batch."""
        self.in_accumulate = False
        self.optimizer_stepped = False
        """True when the last ``optimizer.step()`` changed the parameters."""

    def advance(self) -> bool:
        """Count one micro-step and decide whether it ends a cycle.

        A cycle ends every ``num_steps`` micro-steps and, so that no gradients are left
        behind, on the last batch of a prepared dataloader.
        """
        self.step += 1
        self.sync_gradients = self.step % self.num_steps == 0 or self.end_of_dataloader
        if self.sync_gradients and self.end_of_dataloader:
            # Restart the count so the next epoch's cycles line up with its first batch.
            self.step = 0
        return self.sync_gradients

    def reset(self) -> None:
        self.step = 0
        self.sync_gradients = True
        self.end_of_dataloader = False
        self.optimizer_stepped = False
