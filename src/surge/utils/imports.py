"""``accelerate.utils.imports``: which optional packages and devices are available.

A package counts as available when it is installed (found without importing it). A
device counts when surge can run on it: CUDA GPUs, Apple's MPS and the CPU; the other
accelerators Accelerate names (XLA/TPU, NPU, MLU, ...) are always False here, so a script
that branches on them takes its CPU/CUDA path.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from typing import Any, TypeVar

import torch


@functools.cache
def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def is_aim_available() -> bool:
    return _installed("aim")


def is_boto3_available() -> bool:
    return _installed("boto3")


def is_clearml_available() -> bool:
    return _installed("clearml")


def is_comet_ml_available() -> bool:
    return _installed("comet_ml")


def is_datasets_available() -> bool:
    return _installed("datasets")


def is_deepspeed_available() -> bool:
    return _installed("deepspeed")


def is_dvclive_available() -> bool:
    return _installed("dvclive")


def is_lomo_available() -> bool:
    return _installed("lomo_optim")


def is_matplotlib_available() -> bool:
    return _installed("matplotlib")


def is_megatron_lm_available() -> bool:
    return _installed("megatron")


def is_mlflow_available() -> bool:
    return _installed("mlflow")


def is_msamp_available() -> bool:
    return _installed("msamp")


def is_numpy_available() -> bool:
    return _installed("numpy")


def is_pandas_available() -> bool:
    return _installed("pandas")


def is_peft_available() -> bool:
    return _installed("peft")


def is_pippy_available() -> bool:
    return _installed("pippy")


def is_pynvml_available() -> bool:
    return _installed("pynvml")


def is_pytest_available() -> bool:
    return _installed("pytest")


def is_rich_available() -> bool:
    return _installed("rich")


def is_sagemaker_available() -> bool:
    return _installed("sagemaker")


def is_schedulefree_available() -> bool:
    return _installed("schedulefree")


def is_swanlab_available() -> bool:
    return _installed("swanlab")


def is_tensorboard_available() -> bool:
    return _installed("tensorboard")


def is_timm_available() -> bool:
    return _installed("timm")


def is_torchao_available() -> bool:
    return _installed("torchao")


def is_torchdata_available() -> bool:
    return _installed("torchdata")


def is_torchvision_available() -> bool:
    return _installed("torchvision")


def is_tqdm_available() -> bool:
    return _installed("tqdm")


def is_trackio_available() -> bool:
    return _installed("trackio")


def is_transformer_engine_available() -> bool:
    return _installed("transformer_engine")


def is_transformers_available() -> bool:
    return _installed("transformers")


def is_triton_available() -> bool:
    return _installed("triton")


def is_wandb_available() -> bool:
    return _installed("wandb")


def is_bnb_available(min_version: str | None = None) -> bool:
    return _installed("bitsandbytes")


def is_4bit_bnb_available() -> bool:
    return _installed("bitsandbytes")


def is_8bit_bnb_available() -> bool:
    return _installed("bitsandbytes")


def is_torchdata_stateful_dataloader_available() -> bool:
    return _installed("torchdata.stateful_dataloader") if _installed("torchdata") else False


def is_torch_distributed_available() -> bool:
    return bool(torch.distributed.is_available())


def is_cuda_available() -> bool:
    return bool(torch.cuda.is_available())


def is_mps_available(min_version: str = "1.12") -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def is_bf16_available(ignore_tpu: bool = False) -> bool:
    """bf16 autocast works here: on CUDA GPUs that support it, and always on the CPU."""
    return bool(torch.cuda.is_bf16_supported()) if torch.cuda.is_available() else True


def is_fp16_available() -> bool:
    return True


def is_fp8_available() -> bool:
    """fp8 (torchao) needs a CUDA GPU with compute capability >= 8.9 and torchao."""
    return _installed("torchao") and torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


def is_weights_only_available() -> bool:
    return True


def is_torch_xla_available(check_is_tpu: bool = False, check_is_gpu: bool = False) -> bool:
    """False: surge does not run on XLA devices (TPUs)."""
    return False


def is_rocm_available() -> bool:
    return torch.version.hip is not None


def is_mlu_available(check_device: bool = False) -> bool:
    """False: surge does not run on MLU devices."""
    return False


def is_musa_available(check_device: bool = False) -> bool:
    """False: surge does not run on MUSA devices."""
    return False


def is_npu_available(check_device: bool = False) -> bool:
    """False: surge does not run on NPU devices."""
    return False


def is_sdaa_available(check_device: bool = False) -> bool:
    """False: surge does not run on SDAA devices."""
    return False


def is_hpu_available(check_device: bool = False) -> bool:
    """False: surge does not run on HPU (Gaudi) devices."""
    return False


def is_xpu_available(check_device: bool = False) -> bool:
    """False: surge does not run on XPU devices."""
    return False


def is_neuron_available(check_device: bool = False) -> bool:
    """False: surge does not run on AWS Neuron devices."""
    return False


def is_habana_gaudi1() -> bool:
    return False


def is_amdsmi_available() -> bool:
    return _installed("amdsmi")


def is_import_timer_available() -> bool:
    return _installed("import_timer")


def is_transformer_engine_mxfp8_available() -> bool:
    """False: surge does not run Transformer Engine (its fp8 is torchao's)."""
    return False


def is_bitsandbytes_multi_backend_available() -> bool:
    """Whether the installed bitsandbytes has its multi-backend (non-CUDA) support."""
    if not _installed("bitsandbytes"):
        return False
    bitsandbytes = importlib.import_module("bitsandbytes")
    return "multi_backend" in getattr(bitsandbytes, "features", set())


def is_xccl_available() -> bool:
    """Whether torch has the XCCL (Intel XPU) backend; surge runs nccl and gloo."""
    check = getattr(torch.distributed.distributed_c10d, "is_xccl_available", None)
    return bool(check()) if check is not None else False


def check_cuda_fp8_capability() -> bool:
    """Whether the first CUDA GPU computes in fp8 (compute capability >= 8.9).

    Raises:
        RuntimeError: no CUDA GPU (as torch's ``get_device_capability``).
    """
    return tuple(torch.cuda.get_device_capability()) >= (8, 9)


F = TypeVar("F", bound=Callable[..., Any])


def torchao_required(func: F) -> F:
    """Decorate ``func`` to raise ImportError (with the pip command) when torchao is not installed."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not is_torchao_available():
            raise ImportError(f"{func.__name__} needs torchao, which is not installed: pip install torchao")
        return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]  # same signature


def deepspeed_required(func: F) -> F:
    """Decorate ``func`` to raise ValueError when the current Accelerator (the most recent
    one: ``AcceleratorState``) does not run DeepSpeed; without one it runs."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from surge.state import is_initialized
        from surge.topology import DistributedType

        if is_initialized():
            from surge.state import AcceleratorState

            if AcceleratorState().distributed_type != DistributedType.DEEPSPEED:
                raise ValueError(f"{func.__name__} needs DeepSpeed: build the Accelerator with a DeepSpeedPlugin (or "
                                 "a DeepSpeed config) before calling it.")
        return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]  # same signature
