"""The Accelerator's tracking methods: ``init_trackers``, ``log``, ``get_tracker``,
``end_training`` and ``log_with`` (mixed into :class:`surge.Accelerator`), with
Accelerate's semantics ([Note: tracker lifecycle] in tracking/base.py)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from surge.state import ProcessQueries

if TYPE_CHECKING:
    from surge.config.resolve import Plan
    from surge.tracking import GeneralTracker, LoggerType


class TrackingMixin(ProcessQueries):
    """Needs ``plan`` (its ``log_with`` / ``trackers_missing``), ``logging_dir``,
    ``is_main_process`` and ``wait_for_checkpoint``."""

    trackers: list[Any]
    plan: Plan

    if TYPE_CHECKING:
        @property
        def logging_dir(self) -> str | None: ...
        def wait_for_checkpoint(self) -> str | None: ...

    @property
    def log_with(self) -> list[LoggerType | str | GeneralTracker]:
        """The trackers ``init_trackers`` starts, as Accelerate lists them: built-in names as
        ``LoggerType`` members, registered names as strings, tracker objects as given."""
        from surge.tracking import BUILTIN, LoggerType

        return [LoggerType(t) if isinstance(t, str) and t in BUILTIN else t for t in self.plan.log_with]

    def init_trackers(self, project_name: str, config: dict[str, Any] | None = None,
                      init_kwargs: dict[str, dict[str, Any]] | None = None) -> None:
        """Start the trackers named by ``log_with``, on the main process only (elsewhere this
        does nothing): construct the named ones with ``project_name`` as their run /
        project name (``init_kwargs={"wandb": {...}}`` goes to that tracker's constructor;
        entries for trackers not in use are ignored, as in Accelerate), call every
        tracker's ``start()``, then, with ``config``, every ``store_init_configuration(config)``.

        Raises:
            ValueError: a file-writing tracker without a logging dir.
            ImportError: a tracker's package is missing (with the pip command).
        """
        from surge.tracking import GeneralTracker, build_tracker

        if not isinstance(project_name, str) or not project_name:
            raise ValueError(f"init_trackers(project_name={project_name!r}) needs a non-empty name.")
        if not self.is_main_process:
            return
        kwargs = {str(name): dict(value) for name, value in (init_kwargs or {}).items()}
        if self.plan.trackers_missing:
            used = ", ".join(t if isinstance(t, str) else t.name for t in self.plan.log_with)
            print(f"surge: log_with='all' uses {used}; "
                  f"not installed: {', '.join(self.plan.trackers_missing)}.", file=sys.stderr)
        trackers = [entry if isinstance(entry, GeneralTracker) else
                    build_tracker(entry, project_name, self.logging_dir, kwargs.get(entry, {}))
                    for entry in self.plan.log_with]
        started: list[GeneralTracker] = []
        try:
            for tracker in trackers:
                tracker.start()
                started.append(tracker)
            if config is not None:
                for tracker in trackers:
                    tracker.store_init_configuration(config)
        except BaseException:
            for tracker in started:
                tracker.finish()
            raise
        self.trackers = trackers

    def log(self, values: dict[str, Any], step: int | None = None, log_kwargs: dict[str, dict[str, Any]] | None = None
            ) -> None:
        """Send ``values`` (names to numbers, tensors or strings) to every started tracker at
        ``step``; ``log_kwargs={"tensorboard": {...}}`` adds arguments for one tracker.
        Main process only (elsewhere, and before ``init_trackers``, it does nothing)."""
        if not self.trackers or not self.is_main_process:
            return
        for tracker in self.trackers:
            tracker.log(values, step=step, **(log_kwargs or {}).get(tracker.name, {}))

    def get_tracker(self, name: str, unwrap: bool = False) -> Any:
        """The started tracker called ``name`` (``unwrap=True``: its underlying object,
        e.g. the ``SummaryWriter`` or the wandb run). Where no tracker was started (other
        processes than the main one, or before ``init_trackers``): a blank tracker whose
        methods do nothing, as in Accelerate.

        Raises:
            ValueError: trackers were started and none has that name.
        """
        from surge.tracking import GeneralTracker

        if not self.trackers:
            return GeneralTracker(_blank=True)
        for tracker in self.trackers:
            if tracker.name == name:
                return tracker.tracker if unwrap else tracker
        raise ValueError(f"no tracker named {name!r} was started (started: {[t.name for t in self.trackers]}); pass "
                         "it in log_with and call init_trackers first.")

    def end_training(self) -> None:
        """Finish the run: wait for a checkpoint still being written in the background,
        then flush and close every tracker."""
        try:
            self.wait_for_checkpoint()
        finally:
            trackers, self.trackers = self.trackers, []
            for tracker in trackers:
                tracker.finish()
