"""The non-finite guard: catch NaN/inf losses and gradients before they reach the weights.

``Accelerator(nonfinite="skip")`` (or ``nonfinite: skip`` in the config file) checks, at
every optimizer step, the losses given to ``backward`` since the last step and this
process's gradients; the verdict is agreed by all processes (one all-reduce of one
number), so every process skips or steps together. "skip" leaves the parameters and
optimizer state untouched for that step, counts it, logs a warning and lets training go
on (schedulers do not advance, as for an fp16 overflow); "raise" stops with
``FloatingPointError`` naming the step. fp16 keeps its loss scaler, which already skips
steps with non-finite gradients and lowers the scale.

Cost when on: one norm per gradient tensor (``torch._foreach_norm``, no extra memory
beyond one number per tensor), one all-reduce and one host sync per optimizer step.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

MODES = ("ignore", "skip", "raise")
logger = logging.getLogger("surge")


class NonFiniteGuard:
    def __init__(self, mode: str, distributed: bool) -> None:
        self.mode = mode
        self.distributed = distributed
        self.steps = 0  # optimizer steps checked (the step number in messages)
        self.skipped = 0
        self._loss_bad: torch.Tensor | None = None

    def observe_loss(self, loss: torch.Tensor) -> None:
        """Remember whether ``loss`` is finite (on the device: no sync here)."""
        bad = ~torch.isfinite(_local(loss.detach())).all()  # a DTensor loss (loss parallel) is replicated
        self._loss_bad = bad if self._loss_bad is None else self._loss_bad | bad

    def reset(self) -> None:
        """A new accumulation cycle starts (gradients were cleared)."""
        self._loss_bad = None

    def allows_step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Whether the optimizer may step now; raises in "raise" mode when it may not.

        Raises:
            FloatingPointError: a non-finite loss or gradient, in "raise" mode.
        """
        self.steps += 1
        grads = [_local(p.grad) for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        device = grads[0].device if grads else (self._loss_bad.device if self._loss_bad is not None else "cpu")
        flags = torch.zeros(2, device=device)  # [loss not finite, gradients not finite]
        if self._loss_bad is not None:
            flags[0] = self._loss_bad.to(device).float()
        if grads:
            norms = torch.stack([n.to(device) for n in torch._foreach_norm(grads)])
            flags[1] = (~torch.isfinite(norms)).any().float()
        if self.distributed:
            import torch.distributed as dist

            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        loss_bad, grads_bad = (bool(v) for v in flags.tolist())  # the one host sync
        if not (loss_bad or grads_bad):
            return True
        what = " and ".join(w for w, bad in (("loss", loss_bad), ("gradient norm", grads_bad)) if bad)
        if self.mode == "raise":
            raise FloatingPointError(f"non-finite {what} (NaN or inf) at optimizer step {self.steps}; stopping because "
                                     "nonfinite='raise'. Use nonfinite='skip' to skip such steps instead.")
        self.skipped += 1
        if not self.distributed or _is_main():
            logger.warning("non-finite %s (NaN or inf) at optimizer step %d: step skipped, parameters unchanged "
                           "(%d skipped so far).", what, self.steps, self.skipped)
        return False


def _local(grad: torch.Tensor) -> torch.Tensor:
    """This process's part of a (possibly sharded, DTensor) gradient."""
    to_local = getattr(grad, "to_local", None)
    return to_local() if callable(to_local) else grad


def _is_main() -> bool:
    import torch.distributed as dist

    return dist.get_rank() == 0


def check_mode(value: Any) -> str:
    """The guard mode ``value`` names ("ignore", "skip", "raise"; None: "ignore").

    Raises:
        ValueError: anything else.
    """
    if value is None or value is False:
        return "ignore"
    if isinstance(value, str) and value.strip().lower() in MODES:
        return value.strip().lower()
    raise ValueError(f"nonfinite={value!r} is not supported; use 'ignore' (default), 'skip' (skip the optimizer "
                     "step, count and log it) or 'raise' (stop with the step number).")
