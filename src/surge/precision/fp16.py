"""fp16 mixed precision: autocast to float16 plus dynamic loss scaling.

The loss is multiplied by a scale before backward so small gradients survive fp16's
narrow range; the optimizer step unscales them. A step whose gradients overflowed is
skipped (parameters untouched), the scale shrinks, ``step_was_skipped`` becomes True
and prepared schedulers do not advance.
"""

from __future__ import annotations

from typing import Any

import torch

from surge.config.kwargs import AutocastKwargs, GradScalerKwargs
from surge.precision.base import Precision


class FP16(Precision):
    name = "fp16"
    autocast_dtype = torch.float16

    def __init__(
        self,
        device: torch.device,
        autocast_kwargs: AutocastKwargs | None = None,
        scaler_kwargs: GradScalerKwargs | None = None,
    ) -> None:
        super().__init__(device, autocast_kwargs)
        opts = scaler_kwargs or GradScalerKwargs()
        self.scaler = torch.amp.GradScaler(
            device.type,
            init_scale=opts.init_scale,
            growth_factor=opts.growth_factor,
            backoff_factor=opts.backoff_factor,
            growth_interval=opts.growth_interval,
            enabled=opts.enabled,
        )
        # The scale after the last update, as a Python float. Comparing with it tells
        # whether a step was skipped without an extra host sync before the step.
        self._last_scale = float(opts.init_scale) if opts.enabled else 1.0
        self._unscaled: set[int] = set()

    def backward(self, loss: torch.Tensor, **kwargs: Any) -> None:
        self.scaler.scale(loss).backward(**kwargs)

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        # GradScaler refuses a second unscale of the same optimizer before update().
        if id(optimizer) not in self._unscaled:
            self.scaler.unscale_(optimizer)
            self._unscaled.add(id(optimizer))

    def step(self, optimizer: torch.optim.Optimizer, closure: Any = None) -> bool:
        if not self.scaler.is_enabled():
            return super().step(optimizer, closure)
        # GradScaler.step itself syncs with the host to read the overflow flag; reading the
        # updated scale afterwards costs nothing more.
        if closure is not None:
            self.scaler.step(optimizer, closure)
        else:
            self.scaler.step(optimizer)
        self.scaler.update()
        self._unscaled.discard(id(optimizer))
        scale = self.scaler.get_scale()
        stepped = scale >= self._last_scale
        self._last_scale = scale
        return stepped

    def state_dict(self) -> dict[str, Any]:
        return {"scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
            self._last_scale = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
