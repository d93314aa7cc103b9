"""Which trackers ``log_with`` may name, and how a name becomes a tracker.

Accelerate's registration API: :class:`LoggerType`, :func:`filter_trackers`,
:func:`register_tracker_class`, :func:`get_available_trackers` and
``LOGGER_TYPE_TO_CLASS``. surge's built-in trackers are "jsonl" (no dependency),
"tensorboard", "wandb" and "mlflow". Accelerate's other names (aim, comet_ml, clearml,
dvclive, swanlab, trackio) are members of :class:`LoggerType`; naming one in
``log_with`` is a ValueError that lists what is supported, and "all" skips them (as
Accelerate's "all" skips trackers whose package is missing).
"""

from __future__ import annotations

import enum
import importlib.util
import warnings
from collections.abc import Callable
from typing import Any

from surge.tracking.base import GeneralTracker
from surge.tracking.jsonl import JSONLTracker
from surge.tracking.mlflow import MLflowTracker
from surge.tracking.other_services import UNSUPPORTED
from surge.tracking.tensorboard import TensorBoardTracker
from surge.tracking.wandb import WandBTracker


class _HasValues(enum.EnumMeta):
    """``"wandb" in LoggerType`` is True (Accelerate's ``EnumWithContains``)."""

    def __contains__(cls, item: object) -> bool:
        try:
            cls(item)
        except (ValueError, TypeError):
            return False
        return True


class LoggerType(enum.Enum, metaclass=_HasValues):
    """The trackers ``log_with`` may name (Accelerate's members, plus surge's JSONL).
    ``str(LoggerType.WANDB) == "wandb"``; ``LoggerType.list()`` gives every name."""

    ALL = "all"
    AIM = "aim"
    TENSORBOARD = "tensorboard"
    WANDB = "wandb"
    TRACKIO = "trackio"
    COMETML = "comet_ml"
    MLFLOW = "mlflow"
    CLEARML = "clearml"
    DVCLIVE = "dvclive"
    SWANLAB = "swanlab"
    JSONL = "jsonl"

    def __str__(self) -> str:
        return str(self.value)

    @classmethod
    def list(cls) -> list[str]:
        return [str(member) for member in cls]


# name -> (class, the package it needs or None). "all" takes them in this order.
BUILTIN: dict[str, tuple[type[GeneralTracker], str | None]] = {
    "jsonl": (JSONLTracker, None),
    "tensorboard": (TensorBoardTracker, "tensorboard"),
    "wandb": (WandBTracker, "wandb"),
    "mlflow": (MLflowTracker, "mlflow"),
}

LOGGER_TYPE_TO_CLASS: dict[str, type[GeneralTracker]] = {name: cls for name, (cls, _) in BUILTIN.items()}
"""Name -> tracker class: the built-in ones, then those given to :func:`register_tracker_class`."""

_registered: set[str] = set()


def _supported() -> str:
    names = sorted(set(BUILTIN) | _registered)
    return f"{names}, 'all', a GeneralTracker instance, or a class given to register_tracker_class"


def is_available(name: str) -> bool:
    """Whether tracker ``name``'s package is installed (found without importing it)."""
    if name in _registered:
        return True
    package = BUILTIN[name][1]
    return package is None or importlib.util.find_spec(package) is not None


def get_available_trackers() -> list[LoggerType]:
    """The built-in trackers whose package is installed (what "all" starts)."""
    return [LoggerType(name) for name in BUILTIN if is_available(name)]


def register_tracker_class(tracker_class: type[GeneralTracker]) -> None:
    """Let ``log_with`` name a custom tracker class by its ``name`` (Accelerate's function).

    ``init_trackers`` constructs it as ``tracker_class(project_name, **init_kwargs[name])``,
    with the logging dir as second argument when ``requires_logging_directory`` is true.
    Registering a built-in name replaces that tracker (with a warning).

    Raises:
        ValueError: not a GeneralTracker subclass, or no ``name`` / ``requires_logging_directory``.
    """
    if not (isinstance(tracker_class, type) and issubclass(tracker_class, GeneralTracker)):
        raise ValueError(f"register_tracker_class({tracker_class!r}): pass a subclass of GeneralTracker.")
    name = tracker_class.__dict__.get("name") or getattr(tracker_class, "name", None)
    if not isinstance(name, str) or not name or name == GeneralTracker.name:
        raise ValueError(f"register_tracker_class({tracker_class.__name__}): set a non-empty class attribute "
                         "`name` (the string log_with will use).")
    if not hasattr(tracker_class, "requires_logging_directory"):  # pragma: no cover - GeneralTracker defines it
        raise ValueError(f"register_tracker_class({tracker_class.__name__}) needs `requires_logging_directory`.")
    if name in LOGGER_TYPE_TO_CLASS:
        warnings.warn(f"register_tracker_class: {tracker_class.__name__} replaces the tracker already registered as "
                      f"{name!r} ({LOGGER_TYPE_TO_CLASS[name].__name__}).", stacklevel=2)
    LOGGER_TYPE_TO_CLASS[name] = tracker_class
    _registered.add(name)


