"""The built-in tracker: one JSON object per line, no dependency.

``logging_dir/<run name>/metrics.jsonl`` (next to TensorBoard's event files for the same
run) gets ``{"step": s, "time": t, name: value, ...}`` per ``log`` call, flushed at once
(a crash loses nothing logged before it); ``config.json`` holds the run's configuration.
Read it back with one line of Python::

    [json.loads(line) for line in open("runs/exp/exp/metrics.jsonl")]
"""

from __future__ import annotations

import json
import os
from typing import Any

from surge.tracking.base import GeneralTracker, on_main_process, plain


class JSONLTracker(GeneralTracker):
    name = "jsonl"
    requires_logging_directory = True

    def __init__(self, run_name: str, logging_dir: str | os.PathLike[str], **kwargs: Any) -> None:
        super().__init__()
        if kwargs:
            raise TypeError(f"the jsonl tracker takes no init_kwargs; got {sorted(kwargs)}.")
        self.run_name = run_name
        self.directory = os.path.join(os.fspath(logging_dir), run_name)
        self.path = os.path.join(self.directory, "metrics.jsonl")

    @on_main_process
    def start(self) -> None:
        os.makedirs(self.directory, exist_ok=True)
        # Appending: a resumed run continues the same file. Open for the whole run; finish() closes it.
        self._file = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115

    @property
    def tracker(self) -> Any:
        return self._file

    @on_main_process
    def store_init_configuration(self, values: dict[str, Any]) -> None:
        from surge.checkpoint.atomic import write_text

        write_text(os.path.join(self.directory, "config.json"), json.dumps(plain(values), indent=2) + "\n")

    @on_main_process
    def log(self, values: dict[str, Any], step: int | None = None, **kwargs: Any) -> None:
        import time

        record = {"step": step, "time": round(time.time(), 3), **{str(k): plain(v) for k, v in values.items()}}
        self._file.write(json.dumps(record) + "\n")

    @on_main_process
    def finish(self) -> None:
        if not self._file.closed:
            self._file.close()
