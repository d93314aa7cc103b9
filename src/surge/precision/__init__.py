"""Number formats for training: "no" | "fp16" | "bf16" | "fp8", one file each."""

from __future__ import annotations

import torch

from surge.config.kwargs import AORecipeKwargs, AutocastKwargs, GradScalerKwargs, LossScaleSettings
from surge.precision.base import AutocastForward, Precision, convert_to_fp32, remove_autocast_forward
from surge.precision.bf16 import BF16
from surge.precision.fp16 import FP16


def select_precision(
    name: str,
    device: torch.device,
    autocast_kwargs: AutocastKwargs | None = None,
    scaler_kwargs: GradScalerKwargs | LossScaleSettings | None = None,
    fp8_recipe: AORecipeKwargs | None = None,
) -> Precision:
    """The plugin for ``name`` (validated earlier by AcceleratorConfig); ``fp8_recipe``
    configures fp8's conversion."""
    if name == "fp16":
        return FP16(device, autocast_kwargs, scaler_kwargs)
    if name == "bf16":
        return BF16(device, autocast_kwargs)
    if name == "fp8":
        from surge.precision.fp8 import FP8

        return FP8(device, autocast_kwargs, recipe=fp8_recipe)
    return Precision(device, autocast_kwargs)


__all__ = [
    "BF16",
    "FP16",
    "AutocastForward",
    "Precision",
    "convert_to_fp32",
    "remove_autocast_forward",
    "select_precision",
]
