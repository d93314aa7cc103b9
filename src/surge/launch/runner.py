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

from surge.config.file import ENV_VAR, HANDOFF_NAME, ConfigError, SurgeConfig, write_config
from surge.hang import PEER_LOST


def _check_target(target: str, module: bool, no_python: bool = False) -> None:
    if no_python:
        if shutil.which(target) is None:
            raise ConfigError(f"program {target!r} cannot be found or is not executable (--no_python runs it "
                              "directly); give a path or a command on PATH")
        return
    if module:
        # Only the top-level package is looked up: finding a submodule would import (run)
        # the user's package in the launcher. `python -m` searches the current directory
        # first, and so does this check.
        top = target.split(".", maxsplit=1)[0]
        sys.path.insert(0, os.getcwd())
        try:
            found = bool(top) and importlib.util.find_spec(top) is not None
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


def launch(
    config: SurgeConfig, handed: dict[str, Any], target: str, target_args: list[str], *, module: bool = False,
    no_python: bool = False,
) -> int:
    """Run ``target`` with ``target_args`` on the topology of ``config``; return the exit code.
    ``module``: ``target`` is a module (``python -m``); ``no_python``: a program run as it
    is (``torchrun --no-python``), which reads its rank from the environment.

    Raises:
        ConfigError: the script, module or program does not exist.
    """
    _check_target(target, module, no_python)
    workdir = tempfile.mkdtemp(prefix="surge-launch-")
    try:
        path = os.path.join(workdir, HANDOFF_NAME)
        write_config(handed, path)
        env = dict(os.environ)
        env[ENV_VAR] = path
        if config.gpu_ids not in (None, "all"):
            env["CUDA_VISIBLE_DEVICES"] = config.gpu_ids
        command = ["-m", target] if module else [target]
        if config.num_processes == 1 and config.max_restarts == 0:
            return _run_single(command + target_args, env, python=not no_python)
        return _run_elastic(config, command + target_args, env, python=not no_python)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _run_single(argv: list[str], env: dict[str, str], *, python: bool = True) -> int:
    """One process: the script runs directly, like `python script.py`.

    SIGTERM and SIGHUP sent to the launcher (``timeout``, ``scancel``, ``kill``) are passed
    on to the script, so stopping the launcher stops the job. Ctrl-C reaches the script
    directly (the terminal signals the whole foreground group).
    """
    proc = subprocess.Popen([sys.executable, *argv] if python else argv, env=env)

    def forward(signum: int, _frame: Any) -> None:
        proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return _exit_code(proc.wait())
    except KeyboardInterrupt:
        try:
            return _exit_code(proc.wait(timeout=10))
        except subprocess.TimeoutExpired:
            proc.kill()
            return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)




def _root_cause(exc: Any) -> tuple[int, Any, str]:
    """The failure that caused the others, and its exception message ("" if none).

    Ranks that raised or exited with an error left an error file (launch/bootstrap.py);
    its modification time (nanoseconds) orders them, where the agent's own timestamps
    only have whole seconds. Ranked last: processes the agent itself terminated
    (SIGTERM, no error file), then ranks whose error only says a peer vanished from a
    collective - those are consequences, not causes.
    """

    def message_of(failure: Any) -> str:
        message = failure.message
        if isinstance(message, dict):
            message = message.get("message", "")
        return message if isinstance(message, str) else ""

    def written(failure: Any) -> float:
        try:
            return os.stat(failure.error_file).st_mtime_ns
        except (OSError, TypeError):
            return float("inf")

    def key(item: tuple[int, Any]) -> tuple[Any, ...]:
        rank, failure = item
        has_file = written(failure) != float("inf")
        terminated = not has_file and failure.exitcode == -signal.SIGTERM
        consequence = has_file and any(p in message_of(failure).lower() for p in PEER_LOST)
        return (terminated, consequence, written(failure), failure.timestamp, rank)

    rank, failure = min(exc.failures.items(), key=key)
    message = message_of(failure) if written(failure) != float("inf") else ""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return rank, failure, lines[0] if lines else ""


