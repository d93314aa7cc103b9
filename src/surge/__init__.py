"""surge: distributed training made simple for PyTorch.

``import surge`` is light: public names load on first use (PEP 562), so the command
line and tools that only need metadata never import torch.

Example:
    >>> from surge import Accelerator
    >>> accelerator = Accelerator()
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from surge._lazy import lazy_names
from surge._version import __version__

# public name -> module that defines it
_LAZY = {
    "Accelerator": "surge.accelerator",
    "PartialState": "surge.state",
    "Topology": "surge.topology",
    "DistributedType": "surge.topology",
    "ProjectConfiguration": "surge.config.project",
    "DataLoaderConfiguration": "surge.config.dataloader",
    "prepare_data_loader": "surge.data_loader",
    "skip_first_batches": "surge.data_loader",
    "DistributedDataParallelKwargs": "surge.config.kwargs",
    "InitProcessGroupKwargs": "surge.config.kwargs",
    "AutocastKwargs": "surge.config.kwargs",
    "GradScalerKwargs": "surge.config.kwargs",
    "DeepSpeedPlugin": "surge.config.plugins",
    "FullyShardedDataParallelPlugin": "surge.config.plugins",
    "TorchDynamoPlugin": "surge.config.plugins",
    "ParallelismConfig": "surge.config.parallelism",
    "initialize": "surge.deepspeed.engine",
    "Engine": "surge.deepspeed.engine",
    "add_config_arguments": "surge.deepspeed.engine",
    "checkpointing": "surge.deepspeed.checkpointing",  # the module: DeepSpeed's deepspeed.checkpointing
    "DDPCommunicationHookType": "surge.config.enums",
    "ProfileKwargs": "surge.config.kwargs",
    "GradientAccumulationPlugin": "surge.config.kwargs",
    "find_executable_batch_size": "surge.utils.batch_size",
    "synchronize_rng_states": "surge.utils.random",
    "notebook_launcher": "surge.launch.notebook",
    "debug_launcher": "surge.launch.notebook",
    "init_empty_weights": "surge.big_modeling",
    "init_on_device": "surge.big_modeling",
    "is_rich_available": "surge.utils.imports",
    # DeepSpeed's module-level API (`import surge as deepspeed`): deepspeed.init_distributed,
    # deepspeed.get_accelerator, and the submodules deepspeed.accelerator / .comm / .zero
    "init_distributed": "surge.deepspeed.communication",
    "get_accelerator": "surge.deepspeed.device_abstraction",
    "accelerator": "surge.accelerator",
    "comm": "surge.comm",
    "zero": "surge.zero",
}

__all__ = [
    "Accelerator",
    "AutocastKwargs",
    "DDPCommunicationHookType",
    "DataLoaderConfiguration",
    "DeepSpeedPlugin",
    "DistributedDataParallelKwargs",
    "DistributedType",
    "Engine",
    "FullyShardedDataParallelPlugin",
    "GradScalerKwargs",
    "GradientAccumulationPlugin",
    "InitProcessGroupKwargs",
    "ParallelismConfig",
    "PartialState",
    "ProfileKwargs",
    "ProjectConfiguration",
    "Topology",
    "TorchDynamoPlugin",
    "__version__",
    "accelerator",
    "add_config_arguments",
    "checkpointing",
    "comm",
    "debug_launcher",
    "find_executable_batch_size",
    "get_accelerator",
    "init_distributed",
    "init_empty_weights",
    "init_on_device",
    "initialize",
    "is_rich_available",
    "notebook_launcher",
    "prepare_data_loader",
    "skip_first_batches",
    "synchronize_rng_states",
    "zero",
]  # every name of _LAZY (tests/unit/test_rules.py checks)

if TYPE_CHECKING:  # pragma: no cover
    from surge import accelerator, comm, zero
    from surge.accelerator import Accelerator
    from surge.big_modeling import init_empty_weights, init_on_device
    from surge.config.dataloader import DataLoaderConfiguration
    from surge.config.enums import DDPCommunicationHookType
    from surge.config.kwargs import (
        AutocastKwargs,
        DistributedDataParallelKwargs,
        GradientAccumulationPlugin,
        GradScalerKwargs,
        InitProcessGroupKwargs,
        ProfileKwargs,
    )
    from surge.config.parallelism import ParallelismConfig
    from surge.config.plugins import DeepSpeedPlugin, FullyShardedDataParallelPlugin, TorchDynamoPlugin
    from surge.config.project import ProjectConfiguration
    from surge.data_loader import prepare_data_loader, skip_first_batches
    from surge.deepspeed import checkpointing
    from surge.deepspeed.communication import init_distributed
    from surge.deepspeed.device_abstraction import get_accelerator
    from surge.deepspeed.engine import Engine, add_config_arguments, initialize
    from surge.launch.notebook import debug_launcher, notebook_launcher
    from surge.state import PartialState
    from surge.topology import DistributedType, Topology
    from surge.utils.batch_size import find_executable_batch_size
    from surge.utils.imports import is_rich_available
    from surge.utils.random import synchronize_rng_states


__getattr__, __dir__ = lazy_names("surge", _LAZY, globals())
