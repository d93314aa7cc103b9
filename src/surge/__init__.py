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
    "initialize": "surge.deepspeed.engine",
    "Engine": "surge.deepspeed.engine",
    "add_config_arguments": "surge.deepspeed.engine",
}

__all__ = [
    "Accelerator",
    "AutocastKwargs",
    "DataLoaderConfiguration",
    "DeepSpeedPlugin",
    "DistributedDataParallelKwargs",
    "DistributedType",
    "Engine",
    "FullyShardedDataParallelPlugin",
    "GradScalerKwargs",
    "InitProcessGroupKwargs",
    "PartialState",
    "ProjectConfiguration",
    "Topology",
    "TorchDynamoPlugin",
    "__version__",
    "add_config_arguments",
    "initialize",
    "prepare_data_loader",
    "skip_first_batches",
]  # every name of _LAZY (tests/unit/test_rules.py checks)

if TYPE_CHECKING:  # pragma: no cover
    from surge.accelerator import Accelerator
    from surge.config.dataloader import DataLoaderConfiguration
    from surge.config.kwargs import (
        AutocastKwargs,
        DistributedDataParallelKwargs,
        GradScalerKwargs,
        InitProcessGroupKwargs,
    )
    from surge.config.plugins import DeepSpeedPlugin, FullyShardedDataParallelPlugin, TorchDynamoPlugin
    from surge.config.project import ProjectConfiguration
    from surge.data_loader import prepare_data_loader, skip_first_batches
    from surge.deepspeed.engine import Engine, add_config_arguments, initialize
    from surge.state import PartialState
    from surge.topology import DistributedType, Topology


__getattr__, __dir__ = lazy_names("surge", _LAZY, globals())
