"""Accelerate's trackers surge has no integration for: the class names exist (so imports
work) and constructing one raises one error that says what is supported."""

from __future__ import annotations

from typing import Any

from surge.tracking.base import GeneralTracker
from surge.unsupported import UnsupportedError

SUPPORTED_TEXT = ("surge's trackers are 'jsonl', 'tensorboard', 'wandb' and 'mlflow'; for another service, "
                  "subclass surge.tracking.GeneralTracker (see docs/migrating.md, 'Experiment trackers')")


class _Unsupported(GeneralTracker):
    requires_logging_directory = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise UnsupportedError(f"{type(self).__name__}: surge has no {self.name} integration. {SUPPORTED_TEXT}.")


class AimTracker(_Unsupported):
    name = "aim"


class CometMLTracker(_Unsupported):
    name = "comet_ml"


class ClearMLTracker(_Unsupported):
    name = "clearml"


class DVCLiveTracker(_Unsupported):
    name = "dvclive"


class SwanLabTracker(_Unsupported):
    name = "swanlab"


class TrackioTracker(_Unsupported):
    name = "trackio"


UNSUPPORTED: dict[str, type[GeneralTracker]] = {
    cls.name: cls
    for cls in (AimTracker, CometMLTracker, ClearMLTracker, DVCLiveTracker, SwanLabTracker, TrackioTracker)
}
