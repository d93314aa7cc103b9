"""Experiment trackers: ``Accelerator(log_with=...)``, with ``accelerate.tracking``'s names.

``log_with`` is a name or :class:`LoggerType` ("jsonl", "tensorboard", "wandb",
"mlflow"), "all" (every one whose package is installed; jsonl always is), a
:class:`GeneralTracker` instance, a name given to :func:`register_tracker_class`, a list
of those, or None. Where each writes and when each method is called: tracking/base.py
([Note: tracker lifecycle]) and docs/migrating.md ("Experiment trackers"). Nothing here
imports a tracker's package until a run starts.
"""

from __future__ import annotations

from surge.tracking.base import GeneralTracker, on_main_process
from surge.tracking.catalog import (
    BUILTIN,
    LOGGER_TYPE_TO_CLASS,
    LoggerType,
    build_tracker,
    filter_trackers,
    get_available_trackers,
    is_available,
    register_tracker_class,
    resolve_log_with,
)
from surge.tracking.jsonl import JSONLTracker
from surge.tracking.mlflow import MLflowTracker
from surge.tracking.other_services import (
    AimTracker,
    ClearMLTracker,
    CometMLTracker,
    DVCLiveTracker,
    SwanLabTracker,
    TrackioTracker,
)
from surge.tracking.tensorboard import TensorBoardTracker
from surge.tracking.wandb import WandBTracker

__all__ = [
    "BUILTIN",
    "LOGGER_TYPE_TO_CLASS",
    "AimTracker",
    "ClearMLTracker",
    "CometMLTracker",
    "DVCLiveTracker",
    "GeneralTracker",
    "JSONLTracker",
    "LoggerType",
    "MLflowTracker",
    "SwanLabTracker",
    "TensorBoardTracker",
    "TrackioTracker",
    "WandBTracker",
    "build_tracker",
    "filter_trackers",
    "get_available_trackers",
    "is_available",
    "on_main_process",
    "register_tracker_class",
    "resolve_log_with",
]
