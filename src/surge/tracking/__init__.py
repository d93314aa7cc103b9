"""Experiment trackers: ``Accelerator(log_with=...)`` (see tracking/base.py).

``log_with`` is a name ("jsonl", "tensorboard", "wandb", "mlflow"), "all" (every one
whose package is installed; jsonl always is), a list of names and tracker objects, or
None. Nothing here imports a tracker's package until a run starts.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from typing import Any

from surge.tracking.base import GeneralTracker

# name -> (module, class, the package it needs or None)
TRACKERS = {
    "jsonl": ("surge.tracking.jsonl", "JSONLTracker", None),
    "tensorboard": ("surge.tracking.tensorboard", "TensorBoardTracker", "tensorboard"),
    "wandb": ("surge.tracking.wandb", "WandBTracker", "wandb"),
    "mlflow": ("surge.tracking.mlflow", "MLflowTracker", "mlflow"),
}


def is_available(name: str) -> bool:
    """Whether tracker ``name``'s package is installed (found without importing it)."""
    package = TRACKERS[name][2]
    return package is None or importlib.util.find_spec(package) is not None


def resolve_log_with(log_with: Any) -> tuple[list[str | GeneralTracker], list[str]]:
    """``log_with`` as a list of tracker names and objects, plus the names "all" left
    out because their package is missing.

    Raises:
        ValueError: an unknown name.
        TypeError: something that is neither a name nor a GeneralTracker.
    """
    if log_with is None:
        return [], []
    items = log_with if isinstance(log_with, (list, tuple)) else [log_with]
    chosen: list[str | GeneralTracker] = []
    missing: list[str] = []
    for item in items:
        if isinstance(item, GeneralTracker):
            chosen.append(item)
            continue
        if not isinstance(item, str):
            raise TypeError(f"log_with={log_with!r}: {item!r} is neither a tracker name nor a GeneralTracker; use "
                            f"one of {sorted(TRACKERS)}, 'all', or a GeneralTracker subclass instance.")
        name = item.strip().lower()
        if name == "all":
            for known in TRACKERS:
                if is_available(known):
                    chosen.append(known)
                else:
                    missing.append(known)
        elif name in TRACKERS:
            chosen.append(name)
        else:
            raise ValueError(f"log_with={log_with!r}: unknown tracker {item!r}; use one of {sorted(TRACKERS)}, 'all', "
                             "or a GeneralTracker subclass instance.")
    unique: list[str | GeneralTracker] = []
    for entry in chosen:
        if isinstance(entry, GeneralTracker) or entry not in unique:
            unique.append(entry)
    return unique, missing


def start_tracker(name: str, run_name: str, logging_dir: str | None, init_kwargs: dict[str, Any]) -> GeneralTracker:
    """Construct built-in tracker ``name`` (imports its module, and so its package, now).

    Raises:
        ValueError: the tracker writes files and there is no logging dir.
        ImportError: its package is missing (with the pip command).
    """
    module, cls, _ = TRACKERS[name]
    tracker_class: type[GeneralTracker] = getattr(importlib.import_module(module), cls)
    if tracker_class.requires_logging_directory and logging_dir is None:
        raise ValueError(f"the {name} tracker writes files but no logging dir is set; pass "
                         "Accelerator(project_dir=...) or ProjectConfiguration(logging_dir=...).")
    factory: Callable[..., GeneralTracker] = tracker_class  # built-in trackers take (run_name, logging_dir, **kwargs)
    return factory(run_name, logging_dir, **init_kwargs)


__all__ = ["TRACKERS", "GeneralTracker", "is_available", "resolve_log_with", "start_tracker"]
