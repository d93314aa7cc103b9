"""``accelerate.utils.dataclasses``: the kwargs handlers, plugins and enums, under the
module path Accelerate scripts import them from (each is defined once, elsewhere in surge)."""

from surge.config.enums import (
    BaseEnum,
    ComputeEnvironment,
    DDPCommunicationHookType,
    DynamoBackend,
    EnumWithContains,
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
from surge.config.parallelism import (
    DeepSpeedSequenceParallelConfig,
    ParallelismConfig,
    TorchContextParallelConfig,
    TorchTensorParallelConfig,
)
from surge.config.plugins import DeepSpeedPlugin, FullyShardedDataParallelPlugin, TorchDynamoPlugin
from surge.config.project import ProjectConfiguration
from surge.topology import DistributedType

__all__ = [
    "AutocastKwargs",
    "BaseEnum",
    "ComputeEnvironment",
    "DDPCommunicationHookType",
    "DeepSpeedPlugin",
    "DeepSpeedSequenceParallelConfig",
    "DistributedDataParallelKwargs",
    "DistributedType",
    "DynamoBackend",
    "EnumWithContains",
    "FullyShardedDataParallelPlugin",
    "GradScalerKwargs",
    "GradientAccumulationPlugin",
    "InitProcessGroupKwargs",
    "KwargsHandler",
    "ParallelismConfig",
    "PrecisionType",
    "ProfileKwargs",
    "ProjectConfiguration",
    "RNGType",
    "SageMakerDistributedType",
    "TorchContextParallelConfig",
    "TorchDynamoPlugin",
    "TorchTensorParallelConfig",
]