def _name_of(item: Any) -> str | None:
    if isinstance(item, LoggerType):
        return item.value
    return item.strip().lower() if isinstance(item, str) else None


def resolve_log_with(log_with: Any) -> tuple[list[str | GeneralTracker], list[str]]:
    """``log_with`` as a list of tracker names and objects, plus the names "all" left
    out because their package is missing. Repeated names count once; with "all", tracker
    objects come first (as in Accelerate).

    Raises:
        ValueError: an unknown name, or one surge has no integration for.
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
        name = _name_of(item)
        if name is None:
            raise TypeError(f"log_with={log_with!r}: {item!r} is neither a tracker name nor a GeneralTracker; use "
                            f"{_supported()}.")
        if name == "all":
            for known in BUILTIN:
                (chosen if is_available(known) else missing).append(known)
        elif name in LOGGER_TYPE_TO_CLASS:
            chosen.append(name)
        elif name in UNSUPPORTED:
            raise ValueError(f"log_with={log_with!r}: surge has no {name} integration; use {_supported()} "
                             "(log_with='all' skips the trackers surge does not have).")
        else:
            raise ValueError(f"log_with={log_with!r}: unknown tracker {item!r}; use {_supported()}.")
    if any(_name_of(item) == "all" for item in items):  # Accelerate's order: tracker objects first
        chosen = [e for e in chosen if isinstance(e, GeneralTracker)] + [e for e in chosen if isinstance(e, str)]
    unique: list[str | GeneralTracker] = []
    for entry in chosen:
        if isinstance(entry, GeneralTracker) or entry not in unique:
            unique.append(entry)
    return unique, [name for name in missing if name not in unique]


def _check_logging_dir(name: str, logging_dir: Any) -> type[GeneralTracker]:
    tracker_class = LOGGER_TYPE_TO_CLASS[name]
    if tracker_class.requires_logging_directory and logging_dir is None:
        raise ValueError(f"the {name} tracker writes files but no logging dir is set; pass "
                         "Accelerator(project_dir=...) or ProjectConfiguration(logging_dir=...).")
    return tracker_class


def filter_trackers(log_with: Any, logging_dir: Any = None) -> list[LoggerType | str | GeneralTracker]:
    """Accelerate's ``filter_trackers``: ``log_with`` checked and expanded ("all": every
    installed built-in tracker), repeats dropped, built-in names as :class:`LoggerType`
    members, registered names as strings, tracker objects as they are.

    Raises:
        ValueError: an unknown or unsupported name, or a file-writing tracker and no ``logging_dir``.
        TypeError: something that is neither a name nor a GeneralTracker.
    """
    chosen, _ = resolve_log_with(log_with)
    out: list[LoggerType | str | GeneralTracker] = []
    for entry in chosen:
        if isinstance(entry, GeneralTracker):
            out.append(entry)
        else:
            _check_logging_dir(entry, logging_dir)
            out.append(LoggerType(entry) if entry in BUILTIN and entry not in _registered else entry)
    return out


def build_tracker(name: str, project_name: str, logging_dir: str | None, init_kwargs: dict[str, Any]
                  ) -> GeneralTracker:
    """Construct tracker ``name`` as Accelerate does: ``cls(project_name, logging_dir,
    **init_kwargs)`` when it requires a logging dir, else ``cls(project_name, **init_kwargs)``.
    Nothing is opened until its ``start()``.

    Raises:
        ValueError: the tracker writes files and there is no logging dir.
    """
    tracker_class = _check_logging_dir(name, logging_dir)
    factory: Callable[..., GeneralTracker] = tracker_class  # trackers take (run name, [logging dir], **kwargs)
    if tracker_class.requires_logging_directory:
        return factory(project_name, logging_dir, **init_kwargs)
    return factory(project_name, **init_kwargs)
