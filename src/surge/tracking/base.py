"""The tracker interface, and what every tracker shares.

A tracker receives a run's configuration once and then dicts of values with a step.
Built-in ones live one per module in this package and import their package only when
a run starts (``import surge`` never loads tensorboard, wandb or mlflow). A custom
tracker subclasses :class:`GeneralTracker`::

    class PrintTracker(GeneralTracker):
        name = "print"

        def log(self, values, step=None, **kwargs):
            print(step, values)

    accelerator = Accelerator(log_with=[PrintTracker(), "jsonl"])

Only the main process creates and calls trackers; elsewhere ``get_tracker`` returns a
blank tracker whose methods do nothing.
"""

from __future__ import annotations

import numbers
from typing import Any


class GeneralTracker:
    """Base class of every tracker (Accelerate's ``GeneralTracker`` names).

    Subclasses set ``name`` and override what they support; the defaults do nothing.
    ``requires_logging_directory`` makes :meth:`surge.Accelerator.init_trackers` refuse
    to start it without ``project_dir`` / ``logging_dir``.
    """

    name: str = "custom"
    requires_logging_directory: bool = False

    def __init__(self, _blank: bool = False) -> None:
        self._blank = _blank

    @property
    def tracker(self) -> Any:
        """The underlying object (a ``SummaryWriter``, a wandb run, ...); the tracker itself here."""
        return self

    def store_init_configuration(self, values: dict[str, Any]) -> None:
        """Record the run's hyperparameters (called once by ``init_trackers(config=...)``)."""

    def log(self, values: dict[str, Any], step: int | None = None, **kwargs: Any) -> None:
        """Record ``values`` (names to numbers or strings) at ``step``."""

    def finish(self) -> None:
        """Flush and close (called by ``end_training``)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}{', blank' if self._blank else ''})"


def scalar(value: Any) -> Any:
    """A logged value as a plain Python number when it is one: one-element tensors and
    NumPy values included (for a device tensor that is one sync, as ``.item()`` is)."""
    if isinstance(value, numbers.Number):
        return value
    numel, size = getattr(value, "numel", None), getattr(value, "size", None)
    if hasattr(value, "item") and ((callable(numel) and numel() == 1) or size == 1):
        return value.item()
    return value


def flatten(values: dict[str, Any], prefix: str = "", sep: str = "/") -> dict[str, Any]:
    """``{"optim": {"lr": 1e-3}}`` -> ``{"optim/lr": 1e-3}`` (for trackers with flat names)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flatten(value, name, sep))
        else:
            out[name] = value
    return out


def plain(value: Any) -> Any:
    """A config value as JSON-friendly data (anything else becomes its ``repr``)."""
    value = scalar(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return repr(value)
