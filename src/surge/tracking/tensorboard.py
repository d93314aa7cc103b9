"""TensorBoard: event files under ``logging_dir/<run name>`` (``tensorboard --logdir``)."""

from __future__ import annotations

import json
import os
from typing import Any

from surge.tracking.base import GeneralTracker, flatten, plain, scalar

INSTALL = "pip install tensorboard  (or: pip install 'surge[tensorboard]')"


class TensorBoardTracker(GeneralTracker):
    """Numbers go to ``add_scalar``, strings to ``add_text``, a dict of numbers under
    one name to ``add_scalars``; the configuration to ``add_hparams`` and as JSON text."""

    name = "tensorboard"
    requires_logging_directory = True

    def __init__(self, run_name: str, logging_dir: str | os.PathLike[str], **kwargs: Any) -> None:
        super().__init__()
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ImportError(f"log_with='tensorboard' needs the tensorboard package: {INSTALL}") from None
        self.logdir = os.path.join(os.fspath(logging_dir), run_name)
        self.writer = SummaryWriter(self.logdir, **kwargs)

    @property
    def tracker(self) -> Any:
        return self.writer

    def store_init_configuration(self, values: dict[str, Any]) -> None:
        flat = {k: scalar(v) for k, v in flatten(values).items()}
        hparams = {k: v if isinstance(v, (bool, int, float, str)) else repr(v) for k, v in flat.items()}
        self.writer.add_hparams(hparams, metric_dict={}, run_name=".")
        self.writer.add_text("config", "```\n" + json.dumps(plain(values), indent=2) + "\n```")
        self.writer.flush()

    def log(self, values: dict[str, Any], step: int | None = None, **kwargs: Any) -> None:
        for name, raw in values.items():
            value = scalar(raw)
            if isinstance(value, str):
                self.writer.add_text(name, value, global_step=step, **kwargs)
            elif isinstance(value, dict):
                self.writer.add_scalars(name, {k: scalar(v) for k, v in value.items()}, global_step=step, **kwargs)
            else:
                self.writer.add_scalar(name, value, global_step=step, **kwargs)

    def finish(self) -> None:
        self.writer.close()