def _run_elastic(config: SurgeConfig, argv: list[str], env: dict[str, str], *, python: bool = True) -> int:
    from torch.distributed import DistNetworkError
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from surge.launch.rendezvous import BACKEND, register

    per_machine = config.processes_per_machine
    addr: str | None  # set for several machines (the config checks it)
    if config.num_machines == 1:
        # A single-machine job meets on loopback only: nothing listens on the network
        # (port 0: the rendezvous binds a free port itself, no race with other jobs).
        addr, port = "127.0.0.1", config.main_process_port or 0
        _loopback_transport(env)
    else:
        addr, port = config.main_process_ip, config.main_process_port or 29500
    register()
    if "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // per_machine))
    # The agent's per-run directory (the workers' error files, read for the failure
    # summary below) lives under one surge owns and removes: torch leaves its own
    # torchelastic_* directories behind in the temporary directory.
    agent_dir = tempfile.mkdtemp(prefix="surge-launch-")
    launch_config = LaunchConfig(
        min_nodes=config.num_machines,
        max_nodes=config.num_machines,
        nproc_per_node=per_machine,
        run_id=f"surge-{uuid.uuid4().hex[:8]}" if config.num_machines == 1 else "surge",
        rdzv_backend=BACKEND,  # launch/rendezvous.py: bound to one address, a fresh store per restart
        rdzv_endpoint=f"{addr}:{port}",
        rdzv_configs={"rank": config.machine_rank, "timeout": 900},
        max_restarts=config.max_restarts,
        monitor_interval=config.monitor_interval,
        start_method="spawn",
        logs_specs=DefaultLogsSpecs(log_dir=agent_dir),
    )
    # The agent's own log lines (process starts, SIGTERMs, its failure table) repeat
    # what the failing worker already printed; surge prints one summary instead.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    restarts = _RestartNotice(config.num_processes)
    agent_log = logging.getLogger("torch.distributed.elastic.agent.server.api")
    agent_log.addHandler(restarts)
    agent_level, agent_propagate = agent_log.level, agent_log.propagate
    agent_log.setLevel(logging.INFO)
    agent_log.propagate = False
    saved_env = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)  # the agent passes its own environment to the workers
    try:
        if python:
            elastic_launch(launch_config, entrypoint=sys.executable)(*["-u", "-m", "surge.launch.bootstrap", *argv])
        else:
            elastic_launch(launch_config, entrypoint=argv[0])(*argv[1:])
        return 0
    except ChildFailedError as exc:
        rank, failure, message = _root_cause(exc)
        if message.startswith("SystemExit"):
            # The code the script asked for (the agent's SIGTERM may have reached the
            # process while it was already exiting).
            asked = message.partition(":")[2].strip()
            code = int(asked) % 256 if asked.lstrip("-").isdigit() else 1
            what = f"exited with code {code}"
        elif message:
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
    except (RendezvousError, DistNetworkError) as exc:
        detail = " ".join(str(exc).split())
        hint = ("is the port free? choose another with --main_process_port" if config.num_machines == 1
                else "check --main_process_ip / --main_process_port and that machine 0 is reachable and its port free")
        raise ConfigError(f"cannot start the job's rendezvous on {addr}:{port} ({detail[:200]}); {hint}") from None
    except SignalException as exc:
        print(f"surge launch: stopped by {signal.Signals(exc.sigval).name}; every worker was terminated.",
              file=sys.stderr)
        return 128 + int(exc.sigval)
    finally:
        agent_log.removeHandler(restarts)
        agent_log.setLevel(agent_level)
        agent_log.propagate = agent_propagate
        os.environ.clear()
        os.environ.update(saved_env)
        shutil.rmtree(agent_dir, ignore_errors=True)


def _loopback_transport(env: dict[str, str]) -> None:
    """Point gloo's and NCCL's own sockets at the loopback interface (unless the user
    chose one), so a single-machine job's peers listen on loopback only, as its
    rendezvous does."""
    import psutil

    loopback = next((name for name, addrs in psutil.net_if_addrs().items()
                     if any(a.address == "127.0.0.1" for a in addrs)), None)
    if loopback is not None:
        env.setdefault("GLOO_SOCKET_IFNAME", loopback)
        env.setdefault("NCCL_SOCKET_IFNAME", loopback)


class _RestartNotice(logging.Handler):
    """Turns the agent's "will restart worker group" record into one surge line (the
    agent's other records stay silent; the failed worker printed its own output)."""

    def __init__(self, workers: int) -> None:
        super().__init__(logging.INFO)
        self.workers = workers
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "will restart worker group" not in str(record.msg) or "attempts left" not in str(record.msg):
            return
        self.count += 1
        args = record.args if isinstance(record.args, tuple) else ()
        try:
            left, total = int(str(args[2])), int(str(args[3]))  # role, state, left, max
            which = f"restart {total - left + 1} of {total}"
        except (TypeError, ValueError, IndexError):
            which = f"restart {self.count}"
        print(f"surge launch: a worker failed (its output is above); restarting all {self.workers} workers "
              f"({which}); a script that calls accelerator.load_state(missing_ok=True) resumes from its newest "
              "checkpoint", file=sys.stderr, flush=True)
