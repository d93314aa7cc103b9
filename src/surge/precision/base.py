"""The precision interface, and full precision ("no").

A precision plugin owns everything that depends on the number format: the autocast
region around the forward, how the loss is backpropagated (scaled or not), how an
optimizer steps (through a loss scaler or not), unscaling before clipping, and its own
state for checkpoints. Strategies call it; the Accelerator never looks inside.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from surge._tree import tree_map
from surge.config.kwargs import AutocastKwargs

_HALF = (torch.float16, torch.bfloat16)


def _is_half(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.dtype in _HALF


def convert_to_fp32(data: Any) -> Any:
    """Return ``data`` with every fp16/bf16 tensor cast to fp32 (other leaves kept)."""
    return tree_map(lambda t: t.float(), data, _is_half)


class AutocastForward:
    """Replaces a module's ``forward``: runs the original inside the precision's autocast
    region and (optionally) returns floating outputs in fp32.

    It is set as an *instance* attribute, so ``del module.forward`` (what
    ``unwrap_model(keep_fp32_wrapper=False)`` does) restores the class's forward.
    """

    def __init__(self, forward: Any, precision: Precision, to_fp32: bool) -> None:
        self.__wrapped__ = forward
        self.precision = precision
        self.to_fp32 = to_fp32

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self.precision.autocast():
            out = self.__wrapped__(*args, **kwargs)
        return convert_to_fp32(out) if self.to_fp32 else out


class Precision:
    """Full precision: no autocast, no scaling."""

    name = "no"
    autocast_dtype: torch.dtype | None = None
    """The dtype of the autocast region; None: no autocast."""
    sharded_param_dtype: torch.dtype | None = None
    """The dtype FSDP2 gathers parameters in and computes with (its MixedPrecisionPolicy;
    gradients are then reduced in fp32). None: parameters stay fp32 and the precision's
    own autocast forward runs instead."""
    export_dtype: torch.dtype | None = None
    """The 16-bit type of the run, for exports that ask for it (DeepSpeed's
    ``save_16bit_model``); None: the weights' own type."""

    def __init__(self, device: torch.device, autocast_kwargs: AutocastKwargs | None = None) -> None:
        self.device = device
        self.autocast_kwargs = autocast_kwargs or AutocastKwargs()

    # -- forward --------------------------------------------------------------------------

    @property
    def uses_autocast(self) -> bool:
        return self.autocast_dtype is not None and self.autocast_kwargs.enabled

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The autocast region for this precision (a null context for full precision)."""
        if not self.uses_autocast:
            return contextlib.nullcontext()
        kwargs: dict[str, Any] = {"dtype": self.autocast_dtype}
        if self.autocast_kwargs.cache_enabled is not None:
            kwargs["cache_enabled"] = self.autocast_kwargs.cache_enabled
        return torch.autocast(device_type=self.device.type, **kwargs)

    def convert_module(self, model: nn.Module) -> nn.Module:
        """Change the module itself before it is wrapped (fp8 swaps its linear layers)."""
        return model

    def wrap_forward(self, model: nn.Module) -> None:
        """Run ``model``'s forward under :meth:`autocast` (no-op without autocast)."""
        if self.uses_autocast and not isinstance(model.__dict__.get("forward"), AutocastForward):
            model.forward = AutocastForward(model.forward, self, self.autocast_kwargs.convert_outputs_to_fp32)

    # -- backward and step ----------------------------------------------------------------

    def backward(self, loss: torch.Tensor, **kwargs: Any) -> None:
        loss.backward(**kwargs)  # type: ignore[no-untyped-call]  # Tensor.backward is unannotated in torch

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring gradients to their true scale before clipping (no-op without scaling)."""

    def register_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Called by ``prepare`` for every optimizer this precision will step."""

    def step(self, optimizer: torch.optim.Optimizer, closure: Any = None) -> tuple[bool, Any]:
        """Step ``optimizer``. Returns (stepped, what ``optimizer.step`` returned);
        stepped is False when the step was skipped (fp16 overflow)."""
        return True, optimizer.step(closure) if closure is not None else optimizer.step()

    @property
    def has_loss_scaler(self) -> bool:
        """True when backward scales the loss and the step can be skipped on overflow."""
        return False

    @property
    def loss_scale(self) -> float:
        """The current loss scale (1.0 without loss scaling)."""
        return 1.0

    # -- checkpoints ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""


def remove_autocast_forward(model: nn.Module) -> nn.Module:
    """Undo :meth:`Precision.wrap_forward` on ``model`` (and its submodules)."""
    for module in model.modules():
        forward = module.__dict__.get("forward")
        if isinstance(forward, AutocastForward):
            del module.forward
        elif isinstance(getattr(forward, "forward", None), AutocastForward):
            # A wrapper around it (tensor parallel's LossParallelForward): keep the wrapper.
            forward.forward = forward.forward.__wrapped__  # type: ignore[union-attr]
    return model
