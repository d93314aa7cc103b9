"""Starting the job: one process directly, several through torch's elastic agent.

[Note: the launcher hands over one file]
The resolved settings (config file + flags) are written to a temporary YAML file and
its path is put in ``SURGE_CONFIG_FILE`` for the workers; ``Accelerator()`` reads it
(config/file.py). Nothing else passes from the launcher to the workers but the
standard torchrun variables (RANK, WORLD_SIZE, ...).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from typing import Any

from surge.config.file import ENV_VAR, ConfigError, SurgeConfig, write_config


def _check_target(target: str, module: bool) -> None:
    if module:
        # `python -m` looks in the current directory first; so does this check.
        sys.path.insert(0, os.getcwd())
        try:
            found = importlib.util.find_spec(target) is not None
        except (ImportError, ValueError):
            found = False
        finally:
            sys.path.pop(0)
        if not found:
            raise ConfigError(f"module {target!r} cannot be found; check the name and that its package is installed")
    elif not os.path.isfile(target):
        raise ConfigError(f"script {target!r} does not exist; give the path of a Python file (or -m for a module)")


def _exit_code(code: int | None) -> int:
    if code is None:
        return 1
    return 128 - code if code < 0 else code  # killed by signal N -> 128 + N


def launch(config: SurgeConfig, handed: dict[str, Any], target: str, target_args: list[str], *, module: bool = False) -> int:
    """Run ``target`` with ``target_args`` on the topology of ``config``; return the exit code.

    Raises:
        ConfigError: the script or module does not exist.
    """
    _check_target(target, module)
    workdir = tempfile.mkdtemp(prefix="surge-launch-")
    try:
        path = os.path.join(workdir, "config.yaml")
        write_config(handed, path)
        env = dict(os.environ)
        env[ENV_VAR] = path
        if config.gpu_ids not in (None, "all"):
            env["CUDA_VISIBLE_DEVICES"] = config.gpu_ids
        command = ["-m", target] if module else [target]
        if config.num_processes == 1:
            return _run_single(command + target_args, env)
        return _run_elastic(config, command + target_args, env)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _run_single(argv: list[str], env: dict[str, str]) -> int:
    """One process: the script runs directly, like `python script.py`."""
    proc = subprocess.Popen([sys.executable, *argv], env=env)
    try:
        return _exit_code(proc.wait())
    except KeyboardInterrupt:
        # The terminal sent SIGINT to the child too; give it a moment to stop cleanly.
        try:
            return _exit_code(proc.wait(timeout=10))
        except subprocess.TimeoutExpired:
            proc.kill()
            return 130


def _root_cause(exc: Any) -> tuple[int, Any, str]:
    """The failure that happened first, and its exception message ("" if none).

    Every rank that raised left an error file (launch/bootstrap.py). The agent orders
    failures by whole-second timestamps, so a rank that died and the peer that then
    failed in a collective with it tie; the files' modification times (nanoseconds)
    tell them apart.
    """

    def written(item: tuple[int, Any]) -> float:
        try:
            return os.stat(item[1].error_file).st_mtime_ns
        except (OSError, TypeError):
            return float("inf")

    rank, failure = min(exc.failures.items(), key=lambda item: (written(item), item[1].timestamp, item[0]))
    message = failure.message
    if isinstance(message, dict):
        message = message.get("message", "")
    if not isinstance(message, str) or written((rank, failure)) == float("inf"):
        message = ""
    return rank, failure, message.strip().splitlines()[0] if message.strip() else ""


def _run_elastic(config: SurgeConfig, argv: list[str], env: dict[str, str]) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from surge.testing.harness import free_port

    per_machine = config.processes_per_machine
    if config.num_machines == 1:
        # A single-machine job meets on loopback only: nothing listens on the network.
        addr, port = "127.0.0.1", config.main_process_port or free_port()
    else:
        addr, port = config.main_process_ip, config.main_process_port or 29500
    if "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // per_machine))
    launch_config = LaunchConfig(
        min_nodes=config.num_machines,
        max_nodes=config.num_machines,
        nproc_per_node=per_machine,
        run_id=f"surge-{uuid.uuid4().hex[:8]}" if config.num_machines == 1 else "surge",
        rdzv_backend="static",
        rdzv_endpoint=f"{addr}:{port}",
        rdzv_configs={"rank": config.machine_rank, "timeout": 900},
        max_restarts=config.max_restarts,
        monitor_interval=config.monitor_interval,
        start_method="spawn",
    )
    # The agent's own log lines (process starts, SIGTERMs, its failure table) repeat
    # what the failing worker already printed; surge prints one summary instead.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    saved_env = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)  # the agent passes its own environment to the workers
    try:
        elastic_launch(launch_config, entrypoint=sys.executable)(*["-u", "-m", "surge.launch.bootstrap", *argv])
        return 0
    except ChildFailedError as exc:
        rank, failure, message = _root_cause(exc)
        if message:
            # It raised: an uncaught exception exits with 1, even if the agent's SIGTERM
            # reached the process while it was still shutting down.
            code = failure.exitcode if failure.exitcode > 0 else 1
            what = f"failed: {message}"
        elif failure.exitcode < 0:
            code = _exit_code(failure.exitcode)
            what = f"was killed by signal {signal.Signals(-failure.exitcode).name}"
        else:
            code, what = failure.exitcode, f"exited with code {failure.exitcode}"
        print(f"surge launch: rank {rank} (local rank {failure.local_rank}) {what} (its output is above)",
              file=sys.stderr)
        return code
    except SignalException as exc:
        print(f"surge launch: stopped by {signal.Signals(exc.sigval).name}; every worker was terminated.",
              file=sys.stderr)
        return 128 + int(exc.sigval)
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
