"""Where a run keeps its files: checkpoints, logs, exported models."""

from __future__ import annotations

import os
from dataclasses import dataclass

from surge.config._validate import check_bool, check_int


@dataclass
class ProjectConfiguration:
    """The project directory layout, with HF Accelerate's names.

    Example:
        >>> ProjectConfiguration("runs/exp1", automatic_checkpoint_naming=True, total_limit=3)
    """

    project_dir: str | None = None
    """Root of everything the run writes; None means the current directory."""
    logging_dir: str | None = None
    """Where trackers write; None means ``project_dir`` itself, as in HF Accelerate (TensorBoard
    then writes to ``project_dir/<project name>``, see docs/migrating.md)."""
    automatic_checkpoint_naming: bool = False
    """``save_state()`` with no directory writes ``project_dir/checkpoints/checkpoint_<n>``."""
    total_limit: int | None = None
    """Keep at most this many automatic checkpoints (the oldest go first); None keeps all."""
    iteration: int = 0
    """Number of the next automatic checkpoint; restored by ``load_state``."""

    def __post_init__(self) -> None:
        for name in ("project_dir", "logging_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (str, os.PathLike)):
                raise TypeError(f"ProjectConfiguration.{name}={value!r} must be a path (str or os.PathLike) or None.")
            if value is not None:
                setattr(self, name, os.fspath(value))
        check_bool("ProjectConfiguration.automatic_checkpoint_naming", self.automatic_checkpoint_naming)
        if self.total_limit is not None:
            check_int("ProjectConfiguration.total_limit", self.total_limit, minimum=1)
        check_int("ProjectConfiguration.iteration", self.iteration, minimum=0)
        if self.logging_dir is None:
            self.logging_dir = self.project_dir

    def set_directories(self, project_dir: str | os.PathLike[str] | None = None) -> None:
        """Point the project at ``project_dir``; the logging dir follows it unless it was set
        to another directory (Accelerate keeps any logging dir already set: the same
        wherever an Accelerator calls this, on a project without a directory yet)."""
        follows = self.logging_dir is None or self.logging_dir == self.project_dir
        self.project_dir = os.fspath(project_dir) if project_dir is not None else None
        if follows:
            self.logging_dir = self.project_dir
