"""What a worker of ``surge launch`` prints when the user's script fails, and the log file
that keeps the full text.

[Note: a failure report shows the user's code]
A worker runs the user's script through runpy, launch/bootstrap.py and torch elastic's
``@record``; a traceback printed as Python prints it starts with a dozen frames of that
machinery, and every rank that lost the failed rank mid-collective prints a traceback of its
own ("Connection closed by peer"). So, on an uncaught exception, a worker:

- appends the full traceback to ``rank<N>.log`` in the job's log directory (the launcher
  passes it in ``SURGE_LOG_DIR``; launch/runner.py names the file in its last line);
- prints the traceback without the launcher's frames above the user's first frame (runpy,
  bootstrap.py, torch/distributed/elastic). Frames *below* the user's code stay, whatever
  library they are in: they explain the error;
- prints one line instead, naming its log file, when the error only says a peer vanished
  (:data:`surge.hang.PEER_LOST`): a consequence of another rank's failure, which that rank
  reports itself;
- with ``quiet`` (``SURGE_QUIET``), prints the exception line only;
- after a hang diagnosis (surge/hang.py), which printed the report, prints nothing more.

Each line printed starts ``[rank<N>]:`` as torch's own exception hook writes it. Nothing
here imports torch.
"""

from __future__ import annotations

import os
import time
import traceback

LOG_DIR_ENV = "SURGE_LOG_DIR"
"""The job's log directory, set by the launcher for its workers (launch/runner.py)."""
QUIET_ENV = "SURGE_QUIET"
"""Set to "1" by the launcher for ``quiet``: the failing rank prints its exception line only."""

_RUNPY = os.sep + "runpy.py"
_BOOTSTRAP = os.sep + os.path.join("surge", "launch", "bootstrap.py")
_ELASTIC = os.sep + os.path.join("torch", "distributed", "elastic") + os.sep


def is_launcher_frame(filename: str) -> bool:
    """A frame of the machinery that runs the user's script: runpy, surge's bootstrap or
    torch's elastic launcher."""
    return filename == "<frozen runpy>" or filename.endswith((_RUNPY, _BOOTSTRAP)) or _ELASTIC in filename


def user_frames(frames: list[traceback.FrameSummary]) -> list[traceback.FrameSummary]:
    """``frames`` (outermost first) without the launcher's frames above the user's first
    one. A traceback of launcher frames only (a syntax error in the script, a module that
    cannot be found) keeps none: the exception line says what is wrong."""
    start = 0
    while start < len(frames) and is_launcher_frame(frames[start].filename):
        start += 1
    return list(frames[start:])


def _trim(te: traceback.TracebackException, seen: set[int]) -> None:
    if id(te) in seen:
        return
    seen.add(id(te))
    te.stack = traceback.StackSummary.from_list(user_frames(list(te.stack)))
    for chained in (te.__cause__, te.__context__, *(getattr(te, "exceptions", None) or ())):
        if chained is not None:
            _trim(chained, seen)


def user_traceback(exc: BaseException) -> str:
    """The traceback of ``exc`` (and of the exceptions chained to it) as Python prints it,
    without the launcher's frames above the user's code."""
    te = traceback.TracebackException(type(exc), exc, exc.__traceback__)
    _trim(te, set())
    return "".join(te.format())


def full_traceback(exc: BaseException, above: list[traceback.FrameSummary] | None = None) -> str:
    """The traceback of ``exc`` as Python prints it; ``above``: the frames outside the one
    that caught it (outermost first), which an uncaught exception's traceback would show."""
    te = traceback.TracebackException(type(exc), exc, exc.__traceback__)
    if above:
        te.stack = traceback.StackSummary.from_list([*above, *te.stack])
    return "".join(te.format())


def is_knock_on(exc: BaseException) -> bool:
    """The error, or one it was raised from or while handling, says a peer vanished
    mid-collective: a consequence of another rank's failure, not a cause."""
    from surge.hang import PEER_LOST

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if any(p in str(current).lower() for p in PEER_LOST):
            return True
        current = current.__cause__ or current.__context__
    return False


def log_file(log_dir: str, rank: str) -> str:
    """Where rank ``rank`` keeps the full text of its failures (launch/runner.py names it)."""
    return os.path.join(log_dir, f"rank{rank}.log")


def write_log(log_dir: str | None, rank: str, header: str, text: str) -> str | None:
    """Append ``header`` and ``text`` to the rank's log file; its path, or None when there is
    no log directory or it cannot be written (the console then gets the traceback)."""
    if not log_dir:
        return None
    path = log_file(log_dir, rank)
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{header}\n{text}")
    except OSError:
        return None
    return path


def header(rank: str, local_rank: str, restart: str) -> str:
    return (f"=== surge: rank {rank} (local rank {local_rank}), restart {restart}, pid {os.getpid()}, "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}: uncaught exception")


def console_text(exc: BaseException, *, rank: str, log: str | None, quiet: bool,
                 diagnosed: BaseException | None = None) -> str:
    """What the failing worker prints (see [Note: a failure report shows the user's code]).

    ``log``: the log file holding the full traceback, if one was written; ``diagnosed``: the
    :class:`surge.hang.CollectiveTimeout` a hang diagnosis made of ``exc``, whose report
    (with every rank's stack) or one-line summary is printed already: nothing more is."""
    if diagnosed is not None:
        return ""  # the diagnosis printed it, and the launcher's summary repeats it
    if log is not None and is_knock_on(exc):
        text = f"lost a peer (a consequence of another rank's failure); full traceback in {log}\n"
    elif quiet:
        text = "".join(traceback.format_exception_only(type(exc), exc))
    else:
        text = user_traceback(exc)
    return "".join(f"[rank{rank}]: {line}\n" for line in text.rstrip("\n").split("\n"))
