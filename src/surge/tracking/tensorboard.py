"""TensorBoard, where Accelerate's writes: event files in ``logging_dir/<run name>``
(``tensorboard --logdir <logging_dir>``); the run's configuration in a sub-run
``logging_dir/<run name>/<time>/`` (``add_hparams``' event file and ``hparams.yml``)."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from surge.tracking.base import GeneralTracker, flatten, on_main_process, plain, scalar

INSTALL = "pip install tensorboard  (or: pip install 'surge[tensorboard]')"


class TensorBoardTracker(GeneralTracker):
    """Accelerate's ``TensorBoardTracker(run_name, logging_dir, **kwargs)``; ``kwargs`` go to
    ``SummaryWriter``, which :meth:`start` creates. Numbers go to ``add_scalar``, strings
    to ``add_text``, a dict of numbers under one name to ``add_scalars``; each ``log``
    flushes. The configuration goes to ``add_hparams`` (nested keys joined by "/") and
    ``hparams.yml`` in one sub-run, and as JSON text ("config") in the run."""

    name = "tensorboard"
    requires_logging_directory = True

    def __init__(self, run_name: str, logging_dir: str | os.PathLike[str], **kwargs: Any) -> None:
        super().__init__()
        self.run_name = run_name
        self.logging_dir_param = logging_dir
        self.init_kwargs = kwargs
        self.logging_dir = os.path.join(os.fspath(logging_dir), run_name)

    @on_main_process
    def start(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ImportError(f"log_with='tensorboard' needs the tensorboard package: {INSTALL}") from None
        self.writer = SummaryWriter(self.logging_dir, **self.init_kwargs)

    @property
    def tracker(self) -> Any:
        return self.writer

    @on_main_process
    def store_init_configuration(self, values: dict[str, Any]) -> None:
        import yaml

        from surge.checkpoint.atomic import write_text

        flat = {k: scalar(v) for k, v in flatten(values).items()}
        hparams = {k: v if isinstance(v, (bool, int, float, str)) else repr(v) for k, v in flat.items()}
        sub_run = str(time.time())
        self.writer.add_hparams(hparams, metric_dict={}, run_name=sub_run)
        self.writer.add_text("config", "```\n" + json.dumps(plain(values), indent=2) + "\n```")
        self.writer.flush()
        write_text(os.path.join(self.logging_dir, sub_run, "hparams.yml"), yaml.safe_dump(plain(values)))

    @on_main_process
    def log(self, values: dict[str, Any], step: int | None = None, **kwargs: Any) -> None:
        for name, raw in values.items():
            value = scalar(raw)
            if isinstance(value, str):
                self.writer.add_text(name, value, global_step=step, **kwargs)
            elif isinstance(value, dict):
                self.writer.add_scalars(name, {k: scalar(v) for k, v in value.items()}, global_step=step, **kwargs)
            else:
                self.writer.add_scalar(name, value, global_step=step, **kwargs)
        self.writer.flush()

    @on_main_process
    def log_images(self, values: dict[str, Any], step: int | None = None, **kwargs: Any) -> None:
        """``add_images`` for each name (a batch of images: array or tensor, NCHW by default)."""
        for name, images in values.items():
            self.writer.add_images(name, images, global_step=step, **kwargs)

    @on_main_process
    def finish(self) -> None:
        self.writer.close()
