"""``notebook_launcher`` and ``debug_launcher``: start a training *function* (not a script)
on several processes from a notebook or a test, as HF Accelerate's launchers do.

Both fork: a function defined in a notebook cell runs in the workers without being
pickled. The workers get the standard launcher variables (RANK, WORLD_SIZE, ...) and,
like ``surge launch``'s, one config file named by ``SURGE_CONFIG_FILE`` (see [Note: the
launcher hands over one file] in runner.py); the calling process's environment is
restored afterwards.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from surge.config.file import ENV_VAR, HANDOFF_NAME, write_config

_PRECISIONS = ("no", "fp16", "bf16", "fp8")


@contextmanager
def _handoff(values: dict[str, Any]) -> Iterator[str]:
    """A temporary config file holding ``values`` (removed afterwards)."""
    workdir = tempfile.mkdtemp(prefix="surge-notebook-")
    try:
        path = os.path.join(workdir, HANDOFF_NAME)
        write_config(values, path)
        yield path
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _check_fresh(launcher: str) -> None:
    """Forked workers cannot share a running process group or an initialised CUDA context.

    Raises:
        ValueError: either is there already, with the fix.
    """
    import torch

    from surge.process_group import process_group_active

    if process_group_active() or (torch.cuda.is_available() and torch.cuda.is_initialized()):  # type: ignore[no-untyped-call]
        raise ValueError(f"{launcher} forks its workers, but this process already started a process group or used "
                         "CUDA (an Accelerator or PartialState was created, or a tensor moved to a GPU). Create the "
                         "Accelerator inside the launched function only, and restart the notebook's kernel.")


class _Worker:
    """Runs ``function(*args)`` in a forked worker with the launcher's variables set."""

    def __init__(self, function: Callable[..., Any], num_processes: int, port: int, config_path: str) -> None:
        self.function, self.num_processes, self.port, self.config_path = function, num_processes, port, config_path

    def __call__(self, index: int, *args: Any) -> None:
        n = str(self.num_processes)
        os.environ.update({"RANK": str(index), "LOCAL_RANK": str(index), "WORLD_SIZE": n, "LOCAL_WORLD_SIZE": n,
                           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(self.port), ENV_VAR: self.config_path})
        self.function(*args)


def debug_launcher(function: Callable[..., Any], args: tuple[Any, ...] = (), num_processes: int = 2) -> None:
    """Run ``function(*args)`` on ``num_processes`` CPU processes (gloo), to debug
    distributed code on a laptop. Returns when every process has finished.

    Raises:
        ValueError: ``num_processes`` is not a positive integer, or a process group / CUDA
            is already in use here.
        torch.multiprocessing.ProcessRaisedException: a worker raised (its traceback).
    """
    from torch.multiprocessing.spawn import start_processes

    from surge.config._validate import check_int

    check_int("num_processes", num_processes, minimum=1)
    _check_fresh("debug_launcher")
    with _handoff({"use_cpu": True, "mixed_precision": "no"}) as path:
        worker = _Worker(function, num_processes, _free_port(), path)
        start_processes(worker, args=tuple(args), nprocs=num_processes,  # type: ignore[no-untyped-call]
                        start_method="fork")


def notebook_launcher(
    function: Callable[..., Any],
    args: tuple[Any, ...] = (),
    num_processes: int | None = None,
    mixed_precision: str = "no",
    use_port: str = "29500",
    master_addr: str = "127.0.0.1",
    node_rank: int = 0,
    num_nodes: int = 1,
    rdzv_backend: str = "static",
    rdzv_endpoint: str = "",
    rdzv_conf: dict[str, Any] | None = None,
    rdzv_id: str = "none",
    max_restarts: int = 0,
    monitor_interval: float = 0.1,
    log_line_prefix_template: str | None = None,
) -> None:
    """Run ``function(*args)`` on ``num_processes`` processes per machine (one per GPU,
    else CPU processes), through torch's elastic agent; from a notebook, a script or a test.

    ``num_processes=1`` calls the function in this process (``mixed_precision`` is then not
    applied, as in Accelerate: pass it to the Accelerator). Several machines: call it on each
    with ``num_nodes``, ``node_rank`` and machine 0's ``master_addr`` / ``use_port``. With
    ``rdzv_backend="static"`` (the default) the agents meet through surge's rendezvous
    (see [Note: surge's rendezvous] in rendezvous.py); other backends go to torch.

    Raises:
        ValueError: no ``num_processes``, a bad value, or a process group / CUDA already in
            use here (create the Accelerator inside ``function``).
        torch.distributed.elastic.multiprocessing.errors.ChildFailedError: a worker failed.
    """
    from surge.config._validate import check_choice, check_int

    if num_processes is None:
        raise ValueError("notebook_launcher needs num_processes=<processes per machine> (e.g. the number of GPUs).")
    check_int("num_processes", num_processes, minimum=1)
    check_int("num_nodes", num_nodes, minimum=1)
    check_int("node_rank", node_rank, minimum=0, maximum=num_nodes - 1, fix="node_rank counts machines from 0.")
    precision = check_choice("mixed_precision", mixed_precision, _PRECISIONS)
    if num_processes == 1 and num_nodes == 1:
        function(*args)
        return
    _check_fresh("notebook_launcher")
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from surge.launch.rendezvous import BACKEND, register

    backend, conf = rdzv_backend, dict(rdzv_conf or {})
    if rdzv_backend == "static":
        register()
        backend, conf["rank"] = BACKEND, node_rank
    endpoint = rdzv_endpoint or f"{master_addr}:{use_port}"
    options: dict[str, Any] = {}
    if log_line_prefix_template is not None:
        options["log_line_prefix_template"] = log_line_prefix_template
    config = LaunchConfig(min_nodes=num_nodes, max_nodes=num_nodes, nproc_per_node=num_processes, run_id=rdzv_id,
                          rdzv_endpoint=endpoint, rdzv_backend=backend, rdzv_configs=conf, max_restarts=max_restarts,
                          monitor_interval=monitor_interval, start_method="fork", **options)
    saved = dict(os.environ)
    with _handoff({"mixed_precision": precision}) as path:
        os.environ[ENV_VAR] = path  # the agent hands its environment to the workers
        try:
            elastic_launch(config, entrypoint=function)(*args)
        finally:
            os.environ.clear()
            os.environ.update(saved)
