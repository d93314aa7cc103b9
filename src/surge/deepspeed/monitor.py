"""DeepSpeed's ``engine.monitor``: the config's ``tensorboard``, ``wandb``, ``csv_monitor``
and ``comet`` sections, written through surge's trackers.

DeepSpeed's engine writes, on the global rank 0 and at every accumulation boundary,
``Train/Samples/train_loss`` (the micro-batch losses of the cycle, each divided by the
accumulation steps, summed: rank 0's mean loss), ``Train/Samples/lr`` (the first group's)
and, under fp16, ``Train/Samples/loss_scale``; the step of each event is
``global_samples`` (before the step's samples are counted for the loss, after for the
others). Scripts also call ``engine.monitor.write_events([(name, value, step), ...])``
themselves (DeepSpeedExamples and DeepSpeed-Chat do), and test ``engine.monitor.enabled``.

Where each section writes (as DeepSpeed's monitors do):

- ``tensorboard``: ``{"enabled": true, "output_path": "runs/", "job_name": "x"}`` -> event
  files in ``output_path/job_name`` (surge's TensorBoard tracker).
- ``wandb``: ``{"enabled": true, "project": "deepspeed", "group": ..., "team": ...}`` ->
  ``wandb.init(project=..., group=..., entity=team)`` (surge's wandb tracker).
- ``csv_monitor``: ``{"enabled": true, "output_path": "", "job_name": "DeepSpeedJobName"}``
  -> ``output_path/job_name/<event name with "/" as "_">.csv``, rows ``step,<last part of
  the name>`` as DeepSpeed writes them.
- ``comet``: surge has no Comet integration; an enabled section is an error naming it.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Mapping
from typing import Any

from surge.tracking.base import GeneralTracker, scalar

SECTIONS = ("tensorboard", "wandb", "csv_monitor", "comet")
"""The config's monitor sections (DeepSpeed's ``get_monitor_config``)."""

Event = tuple[str, Any, int]
"""A DeepSpeed monitor event: (name, value, step)."""


def _section(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    section = config.get(name) or {}
    if not isinstance(section, Mapping):
        raise ValueError(f"DeepSpeed config {name}={section!r} must be an object such as "
                         f"{{\"enabled\": true, ...}}.")
    return dict(section)


def enabled_sections(config: Mapping[str, Any]) -> list[str]:
    """The monitor sections the config switches on (``"enabled": true``)."""
    return [name for name in SECTIONS if _section(config, name).get("enabled", False) is True]


class CSVMonitorTracker(GeneralTracker):
    """DeepSpeed's ``csv_monitor`` files: one CSV per event name in ``log_dir``, each
    starting with the row ``step,<last part of the name>``. Appends to existing files, as
    DeepSpeed does (a resumed run continues them)."""

    name = "csv_monitor"
    requires_logging_directory = True

    def __init__(self, log_dir: str) -> None:
        super().__init__()
        self.log_dir = log_dir
        self._started: set[str] = set()

    def start(self) -> None:
        os.makedirs(self.log_dir, exist_ok=True)

    def log(self, values: dict[str, Any], step: int | None = None, **kwargs: Any) -> None:
        for name, value in values.items():
            filename = name.replace("/", "_").replace(" ", "_")
            with open(os.path.join(self.log_dir, f"{filename}.csv"), "a+", newline="") as f:
                writer = csv.writer(f)
                if filename not in self._started:
                    self._started.add(filename)
                    writer.writerow(["step", name.split("/")[-1]])
                writer.writerow([step, scalar(value)])


def _trackers(config: Mapping[str, Any]) -> list[GeneralTracker]:
    trackers: list[GeneralTracker] = []
    for name in enabled_sections(config):
        section = _section(config, name)
        if name == "tensorboard":
            from surge.tracking.tensorboard import TensorBoardTracker

            trackers.append(TensorBoardTracker(str(section.get("job_name", "DeepSpeedJobName")),
                                               str(section.get("output_path", ""))))
        elif name == "wandb":
            from surge.tracking.wandb import WandBTracker

            trackers.append(WandBTracker(str(section.get("project", "deepspeed")), group=section.get("group"),
                                         entity=section.get("team")))
        elif name == "csv_monitor":
            trackers.append(CSVMonitorTracker(os.path.join(str(section.get("output_path", "")),
                                                           str(section.get("job_name", "DeepSpeedJobName")))))
        else:
            from surge.unsupported import UnsupportedError

            raise UnsupportedError("DeepSpeed config comet.enabled=true: surge has no Comet integration. Use the "
                                   "tensorboard, wandb or csv_monitor section, or log through "
                                   "surge.tracking.GeneralTracker (see docs/migrating.md, 'Experiment trackers').")
    return trackers


class Monitor:
    """``engine.monitor``: DeepSpeed's ``MonitorMaster``. ``enabled`` is the same on every
    process (any monitor section switched on); the trackers exist and write on the main
    process only.

    Args:
        config: The DeepSpeed config (its monitor sections are read).
        is_main_process: Start the trackers here.
    """

    def __init__(self, config: Mapping[str, Any], is_main_process: bool) -> None:
        self.enabled = bool(enabled_sections(config))
        """True when any monitor section is switched on (on every process, as in DeepSpeed)."""
        self.trackers: list[GeneralTracker] = _trackers(config) if is_main_process else []
        for tracker in self.trackers:
            tracker.start()

    def write_events(self, event_list: Iterable[Event]) -> None:
        """Write ``(name, value, step)`` events to every tracker (nothing where there is none:
        on processes other than the main one, or without a monitor section)."""
        for name, value, step in event_list:
            for tracker in self.trackers:
                tracker.log({name: value}, step=step)

    def finish(self) -> None:
        """Flush and close the trackers (``engine.destroy()``)."""
        while self.trackers:
            self.trackers.pop().finish()
