"""Typed settings: one frozen dataclass per component, validated on construction.

Only this package reads the process environment (see [Note: one reader of the
environment] in environment.py).
"""

from surge.config.accelerator_config import AcceleratorConfig
from surge.config.environment import LaunchEnvironment, current_launch_environment, parse_launch_environment
from surge.config.kwargs import AutocastKwargs, DistributedDataParallelKwargs, GradScalerKwargs, InitProcessGroupKwargs
from surge.config.project import ProjectConfiguration

__all__ = [
    "AcceleratorConfig",
    "AutocastKwargs",
    "DistributedDataParallelKwargs",
    "GradScalerKwargs",
    "InitProcessGroupKwargs",
    "LaunchEnvironment",
    "ProjectConfiguration",
    "current_launch_environment",
    "parse_launch_environment",
]
