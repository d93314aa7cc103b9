"""Starting the job: one process directly, several through torch's elastic agent.

[Note: the launcher hands over one file]
The resolved settings (config file + flags) are written to a temporary YAML file and
its path is put in ``SURGE_CONFIG_FILE`` for the workers; ``Accelerator()`` reads it
(config/file.py). Nothing else passes from the launcher to the library in the workers
but the standard torchrun variables (RANK, WORLD_SIZE, ...) and the variables torch and
OpenMP read themselves (``OMP_NUM_THREADS``, ``TORCH_DISTRIBUTED_DEBUG`` for ``debug``).
The worker entry point, launch/bootstrap.py, also gets its own, which the library never
reads: ``SURGE_LOG_DIR`` (the job's log directory, see [Note: a failure report shows the
user's code] in failure.py), ``SURGE_QUIET``, ``SURGE_CPU_AFFINITY``, ``SURGE_BIND_CORES``
(the deepspeed launcher's ``--bind_cores_to_rank``) and ``SURGE_LOCAL_RANK_ARG`` (pass
``--local_rank=<n>`` to the script, as the deepspeed launcher does).

[Note: the job's log directory]
A multi-process job has one directory for its logs: ``<log_dir>/surge-<id>/`` when
``log_dir`` is set, else ``<temp>/surge-logs-<id>/``. It holds each failed rank's full
traceback (``rank<N>.log``) and torch elastic's per-attempt files
(``attempt_<k>/<local rank>/``: the error files read for the failure summary, and the
``tee`` copies ``stdout.log``/``stderr.log``). A temporary one is removed when there is
nothing in it to read: after a successful job, or a failure that left no traceback; one
asked for (``log_dir``, or ``tee`` without it) is kept and named.
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
from surge.launch.affinity import AFFINITY_ENV, BIND_CORES_ENV, parse_cpulist
from surge.launch.failure import LOG_DIR_ENV, QUIET_ENV, log_file

SURGE_RENDEZVOUS = ("static", "c10d")  # rdzv_backend values surge's own rendezvous serves (launch/rendezvous.py)
# rdzv_conf keys surge's rendezvous understands: seconds for every machine to join (torch's
# static rendezvous calls it timeout, its c10d one join_timeout).
_SURGE_RDZV_KEYS = ("timeout", "join_timeout")
_RDZV_TIMEOUT = 900


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
    no_python: bool = False, local_rank_arg: bool = False, bind_cores: str | None = None,
) -> int:
    """Run ``target`` with ``target_args`` on the topology of ``config``; return the exit code.
    ``module``: ``target`` is a module (``python -m``); ``no_python``: a program run as it
    is (``torchrun --no-python``), which reads its rank from the environment.
    ``local_rank_arg``: each process's script gets ``--local_rank=<n>`` before its own
    arguments (the deepspeed launcher's way); ``bind_cores``: each process is pinned to its
    share of these cores ("" for all; the deepspeed launcher's ``--bind_cores_to_rank``).

    Raises:
        ConfigError: the script, module or program does not exist, or a launch setting
            (``tee``, ``rdzv_conf``, ``rdzv_backend``, ``log_dir``) cannot be used.
    """
    _check_target(target, module, no_python)
    # Every setting is checked before anything starts (tee "0", the default, needs no torch).
    if config.tee != "0":
        parse_tee(config.tee, config.processes_per_machine)
    rendezvous_conf(config)
    workdir = tempfile.mkdtemp(prefix="surge-launch-")
    try:
        path = os.path.join(workdir, HANDOFF_NAME)
        write_config(handed, path)
        env = worker_environment(config, dict(os.environ))
        env[ENV_VAR] = path
        command = ["-m", target] if module else [target]
        if config.num_processes == 1 and config.max_restarts == 0 and config.tee == "0":
            if local_rank_arg:
                target_args = ["--local_rank=0", *target_args]
            program = [sys.executable, *command] if not no_python else command
            if AFFINITY_ENV in env:  # pinned, then replaced by the script (launch/affinity.py)
                program = [sys.executable, "-m", "surge.launch.affinity", *program]
            return _run_single(program + target_args, env)
        from surge.launch.bootstrap import LOCAL_RANK_ARG_ENV

        if local_rank_arg:
            env[LOCAL_RANK_ARG_ENV] = "1"
        if bind_cores is not None:
            env[BIND_CORES_ENV] = bind_cores
            if config.num_cpu_threads_per_process is None:
                cores = parse_cpulist(bind_cores) if bind_cores else os.sched_getaffinity(0)
                env["OMP_NUM_THREADS"] = str(max(1, len(cores) // config.processes_per_machine))
        return _run_elastic(config, command + target_args, env, python=not no_python)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


PARALLELISM_ENV = "SURGE_PARALLELISM_FROM_LAUNCH"
"""Marks ``PARALLELISM_CONFIG_*`` variables set by surge's launcher (a nested launch drops them)."""


def worker_environment(config: SurgeConfig, env: dict[str, str]) -> dict[str, str]:
    """``env`` (the launcher's environment) with what ``config`` sets for the workers:
    visible GPUs, ``OMP_NUM_THREADS`` (``num_cpu_threads_per_process``), torch's collective
    checks (``debug``: ``TORCH_DISTRIBUTED_DEBUG=DETAIL`` unless set) and bootstrap.py's
    own variables (``quiet``, ``enable_cpu_affinity``; stale ones from an outer launch are
    dropped), and Accelerate's ``PARALLELISM_CONFIG_*_SIZE`` (when a size is above 1; those
    an outer surge launch set are dropped otherwise, a user's own are kept as Accelerate keeps
    them) and ``PARALLELISM_CONFIG_CP_COMM_STRATEGY`` variables, which ``ParallelismConfig``
    reads."""
    env = {k: v for k, v in env.items()
           if k not in (LOG_DIR_ENV, QUIET_ENV, AFFINITY_ENV, BIND_CORES_ENV, "SURGE_LOCAL_RANK_ARG")}
    if config.gpu_ids not in (None, "all"):
        env["CUDA_VISIBLE_DEVICES"] = config.gpu_ids
    if config.num_cpu_threads_per_process is not None:
        env["OMP_NUM_THREADS"] = str(config.num_cpu_threads_per_process)
    if config.debug:
        env.setdefault("TORCH_DISTRIBUTED_DEBUG", "DETAIL")
    if config.quiet:
        env[QUIET_ENV] = "1"
    sizes = {d: getattr(config, f"parallelism_config_{d}_size") for d in ("dp_replicate", "dp_shard", "tp", "cp", "sp")}
    if any(size > 1 for size in sizes.values()):  # read by a bare ParallelismConfig(), as Accelerate's launcher sets
        env.update({f"PARALLELISM_CONFIG_{d.upper()}_SIZE": str(size) for d, size in sizes.items()})
        env[PARALLELISM_ENV] = "1"
    elif env.pop(PARALLELISM_ENV, None):  # an outer surge launch set them (a launch from a worker): not this job's
        env = {k: v for k, v in env.items() if not k.startswith("PARALLELISM_CONFIG_")}
    if config.parallelism_config_cp_comm_strategy is not None:
        env["PARALLELISM_CONFIG_CP_COMM_STRATEGY"] = config.parallelism_config_cp_comm_strategy
    if config.enable_cpu_affinity and not config.use_cpu:
        env[AFFINITY_ENV] = "1"
    return env


def parse_tee(text: str, per_machine: int) -> Any:
    """``tee`` as torch's ``Std`` (all local ranks) or ``{local rank: Std}``.

    Raises:
        ConfigError: not 0-3 or ``local_rank:0-3,...``, or a local rank this machine does
            not run.
    """
    from torch.distributed.elastic.multiprocessing import Std

    try:
        tee = Std.from_str(text.replace(" ", ""))
    except ValueError:
        raise ConfigError(f"tee={text!r} must be 0 (none), 1 (stdout), 2 (stderr) or 3 (both), or per local rank "
                          "like 0:3,1:1") from None
    if isinstance(tee, dict) and max(tee) >= per_machine:
        raise ConfigError(f"tee={text!r} names local rank {max(tee)}, but each machine runs {per_machine} "
                          f"process{'es' if per_machine > 1 else ''} (local ranks 0 to {per_machine - 1})")
    return tee


def parse_rdzv_conf(text: str) -> dict[str, str]:
    """``rdzv_conf``: ``key=value,key=value`` as a mapping (values stay strings, as torchrun's).

    Raises:
        ConfigError: an item that is not ``key=value``.
    """
    conf: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not key or not value:
            raise ConfigError(f"rdzv_conf={text!r}: {item.strip()!r} is not key=value; write "
                              "key=value,key=value (e.g. timeout=1800)")
        conf[key] = value
    return conf


def rendezvous_conf(config: SurgeConfig) -> dict[str, Any]:
    """The rendezvous settings of ``config``'s job: ``rdzv_conf`` as it is for torch's etcd
    rendezvous; for surge's, the machine's rank and the seconds every machine has to join
    (``timeout``, 900 unless ``rdzv_conf`` sets it; ``join_timeout`` is the same).

    Raises:
        ConfigError: a bad ``rdzv_conf``, a key surge's rendezvous does not know, or etcd
            without its client package.
    """
    conf = parse_rdzv_conf(config.rdzv_conf)
    if config.rdzv_backend not in SURGE_RENDEZVOUS:
        if importlib.util.find_spec("etcd") is None:
            raise ConfigError(f"rdzv_backend={config.rdzv_backend!r} needs the python-etcd package (pip install "
                              "python-etcd) and an etcd server at main_process_ip:main_process_port; or use "
                              "rdzv_backend: static (surge's own rendezvous on machine 0)")
        return dict(conf)
    unknown = sorted(set(conf) - set(_SURGE_RDZV_KEYS))
    if unknown:
        raise ConfigError(f"rdzv_conf key(s) {', '.join(map(repr, unknown))} mean nothing to surge's rendezvous "
                          f"(rdzv_backend {config.rdzv_backend}); it understands timeout (seconds for every machine "
                          "to join; join_timeout is the same)")
    timeout = _RDZV_TIMEOUT
    for key in _SURGE_RDZV_KEYS:
        if key in conf:
            value = conf[key]
            if not value.isdigit() or int(value) == 0:
                raise ConfigError(f"rdzv_conf {key}={value!r} must be a whole number of seconds above 0")
            timeout = int(value)
    return {"rank": config.machine_rank, "timeout": timeout}


def rendezvous(config: SurgeConfig) -> tuple[str, str, dict[str, Any]]:
    """The rendezvous backend, endpoint and settings (:func:`rendezvous_conf`) of
    ``config``'s job.

    ``static`` and ``c10d``: surge's own (launch/rendezvous.py: a fixed-size job needs
    neither of torch's; see [Note: surge's rendezvous]) on machine 0's address or, for one
    machine, the loopback (port 0: a free one). ``etcd`` and ``etcd-v2``: torch's, at the
    etcd server ``main_process_ip:main_process_port`` (2379 unless set).

    Raises:
        ConfigError: as :func:`rendezvous_conf`.
    """
    conf = rendezvous_conf(config)
    if config.rdzv_backend not in SURGE_RENDEZVOUS:
        addr = config.main_process_ip or "127.0.0.1"
        return config.rdzv_backend, f"{addr}:{config.main_process_port or 2379}", conf
    from surge.launch.rendezvous import BACKEND

    if config.num_machines == 1:
        # A single-machine job meets on loopback only: nothing listens on the network
        # (port 0: the rendezvous binds a free port itself, no race with other jobs).
        return BACKEND, f"127.0.0.1:{config.main_process_port or 0}", conf
    return BACKEND, f"{config.main_process_ip}:{config.main_process_port or 29500}", conf


def _run_single(argv: list[str], env: dict[str, str]) -> int:
    """One process: the script runs directly, like `python script.py` (``argv`` is the
    whole command).

    SIGTERM and SIGHUP sent to the launcher (``timeout``, ``scancel``, ``kill``) are passed
    on to the script, so stopping the launcher stops the job. Ctrl-C reaches the script
    directly (the terminal signals the whole foreground group).
    """
    proc = subprocess.Popen(argv, env=env)

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
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from surge.launch.rendezvous import register

    per_machine = config.processes_per_machine
    backend, endpoint, rdzv_configs = rendezvous(config)
    if config.num_machines == 1:
        _loopback_transport(env)
    register()
    if "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // per_machine))
    job = uuid.uuid4().hex[:8]
    logs = _job_log_dir(config, job)
    env[LOG_DIR_ENV] = logs
    if python:
        entrypoint, args = sys.executable, ["-u", "-m", "surge.launch.bootstrap", *argv]
    elif AFFINITY_ENV in env:  # a program: pinned, then exec'd (launch/affinity.py)
        entrypoint, args = sys.executable, ["-m", "surge.launch.affinity", *argv]
    else:
        entrypoint, args = argv[0], argv[1:]
    launch_config = LaunchConfig(
        min_nodes=config.num_machines,
        max_nodes=config.num_machines,
        nproc_per_node=per_machine,
        # One machine: a run id of its own. Several: the same on every machine (the agents meet under it).
        run_id=f"surge-{job}" if config.num_machines == 1 else "surge",
        role=config.role,
        rdzv_backend=backend,
        rdzv_endpoint=endpoint,
        rdzv_configs=rdzv_configs,
        max_restarts=config.max_restarts,
        monitor_interval=config.monitor_interval,
        start_method="spawn",
        logs_specs=_job_logs_specs(logs, parse_tee(config.tee, per_machine)),
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
        elastic_launch(launch_config, entrypoint=entrypoint)(*args)
        _tee_note(config, logs)
        if config.log_dir is None and config.tee == "0" and _rank_logs(logs):
            print(f"surge launch: the tracebacks of the workers that failed before the restart are in {logs}",
                  file=sys.stderr)
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
        where = _where_to_read(logs, rank, raised=bool(message) and not message.startswith("SystemExit"))
        if any(p in message.lower() for p in PEER_LOST):  # ranked last, so every failure here was one
            where += ("; it lost a peer: the failure started on another machine, see its output"
                      if config.num_machines > 1 else "; it lost a peer: was another worker killed from outside?")
        _tee_note(config, logs)
        print(f"surge launch: rank {rank} (local rank {failure.local_rank}) {what} ({where})", file=sys.stderr)
        return code
    except (RendezvousError, DistNetworkError) as exc:
        detail = " ".join(str(exc).split())
        if backend not in SURGE_RENDEZVOUS:
            hint = f"is the etcd server running at {endpoint} (--main_process_ip / --main_process_port)?"
        elif config.num_machines == 1:
            hint = "is the port free? choose another with --main_process_port"
        else:
            hint = "check --main_process_ip / --main_process_port and that machine 0 is reachable and its port free"
        raise ConfigError(f"cannot start the job's rendezvous on {endpoint} ({detail[:200]}); {hint}") from None
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
        if config.log_dir is None and config.tee == "0" and not _rank_logs(logs):
            shutil.rmtree(logs, ignore_errors=True)  # a temporary one with nothing to read


def _job_log_dir(config: SurgeConfig, job: str) -> str:
    """The job's log directory (see [Note: the job's log directory]), created.

    Raises:
        ConfigError: ``log_dir`` cannot be created or written.
    """
    if config.log_dir is None:
        path = os.path.join(tempfile.gettempdir(), f"surge-logs-{job}")
    else:
        path = os.path.join(os.path.abspath(os.path.expanduser(config.log_dir)), f"surge-{job}")
    try:
        os.makedirs(path, 0o700 if config.log_dir is None else 0o777)
    except OSError as exc:
        raise ConfigError(f"cannot create the job's log directory {path} ({exc.strerror or exc}); "
                          + ("choose another --log_dir" if config.log_dir else "set --log_dir")) from None
    return path


def _job_logs_specs(logs: str, tee: Any) -> Any:
    """torch's log files (error files, ``tee`` copies) in ``logs`` itself: its default
    puts them in a directory of their own below (``<run id>_<random>``)."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs

    class JobLogs(DefaultLogsSpecs):
        def _make_log_dir(self, log_dir: str | None, rdzv_run_id: str) -> str:
            return logs

    return JobLogs(log_dir=logs, tee=tee)


def _rank_logs(logs: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir(logs) if n.startswith("rank") and n.endswith(".log"))
    except OSError:
        return []


def _where_to_read(logs: str, rank: int, *, raised: bool) -> str:
    """Where the failure summary sends the reader: the failed rank's log file when it
    raised, else its output above (and the log directory if other ranks wrote one)."""
    own = log_file(logs, str(rank))
    if raised and os.path.isfile(own):
        return f"full traceback in {own}"
    if _rank_logs(logs):
        return f"its output is above; the other ranks' tracebacks are in {logs}"
    return "its output is above"


def _tee_note(config: SurgeConfig, logs: str) -> None:
    """``tee`` without ``log_dir``: the copies are in the temporary job directory; say where."""
    if config.log_dir is None and config.tee != "0":
        print(f"surge launch: the workers' output (--tee {config.tee}) is also in {logs}", file=sys.stderr)


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
