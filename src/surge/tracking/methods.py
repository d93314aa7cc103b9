"""The Accelerator's tracking methods: ``init_trackers``, ``log``, ``get_tracker``,
``end_training`` (mixed into :class:`surge.Accelerator`)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from surge.state import ProcessQueries

if TYPE_CHECKING:
    from surge.config.resolve import Plan


class TrackingMixin(ProcessQueries):
    """Needs ``plan`` (its ``log_with`` / ``trackers_missing``), ``logging_dir``,
    ``is_main_process`` and ``wait_for_checkpoint``."""

    trackers: list[Any]
    plan: Plan

    if TYPE_CHECKING:
        @property
        def logging_dir(self) -> str | None: ...
        def wait_for_checkpoint(self) -> str | None: ...

    def init_trackers(self, project_name: str, config: dict[str, Any] | None = None,
                      init_kwargs: dict[str, dict[str, Any]] | None = None) -> None:
        """Start the trackers named by ``log_with`` (main process only): each gets
        ``project_name`` as its run/project name and ``config`` as the run's
        hyperparameters; ``init_kwargs={"wandb": {...}}`` goes to that tracker's start.

        Raises:
            ValueError: a file-writing tracker without a logging dir, or init_kwargs for a
                tracker not in ``log_with``.
            ImportError: a tracker's package is missing (with the pip command).
        """
        from surge.tracking import start_tracker

        if not isinstance(project_name, str) or not project_name:
            raise ValueError(f"init_trackers(project_name={project_name!r}) needs a non-empty name.")
        init_kwargs = dict(init_kwargs or {})
        names = {t if isinstance(t, str) else t.name for t in self.plan.log_with}
        unknown = sorted(set(init_kwargs) - names)
        if unknown:
            raise ValueError(f"init_kwargs for {unknown}, which log_with does not use (it uses {sorted(names)}).")
        if not self.is_main_process:
            return
        if self.plan.trackers_missing:
            used = ", ".join(t if isinstance(t, str) else t.name for t in self.plan.log_with)
            print(f"surge: log_with='all' uses {used}; "
                  f"not installed: {', '.join(self.plan.trackers_missing)}.", file=sys.stderr)
        started = []
        try:
            for entry in self.plan.log_with:
                tracker = entry if not isinstance(entry, str) else start_tracker(
                    entry, project_name, self.logging_dir, dict(init_kwargs.get(entry, {})))
                if config is not None:
                    tracker.store_init_configuration(config)
                started.append(tracker)
        except BaseException:
            for tracker in started:
                tracker.finish()
            raise
        self.trackers = started

    def log(self, values: dict[str, Any], step: int | None = None, log_kwargs: dict[str, dict[str, Any]] | None = None
            ) -> None:
        """Send ``values`` (names to numbers, tensors or strings) to every tracker at
        ``step``; ``log_kwargs={"tensorboard": {...}}`` adds arguments for one tracker.
        Does nothing on other processes than the main one."""
        if not self.trackers:
            return
        for tracker in self.trackers:
            tracker.log(values, step=step, **(log_kwargs or {}).get(tracker.name, {}))

    def get_tracker(self, name: str, unwrap: bool = False) -> Any:
        """The started tracker called ``name`` (``unwrap=True``: its underlying object,
        e.g. the ``SummaryWriter`` or the wandb run). On other processes than the main
        one, a blank tracker whose methods do nothing.

        Raises:
            ValueError: no started tracker has that name.
        """
        from surge.tracking import GeneralTracker

        if not self.is_main_process:
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
