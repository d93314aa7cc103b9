"""A progress bar shown once per job: on the main process, drawn with rich.

The names follow tqdm (``desc``, ``total``, ``initial``, ``update``, ``set_postfix``),
so ``from surge.utils import tqdm`` replaces ``accelerate.utils.tqdm``::

    for batch in tqdm(loader, desc="train"):
        ...
    with tqdm(total=steps, desc="train") as bar:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}")

When the output is not a terminal (a log file, CI, the piped output of ``surge launch``)
a live bar would be noise, so a plain line is printed each time another 5% is done (or
every ``line_every`` updates when the total is unknown), at most one per
``min_interval`` seconds, and once at the end.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any


class ProgressBar:
    """See module doc. ``main_process_only=False`` shows it on every process;
    ``disable=True`` shows nothing (iteration still works)."""

    def __init__(self, iterable: Iterable[Any] | None = None, desc: str | None = None, total: int | None = None, *,
                 initial: int = 0, disable: bool = False, main_process_only: bool = True, line_every: int = 100,
                 min_interval: float = 1.0, file: Any = None, **_tqdm_options: Any) -> None:
        from surge.logging import _rank

        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.iterable = iterable
        self.desc = desc or ""
        self.total = total
        self.n = initial
        self.postfix = ""
        self.line_every = line_every
        self.min_interval = min_interval
        self._last_line = float("-inf")
        self._file = file if file is not None else sys.stdout
        rank, _ = _rank()
        self.disable = disable or (main_process_only and rank != 0)
        self._start = time.monotonic()
        self._next_line = self._line_mark(initial)
        self._printed_at = initial
        self._progress: Any = None
        if not self.disable and self._file.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[post]}"),
                                      console=Console(file=self._file), transient=False)
            self._task = self._progress.add_task(self.desc, total=total, completed=initial, post="")
            self._progress.start()

    def _line_mark(self, n: int) -> int:
        step = max(1, self.total // 20) if self.total else self.line_every
        return (n // step + 1) * step

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("this progress bar has no iterable; use update() instead.")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self) -> int:
        if self.total is None:
            raise TypeError("this progress bar has no known total.")
        return self.total

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        """Advance by ``n``."""
        self.n += n
        if self.disable:
            return
        if self._progress is not None:
            self._progress.update(self._task, completed=self.n, post=self.postfix)
        elif self.n >= self._next_line and time.monotonic() - self._last_line >= self.min_interval:
            self._print_line()
            self._next_line = self._line_mark(self.n)

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **fields: Any) -> None:
        """Show ``name=value`` pairs after the bar (e.g. the loss)."""
        values = {**(ordered_dict or {}), **fields}
        self.postfix = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
        if self._progress is not None and refresh:
            self._progress.update(self._task, post=self.postfix)

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""
        if self._progress is not None and refresh:
            self._progress.update(self._task, description=self.desc)

    def _print_line(self) -> None:
        elapsed = time.monotonic() - self._start
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        rate = f"{self.n / elapsed:.2f} it/s" if elapsed > 0 else ""
        text = " ".join(part for part in (f"{self.desc}:" if self.desc else "", done, f"[{elapsed:.0f}s, {rate}]",
                                           self.postfix) if part)
        print(text, file=self._file, flush=True)
        self._printed_at = self.n
        self._last_line = time.monotonic()

    def close(self) -> None:
        if self.disable:
            return
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        elif self.n != self._printed_at:
            self._print_line()
        self.disable = True  # closing twice prints once


tqdm = ProgressBar
