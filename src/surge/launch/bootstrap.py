"""What each worker of a multi-process launch runs: the user's script or module, under
torch elastic's ``@record``.

``@record`` writes an uncaught exception, with its time, to the error file the agent
reads. The agent then knows which rank failed *first* (the root cause), rather than
whichever rank happened to exit first after a peer vanished from a collective.

    python -m surge.launch.bootstrap script.py [args...]
    python -m surge.launch.bootstrap -m package.module [args...]
"""

from __future__ import annotations

import os
import runpy
import sys

from torch.distributed.elastic.multiprocessing.errors import get_error_handler, record


@record
def main() -> None:
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
        # A collective that timed out becomes a diagnosis naming who waited and who never
        # arrived (surge/hang.py), and that is what the launcher reports.
        from surge.hang import await_report, explain

        diagnosed = explain(exc)
        if diagnosed is not None:
            raise diagnosed from None  # the report above has the original error and every stack
        await_report(exc)  # a peer's diagnosis closed our links: let it finish before we exit
        raise


def _run() -> None:
    argv = sys.argv[1:]
    if argv[:1] == ["-m"]:
        module, rest = argv[1], argv[2:]
        sys.argv = [module, *rest]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        script, rest = argv[0], argv[1:]
        sys.argv = [script, *rest]
        # As `python script.py` does: the script's directory comes first on the path.
        sys.path[0] = os.path.dirname(os.path.abspath(script))
        runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
