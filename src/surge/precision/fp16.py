"""fp16 mixed precision: autocast to float16 plus dynamic loss scaling.

The loss is multiplied by a scale before backward so small gradients survive fp16's
narrow range; the optimizer step unscales them. A step whose gradients overflowed is
skipped (parameters untouched), the scale shrinks, ``step_was_skipped`` becomes True
and prepared schedulers do not advance.
"""

from __future__ import annotations

from typing import Any

import torch

from surge.config.kwargs import AutocastKwargs, GradScalerKwargs, LossScaleSettings
from surge.precision.base import Precision


class DeepSpeedLossScaler(torch.amp.GradScaler):
    """``torch.amp.GradScaler`` with DeepSpeed's update rule (its ``fp16`` section).

    An overflowing step is skipped. The scale halves (never below ``min_scale``) only
    once ``hysteresis`` overflows have been seen since the hysteresis was last
    refilled; it doubles after ``window`` overflow-free steps since the last overflow
    (which refills the hysteresis; with ``consecutive_hysteresis`` every clean step
    refills it). A static scale never changes. The rule needs the overflow flag on the
    host: one synchronisation per step, which ``step`` already pays to decide whether
    to skip.
    """

    def __init__(self, device_type: str, settings: LossScaleSettings) -> None:
        super().__init__(device_type, init_scale=settings.initial_scale, growth_interval=settings.window)
        self.settings = settings
        self.hysteresis_left = settings.hysteresis
        self.iteration = 0
        self.last_overflow = -1

    def update(self, new_scale: float | torch.Tensor | None = None) -> None:
        if new_scale is not None or not self.is_enabled():
            super().update(new_scale)
            return
        flags = [f for st in self._per_optimizer_states.values() for f in st["found_inf_per_device"].values()]
        if not flags:
            raise AssertionError("No inf checks were recorded prior to update.")
        overflow = bool(sum(float(f.item()) for f in flags))
        super().update(self._next_scale(self.get_scale(), overflow))

    def _next_scale(self, scale: float, overflow: bool) -> float:
        cfg = self.settings
        if cfg.static:
            new = scale
        elif overflow:
            if cfg.hysteresis == 1 or self.hysteresis_left == 1:
                new = max(scale / 2.0, cfg.min_scale)
            else:
                new = scale
                self.hysteresis_left -= 1
            self.last_overflow = self.iteration
        else:
            new = scale
            if cfg.consecutive_hysteresis:
                self.hysteresis_left = cfg.hysteresis
            if (self.iteration - self.last_overflow) % cfg.window == 0:
                if not cfg.consecutive_hysteresis:
                    self.hysteresis_left = cfg.hysteresis
                new = scale * 2.0
        self.iteration += 1
        return float(new)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if state:
            state["deepspeed"] = {"hysteresis_left": self.hysteresis_left, "iteration": self.iteration,
                                  "last_overflow": self.last_overflow}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        extra = state.pop("deepspeed", None)
        super().load_state_dict(state)
        if extra:
            self.hysteresis_left = int(extra["hysteresis_left"])
            self.iteration = int(extra["iteration"])
            self.last_overflow = int(extra["last_overflow"])


class FP16(Precision):
    name = "fp16"
    autocast_dtype = torch.float16
    export_dtype: torch.dtype | None = torch.float16

    def __init__(
        self,
        device: torch.device,
        autocast_kwargs: AutocastKwargs | None = None,
        scaler_kwargs: GradScalerKwargs | LossScaleSettings | None = None,
    ) -> None:
        super().__init__(device, autocast_kwargs)
        if isinstance(scaler_kwargs, LossScaleSettings):
            self.scaler: torch.amp.GradScaler = DeepSpeedLossScaler(device.type, scaler_kwargs)
        else:
            self.scaler = self._torch_scaler(device, scaler_kwargs or GradScalerKwargs())
        self._optimizers: list[int] = []  # ids of the prepared optimizers
        self._stepped: set[int] = set()  # optimizers stepped since the last scaler update
        self._unscaled: set[int] = set()  # optimizers unscaled since the last scaler update

    @staticmethod
    def _torch_scaler(device: torch.device, opts: GradScalerKwargs) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(
            device.type,
            init_scale=opts.init_scale,
            growth_factor=opts.growth_factor,
            backoff_factor=opts.backoff_factor,
            growth_interval=opts.growth_interval,
            enabled=opts.enabled,
        )

    @property
    def has_loss_scaler(self) -> bool:
        return True

    @property
    def loss_scale(self) -> float:
        return float(self.scaler.get_scale()) if self.scaler.is_enabled() else 1.0

    def register_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        if id(optimizer) not in self._optimizers:
            self._optimizers.append(id(optimizer))

    # [Note: one scaler update per iteration]
    # GradScaler expects step() for each optimizer and then a single update(). With
    # several optimizers, updating after each would change the scale between them (the
    # second would be unscaled with the wrong factor). The update runs once every
    # prepared optimizer has stepped; when only some step (a GAN's alternating
    # updates), it runs before the next backward or before an optimizer steps twice.

    def _update(self) -> None:
        if self._stepped:
            self.scaler.update()
            self._stepped.clear()
            self._unscaled.clear()

    def backward(self, loss: torch.Tensor, **kwargs: Any) -> None:
        self._update()
        # Tensor.backward has no annotations in torch.
        self.scaler.scale(loss).backward(**kwargs)  # type: ignore[no-untyped-call]

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        # GradScaler refuses a second unscale of the same optimizer before update().
        if id(optimizer) not in self._unscaled:
            self.scaler.unscale_(optimizer)
            self._unscaled.add(id(optimizer))

    def step(self, optimizer: torch.optim.Optimizer, closure: Any = None) -> tuple[bool, Any]:
        if not self.scaler.is_enabled():
            return super().step(optimizer, closure)
        if id(optimizer) in self._stepped:
            self._update()
        result = self.scaler.step(optimizer, closure) if closure is not None else self.scaler.step(optimizer)
        # GradScaler.step already read the overflow flag on the host; reading it again
        # from the per-optimizer state costs no extra synchronisation.
        state = self.scaler._per_optimizer_states[id(optimizer)]
        skipped = bool(sum(v.item() for v in state["found_inf_per_device"].values()))
        self._stepped.add(id(optimizer))
        if all(o in self._stepped for o in self._optimizers):
            self._update()
        return not skipped, result

    def state_dict(self) -> dict[str, Any]:
        self._update()
        return {"scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
