"""Weights & Biases. Offline with ``WANDB_MODE=offline`` (files under the logging dir,
``wandb sync`` later); online it needs ``wandb login`` or ``WANDB_API_KEY``."""

from __future__ import annotations

import os
from typing import Any

from surge.tracking.base import GeneralTracker, plain, scalar

INSTALL = "pip install wandb  (or: pip install 'surge[wandb]')"


class WandBTracker(GeneralTracker):
    """``wandb.init(project=<project name>, dir=<logging dir>, **init_kwargs)``."""

    name = "wandb"
    requires_logging_directory = False

    def __init__(self, run_name: str, logging_dir: str | os.PathLike[str] | None = None, **kwargs: Any) -> None:
        super().__init__()
        try:
            import wandb
        except ImportError:
            raise ImportError(f"log_with='wandb' needs the wandb package: {INSTALL}") from None
        if logging_dir is not None:
            os.makedirs(logging_dir, exist_ok=True)
            kwargs.setdefault("dir", os.fspath(logging_dir))
        self.run = wandb.init(project=run_name, **kwargs)

    @property
    def tracker(self) -> Any:
        return self.run

    def store_init_configuration(self, values: dict[str, Any]) -> None:
        self.run.config.update(plain(values), allow_val_change=True)  # type: ignore[no-untyped-call]  # unannotated

    def log(self, values: dict[str, Any], step: int | None = None, **kwargs: Any) -> None:
        self.run.log({k: scalar(v) for k, v in values.items()}, step=step, **kwargs)

    def finish(self) -> None:
        self.run.finish()
