"""Helpers with HF Accelerate's ``accelerate.utils`` names.

Importing ``surge.utils`` loads torch; ``import surge`` alone does not.
"""

from surge.config.dataloader import DataLoaderConfiguration
from surge.config.kwargs import (
    AutocastKwargs,
    DistributedDataParallelKwargs,
    GradScalerKwargs,
    InitProcessGroupKwargs,
    KwargsHandler,
)
from surge.config.plugins import DeepSpeedPlugin, FullyShardedDataParallelPlugin, TorchDynamoPlugin
from surge.config.project import ProjectConfiguration
from surge.device import send_to_device
from surge.ops import broadcast, broadcast_object_list, gather, gather_object, pad_across_processes, reduce
from surge.strategies.base import unwrap_module as extract_model_from_parallel
from surge.topology import DistributedType
from surge.utils.batch_size import find_executable_batch_size, release_memory, should_reduce_batch_size
from surge.utils.progress import ProgressBar, tqdm
from surge.utils.random import set_seed

__all__ = [
    "AutocastKwargs",
    "DataLoaderConfiguration",
    "DeepSpeedPlugin",
    "DistributedDataParallelKwargs",
    "DistributedType",
    "FullyShardedDataParallelPlugin",
    "GradScalerKwargs",
    "InitProcessGroupKwargs",
    "KwargsHandler",
    "ProgressBar",
    "ProjectConfiguration",
    "TorchDynamoPlugin",
    "broadcast",
    "broadcast_object_list",
    "extract_model_from_parallel",
    "find_executable_batch_size",
    "gather",
    "gather_object",
    "pad_across_processes",
    "reduce",
    "release_memory",
    "send_to_device",
    "set_seed",
    "should_reduce_batch_size",
    "tqdm",
]
