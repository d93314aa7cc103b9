"""fp8 training through torchao's float8 linear layers (Hopper / Ada GPUs and newer).

Linear layers whose dimensions are multiples of 16 compute their matmuls in float8
with dynamic scaling; everything else runs under bf16 autocast. The checks happen when
the Accelerator is built, so a machine that cannot run fp8 says so before any work.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from surge.precision.bf16 import BF16

if TYPE_CHECKING:
    from surge.config.kwargs import AORecipeKwargs

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


def _first_last_linear(model: nn.Module) -> tuple[str | None, str | None]:
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return (names[0], names[-1]) if names else (None, None)


def _accelerate_filter(module: nn.Module, fqn: str, layers_to_filter: list[str | None]) -> bool:
    if isinstance(module, nn.Linear) and (module.in_features % 16 or module.out_features % 16):
        return False
    return fqn not in layers_to_filter


def filter_first_and_last_linear_layers(module: nn.Module, fqn: str) -> bool:
    """Accelerate's torchao filter, for ``module_filter_fn``: False for a linear layer whose
    dimensions are not multiples of 16 and for the first and last linear layers found
    inside ``module`` itself (as Accelerate computes them: the model's own first and last
    layers are skipped by :func:`convert_model_to_fp8_ao`'s default, which looks at the
    whole model)."""
    return _accelerate_filter(module, fqn, list(_first_last_linear(module)))


def convert_model_to_fp8_ao(model: nn.Module, config: Any = None,
                            module_filter_func: Callable[[nn.Module, str], bool] | None = None) -> None:
    """Convert ``model``'s linear layers to torchao's ``Float8Linear`` in place (torchao's
    ``convert_to_float8_training`` with ``config``). By default, as Accelerate: every linear
    layer whose dimensions are multiples of 16 except the model's first and last ones.

    Raises:
        ImportError: torchao is not installed (with the pip command).
    """
    try:
        from torchao.float8 import convert_to_float8_training
    except ImportError:
        raise ImportError("convert_model_to_fp8_ao needs torchao, which is not installed: "
                          "pip install torchao") from None
    if module_filter_func is None:
        skip = list(_first_last_linear(model))

        def module_filter_func(module: nn.Module, fqn: str) -> bool:
            return _accelerate_filter(module, fqn, skip)

    convert_to_float8_training(model, module_filter_fn=module_filter_func, config=config)


def has_ao_layers(model: nn.Module) -> bool:
    """Whether ``model`` holds torchao ``Float8Linear`` layers (False without torchao)."""
    try:
        from torchao.float8.float8_linear import Float8Linear
    except ImportError:
        return False
    return any(isinstance(m, Float8Linear) for m in model.modules())


class FP8(BF16):
    name = "fp8"
    # fp8 keeps fp32 parameters under FSDP (torchao casts inside its linear layers) and
    # exports the weights as trained.
    sharded_param_dtype: torch.dtype | None = None
    export_dtype: torch.dtype | None = None

    def __init__(self, device: torch.device, *args: Any, recipe: AORecipeKwargs | None = None, **kwargs: Any) -> None:
        check_fp8_supported(device)
        super().__init__(device, *args, **kwargs)
        self.recipe = recipe

    def convert_module(self, model: nn.Module) -> nn.Module:
        """Without a recipe: every linear layer whose dimensions are multiples of 16. With
        ``AORecipeKwargs``: its config and filter, as Accelerate (by default also skipping
        the first and last linear layers)."""
        if self.recipe is not None:
            convert_model_to_fp8_ao(model, self.recipe.config, self.recipe.module_filter_func)
            return model
        from torchao.float8 import convert_to_float8_training

        converted: nn.Module = convert_to_float8_training(model, module_filter_fn=_fp8_eligible)
        return converted
