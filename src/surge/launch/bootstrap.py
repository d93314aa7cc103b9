"""What each worker of a multi-process launch runs: the user's script or module, under
torch elastic's ``@record``.

``@record`` writes an uncaught exception, with its time, to the error file the agent
reads. The agent then knows which rank failed *first* (the root cause), rather than
whichever rank happened to exit first after a peer vanished from a collective. The
traceback the worker prints shows the user's code, and the full text goes to the job's
log directory: see [Note: a failure report shows the user's code] in launch/failure.py.

    python -m surge.launch.bootstrap script.py [args...]
    python -m surge.launch.bootstrap -m package.module [args...]

Besides the torchrun variables, it reads what the launcher set for it alone (never the
library): ``SURGE_LOG_DIR``, ``SURGE_QUIET`` and ``SURGE_CPU_AFFINITY``.
"""

from __future__ import annotations

import os
import runpy
import sys
import traceback

from torch.distributed.elastic.multiprocessing.errors import get_error_handler, record

from surge.launch.affinity import AFFINITY_ENV, BIND_CORES_ENV
from surge.launch.failure import LOG_DIR_ENV, QUIET_ENV

LOCAL_RANK_ARG_ENV = "SURGE_LOCAL_RANK_ARG"
"""Set to "1" by the launcher when each script gets ``--local_rank=<n>`` (deepspeed style)."""


@record
def main() -> None:
    if os.environ.get(AFFINITY_ENV) == "1":
        from surge.launch.affinity import pin_worker

        pin_worker()  # before the script starts any thread: they inherit the mask
    if BIND_CORES_ENV in os.environ:
        from surge.launch.affinity import bind_worker

        bind_worker(os.environ[BIND_CORES_ENV])
    try:
        _run()
    except SystemExit as exc:
        # A deliberate non-zero exit is recorded too, with its time, so the launcher can
        # tell it caused the failure rather than a peer that then lost it (@record itself
        # only records exceptions).
        if exc.code not in (None, 0):
            get_error_handler().record_exception(exc)
        raise
    except Exception as exc:
        # The frames above this one (@record's, runpy's), which Python's own traceback shows.
        _report(exc, traceback.extract_stack(sys._getframe().f_back))
        raise SystemExit(1) from None  # what an uncaught exception exits with


def _report(exc: Exception, above: list[traceback.FrameSummary]) -> None:
    """Record the failure for the launcher, keep its full text in the rank's log file and
    print what the user needs (launch/failure.py)."""
    from surge.hang import await_report, explain
    from surge.launch import failure

    # A collective that timed out becomes a diagnosis naming who waited and who never
    # arrived (surge/hang.py), and that is what the launcher reports.
    diagnosed = explain(exc)
    if diagnosed is None:
        await_report(exc)  # a peer's diagnosis closed our links: let it finish before we exit
    get_error_handler().record_exception(diagnosed or exc)  # the error file the launcher ranks failures by
    rank, local_rank = os.environ.get("RANK", "0"), os.environ.get("LOCAL_RANK", "0")
    text = failure.full_traceback(exc, above)
    if diagnosed is not None:
        text += f"reported as {type(diagnosed).__name__}: {diagnosed}\n"
    log = failure.write_log(os.environ.get(LOG_DIR_ENV), rank,
                            failure.header(rank, local_rank, os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")), text)
    shown = failure.console_text(exc, rank=rank, log=log, quiet=os.environ.get(QUIET_ENV) == "1", diagnosed=diagnosed)
    sys.stderr.write(shown)
    sys.stderr.flush()


def _run() -> None:
    argv = sys.argv[1:]
    if argv[:1] == ["-m"]:
        module, rest = argv[1], argv[2:]
        if os.environ.get(LOCAL_RANK_ARG_ENV) == "1":
            rest = [f"--local_rank={os.environ.get('LOCAL_RANK', '0')}", *rest]
        sys.argv = [module, *rest]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        script, rest = argv[0], argv[1:]
        if os.environ.get(LOCAL_RANK_ARG_ENV) == "1":  # as the deepspeed launcher: before the script's arguments
            rest = [f"--local_rank={os.environ.get('LOCAL_RANK', '0')}", *rest]
        sys.argv = [script, *rest]
        # As `python script.py` does: the script's directory comes first on the path.
        sys.path[0] = os.path.dirname(os.path.abspath(script))
        runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
