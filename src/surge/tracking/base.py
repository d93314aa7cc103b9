"""The tracker interface, and what every tracker shares (HF Accelerate's names).

A tracker is constructed (by ``init_trackers`` for a name in ``log_with``, or by you for
an object in it), then ``init_trackers`` calls, on the main process only, every tracker's
:meth:`~GeneralTracker.start`, then every tracker's ``store_init_configuration(config)``;
``Accelerator.log`` calls ``log`` and ``end_training`` calls ``finish``, on the main
process only too ([Note: tracker lifecycle]). A custom tracker written for Accelerate runs
unchanged::

    from surge.tracking import GeneralTracker, on_main_process

    class PrintTracker(GeneralTracker):
        name = "print"
        requires_logging_directory = False

        @on_main_process
        def start(self):
            self.run = open("log.txt", "a")

        @property
        def tracker(self):
            return self.run

        @on_main_process
        def log(self, values, step=None, **kwargs):
            print(step, values, file=self.run)

    accelerator = Accelerator(log_with=[PrintTracker(), "tensorboard"], project_dir="runs/exp")

Built-in trackers live one per module in this package and import their package only in
``start`` (``import surge`` never loads tensorboard, wandb or mlflow).

[Note: tracker lifecycle]
``Accelerator.init_trackers`` runs on the main process only (as Accelerate's does): there
it constructs the named trackers, calls every tracker's ``start()``, then every tracker's
``store_init_configuration(config)`` when a config is given. ``log`` and ``end_training``
call the started trackers, which exist on the main process only; elsewhere
``get_tracker`` returns a blank ``GeneralTracker``. A tracker's ``main_process_only``
attribute (True by default) matters only where its methods are wrapped in
:func:`on_main_process` and called directly: then they do nothing on other processes.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def _is_main_process() -> bool:
    from surge.logging import _rank  # the rank before or after the process group exists

    return _rank()[0] == 0


def on_main_process(function: F) -> F:
    """Decorator for a tracker's methods (Accelerate's ``accelerate.tracking.on_main_process``):
    when the tracker's ``main_process_only`` attribute is true, the method runs on the main
    process only and returns None elsewhere. Checked at each call, so a tracker may be
    constructed before the process group exists."""

    @functools.wraps(function)
    def run_on_main_process(self: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(self, "main_process_only", False) and not _is_main_process():
            return None
        return function(self, *args, **kwargs)

    return run_on_main_process  # type: ignore[return-value]


class GeneralTracker:
    """Base class of every tracker (Accelerate's ``GeneralTracker``).

    Subclasses set ``name`` and ``requires_logging_directory`` and override what they
    support; the defaults do nothing. ``requires_logging_directory`` makes
    ``init_trackers`` pass the logging dir as the second argument of a tracker it builds
    from a name, and refuse to start without one. ``main_process_only``: see
    [Note: tracker lifecycle].
    """

    name: str = "custom"
    requires_logging_directory: bool = False
    main_process_only: bool = True

    def __init__(self, _blank: bool = False) -> None:
        self._blank = _blank

    def start(self) -> None:
        """Open the run (called once by ``init_trackers``, after every tracker is
        constructed and before any configuration is stored)."""

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
