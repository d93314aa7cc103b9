"""fp8 training through torchao's float8 linear layers (Hopper / Ada GPUs and newer).

Linear layers whose dimensions are multiples of 16 compute their matmuls in float8
with dynamic scaling; everything else runs under bf16 autocast. The checks happen when
the Accelerator is built, so a machine that cannot run fp8 says so before any work.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from surge.precision.bf16 import BF16

MIN_CAPABILITY = (8, 9)


def check_fp8_supported(device: torch.device) -> None:
    """Raise a clear error unless ``device`` can train in fp8 with torchao.

    Raises:
        ValueError: not a CUDA device, or one older than compute capability 8.9.
        ImportError: torchao is not installed (the message has the pip command).
    """
    if device.type != "cuda":
        raise ValueError(
            f"mixed_precision='fp8' needs a CUDA GPU with compute capability >= 8.9 (H100, H200, L4, RTX 4090, "
            f"B200...), but this process runs on {device.type!r}. Use mixed_precision='bf16' here."
        )
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_CAPABILITY:
        name = torch.cuda.get_device_name(device)
        raise ValueError(
            f"mixed_precision='fp8' needs compute capability >= 8.9, but {name} has "
            f"{capability[0]}.{capability[1]}. Use mixed_precision='bf16' on this GPU."
        )
    try:
        import torchao.float8  # noqa: F401
    except ImportError:
        raise ImportError(
            "mixed_precision='fp8' uses torchao's float8 training, which is not installed. "
            "Install it with: pip install torchao"
        ) from None


def _fp8_eligible(module: nn.Module, _fqn: str) -> bool:
    # float8 matmuls need both dimensions divisible by 16.
    return isinstance(module, nn.Linear) and module.in_features % 16 == 0 and module.out_features % 16 == 0


class FP8(BF16):
    name = "fp8"
    # fp8 keeps fp32 parameters under FSDP (torchao casts inside its linear layers) and
    # exports the weights as trained.
    sharded_param_dtype: torch.dtype | None = None
    export_dtype: torch.dtype | None = None

    def __init__(self, device: torch.device, *args: Any, **kwargs: Any) -> None:
        check_fp8_supported(device)
        super().__init__(device, *args, **kwargs)

    def convert_module(self, model: nn.Module) -> nn.Module:
        from torchao.float8 import convert_to_float8_training

        converted: nn.Module = convert_to_float8_training(model, module_filter_fn=_fp8_eligible)
        return converted
