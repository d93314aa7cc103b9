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

from torch.distributed.elastic.multiprocessing.errors import record


@record
def main() -> None:
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
