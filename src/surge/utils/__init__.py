"""Helpers with HF Accelerate's ``accelerate.utils`` names (and its module paths:
``surge.utils.operations``, ``.dataclasses``, ``.imports``, ``.other``, ``.random``,
``.memory``).

Importing ``surge.utils`` loads torch; ``import surge`` alone does not. Names that need
what surge does not run (TPU/XLA execution, Megatron-LM) exist and raise
:class:`~surge.unsupported.UnsupportedError` when used.
"""

import sys

from surge.config.dataloader import DataLoaderConfiguration
from surge.config.enums import (
    ComputeEnvironment,
    DDPCommunicationHookType,
    DynamoBackend,
    PrecisionType,
    RNGType,
    SageMakerDistributedType,
)
from surge.config.kwargs import (
    AutocastKwargs,
    DistributedDataParallelKwargs,
    GradientAccumulationPlugin,
    GradScalerKwargs,
    InitProcessGroupKwargs,
    KwargsHandler,
    ProfileKwargs,
)
from surge.config.plugins import DeepSpeedPlugin, FullyShardedDataParallelPlugin, TorchDynamoPlugin
from surge.config.project import ProjectConfiguration
from surge.deepspeed.dummy import DummyOptim, DummyScheduler
from surge.topology import DistributedType
from surge.tracking.catalog import LoggerType
from surge.unsupported import UnsupportedError, unsupported_function
from surge.utils import batch_size as memory
from surge.utils.batch_size import (
    clear_device_cache,
    find_executable_batch_size,
    release_memory,
    should_reduce_batch_size,
)
from surge.utils.fsdp_utils import (
    load_fsdp_model,
    load_fsdp_optimizer,
    merge_fsdp_weights,
    save_fsdp_model,
    save_fsdp_optimizer,
)
from surge.utils.imports import (
    is_bf16_available,
    is_cuda_available,
    is_datasets_available,
    is_deepspeed_available,
    is_fp8_available,
    is_fp16_available,
    is_hpu_available,
    is_mlflow_available,
    is_mlu_available,
    is_mps_available,
    is_musa_available,
    is_npu_available,
    is_peft_available,
    is_rich_available,
    is_sdaa_available,
    is_tensorboard_available,
    is_torch_xla_available,
    is_torchvision_available,
    is_transformers_available,
    is_wandb_available,
    is_xpu_available,
)
from surge.utils.operations import (
    broadcast,
    broadcast_object_list,
    concatenate,
    convert_to_fp32,
    find_batch_size,
    find_device,
    gather,
    gather_object,
    honor_type,
    is_torch_tensor,
    listify,
    pad_across_processes,
    recursively_apply,
    reduce,
    send_to_device,
    slice_tensors,
)
from surge.utils.other import (
    convert_bytes,
    extract_model_from_parallel,
    get_pretty_name,
    is_compiled_module,
    is_port_in_use,
    merge_dicts,
    wait_for_everyone,
    write_basic_config,
)
from surge.utils.progress import ProgressBar, tqdm
from surge.utils.random import set_seed, synchronize_rng_state, synchronize_rng_states

# `surge.utils.memory` is Accelerate's module path of find_executable_batch_size and
# release_memory; surge keeps them in batch_size.py (surge/memory.py is the ZeRO arithmetic).
sys.modules[__name__ + ".memory"] = memory

# Accelerate names that need TPU/XLA execution or Megatron-LM.
install_xla = unsupported_function("install_xla", "TPU/XLA execution")
prepare_tpu = unsupported_function("prepare_tpu", "TPU/XLA execution")
MegatronLMPlugin = unsupported_function("MegatronLMPlugin", "Megatron-LM")
TorchTensorParallelPlugin = unsupported_function("TorchTensorParallelPlugin", "tensor parallelism")

__all__ = [
    "AutocastKwargs",
    "ComputeEnvironment",
    "DDPCommunicationHookType",
    "DataLoaderConfiguration",
    "DeepSpeedPlugin",
    "DistributedDataParallelKwargs",
    "DistributedType",
    "DummyOptim",
    "DummyScheduler",
    "DynamoBackend",
    "FullyShardedDataParallelPlugin",
    "GradScalerKwargs",
    "GradientAccumulationPlugin",
    "InitProcessGroupKwargs",
    "KwargsHandler",
    "LoggerType",
    "MegatronLMPlugin",
    "PrecisionType",
    "ProfileKwargs",
    "ProgressBar",
    "ProjectConfiguration",
    "RNGType",
    "SageMakerDistributedType",
    "TorchDynamoPlugin",
    "TorchTensorParallelPlugin",
    "UnsupportedError",
    "broadcast",
    "broadcast_object_list",
    "clear_device_cache",
    "concatenate",
    "convert_bytes",
    "convert_to_fp32",
    "extract_model_from_parallel",
    "find_batch_size",
    "find_device",
    "find_executable_batch_size",
    "gather",
    "gather_object",
    "get_pretty_name",
    "honor_type",
    "install_xla",
    "is_bf16_available",
    "is_compiled_module",
    "is_cuda_available",
    "is_datasets_available",
    "is_deepspeed_available",
    "is_fp8_available",
    "is_fp16_available",
    "is_hpu_available",
    "is_mlflow_available",
    "is_mlu_available",
    "is_mps_available",
    "is_musa_available",
    "is_npu_available",
    "is_peft_available",
    "is_port_in_use",
    "is_rich_available",
    "is_sdaa_available",
    "is_tensorboard_available",
    "is_torch_tensor",
    "is_torch_xla_available",
    "is_torchvision_available",
    "is_transformers_available",
    "is_wandb_available",
    "is_xpu_available",
    "listify",
    "load_fsdp_model",
    "load_fsdp_optimizer",
    "memory",
    "merge_dicts",
    "merge_fsdp_weights",
    "pad_across_processes",
    "prepare_tpu",
    "recursively_apply",
    "reduce",
    "release_memory",
    "save_fsdp_model",
    "save_fsdp_optimizer",
    "send_to_device",
    "set_seed",
    "should_reduce_batch_size",
    "slice_tensors",
    "synchronize_rng_state",
    "synchronize_rng_states",
    "tqdm",
    "wait_for_everyone",
    "write_basic_config",
]
