"""Where this process sits in the job, read from the launcher's environment variables.

[Note: one reader of the environment]
This module and the launcher handoff in ``config/`` are the only places that read
``os.environ`` (``launch/`` and ``commands/`` may too, at the process edge). Everything
else receives a :class:`LaunchEnvironment` (or a ``Topology`` built from one), so tests
can build any job shape, ``world_size=8`` included, without processes and without
touching the real environment; the few other variables the library honours
(``SURGE_LOG_LEVEL``, ``MLFLOW_TRACKING_URI``, torch's NCCL debug settings) are read or
set by the small functions at the end of this module. Ruff's banned-api rule (TID251 in
``pyproject.toml``) keeps ``os.environ`` out of every other module.

Launchers understood, first match wins:

1. ``torchrun`` / torch elastic and any launcher that exports ``RANK`` and
   ``WORLD_SIZE`` (DeepSpeed's, ``surge launch``, hand-written spawners).
2. MPI: Open MPI (``OMPI_COMM_WORLD_*``), MPICH / Intel MPI (``PMI_RANK``,
   ``PMI_SIZE``, ``MPI_LOCALRANKID``), MVAPICH2 (``MV2_COMM_WORLD_*``).
   MPI comes before SLURM because ``mpirun`` inside a SLURM allocation leaves the
   allocation's SLURM variables in place while the MPI ones describe the job.
3. SLURM job steps started by ``srun`` (``SLURM_STEP_ID`` present). A plain
   ``python train.py`` inside an ``sbatch`` script is *not* an srun step even
   though ``SLURM_NTASKS`` may be > 1: it is one process.
4. Nothing: one process.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Source = Literal["none", "torchrun", "env", "mpi", "slurm", "existing"]

DEFAULT_MASTER_PORT = 29500


@dataclass(frozen=True)
class LaunchEnvironment:
    """The job shape as a launcher described it. A plain value: no process group, no torch."""

    source: Source = "none"
    """Which launcher convention the values came from."""
    rank: int = 0
    """Global rank of this process, 0 <= rank < world_size."""
    world_size: int = 1
    """Number of processes in the job."""
    local_rank: int = 0
    """Rank of this process among the processes on its machine."""
    local_world_size: int = 1
    """Number of processes on this machine."""
    node_rank: int = 0
    """Index of this machine, 0 <= node_rank < num_nodes."""
    num_nodes: int = 1
    """Number of machines in the job."""
    master_addr: str | None = None
    """Host of the rendezvous store (rank 0's machine); None for one process."""
    master_port: int | None = None
    """Port of the rendezvous store; None for one process."""
    local_world_size_known: bool = True
    """False when the launcher did not say how many processes share this machine and
    ``local_world_size`` (and the node numbers) are a single-machine guess."""


def _int(env: Mapping[str, str], name: str, *, minimum: int = 0) -> int:
    raw = env[name]
    try:
        value = int(raw.strip())
    except ValueError:
        raise ValueError(
            f"environment variable {name}={raw!r} is not an integer; the launcher must set it to a "
            f"whole number >= {minimum}. Unset it or fix the launch command."
        ) from None
    if value < minimum:
        raise ValueError(
            f"environment variable {name}={value} is out of range; expected an integer >= {minimum}. "
            "Fix the launch command that sets it."
        )
    return value


def _first(env: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        if name in env and env[name].strip() != "":
            return name
    return None


def _port(env: Mapping[str, str], default: int | None) -> int | None:
    if _first(env, "MASTER_PORT") is None:
        return default
    port = _int(env, "MASTER_PORT", minimum=1)
    if port > 65535:
        raise ValueError(f"environment variable MASTER_PORT={port} is out of range; expected 1 to 65535.")
    return port


def _check_ranks(names: tuple[str, str, str, str], rank: int, world: int, local_rank: int, local_world: int) -> None:
    rank_name, world_name, local_name, local_world_name = names
    if world < 1:
        raise ValueError(f"environment variable {world_name}={world} is out of range; expected an integer >= 1.")
    if rank >= world:
        raise ValueError(
            f"environment variables {rank_name}={rank} and {world_name}={world} are inconsistent: the rank "
            f"must be from 0 to {world - 1}. Check the launcher's settings (or unset both to run one process)."
        )
    if local_world > world:
        raise ValueError(
            f"environment variables {local_world_name}={local_world} and {world_name}={world} are inconsistent: "
            "a machine cannot hold more processes than the whole job."
        )
    if local_rank >= local_world:
        raise ValueError(
            f"environment variables {local_name}={local_rank} and {local_world_name}={local_world} are "
            f"inconsistent: the local rank must be from 0 to {local_world - 1}. Check the launcher's settings."
        )


def _from_rank_vars(env: Mapping[str, str]) -> LaunchEnvironment:
    missing = [n for n in ("RANK", "WORLD_SIZE") if _first(env, n) is None]
    if missing:
        present = "RANK" if "WORLD_SIZE" in missing else "WORLD_SIZE"
        raise ValueError(
            f"environment variable {present} is set but {missing[0]} is not; a distributed launch needs both. "
            "Set both (torchrun does) or unset both to run one process."
        )
    rank = _int(env, "RANK")
    world = _int(env, "WORLD_SIZE", minimum=1)
    local_rank = _int(env, "LOCAL_RANK") if _first(env, "LOCAL_RANK") else rank
    # The local size: torchrun says it; other launchers leave it to be inferred from a
    # node count, or from the scheduler's own variables when RANK was exported by hand
    # (e.g. `export RANK=$SLURM_PROCID` in an sbatch script).
    known = True
    local_name = _first(env, "LOCAL_WORLD_SIZE", "LOCAL_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS")
    nodes_name = _first(env, "GROUP_WORLD_SIZE", "NNODES", "SLURM_NNODES", "SLURM_JOB_NUM_NODES")
    if local_name:
        local_world = _int(env, local_name, minimum=1)
    elif nodes_name:
        local_world = max(1, -(-world // _int(env, nodes_name, minimum=1)))
    else:
        local_world, known = world, False
    if known:
        names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", local_name or "LOCAL_WORLD_SIZE")
        _check_ranks(names, rank, world, local_rank, local_world)
    else:
        _check_ranks(("RANK", "WORLD_SIZE", "LOCAL_RANK", "WORLD_SIZE"), rank, world, local_rank, world)
    num_nodes = _int(env, nodes_name, minimum=1) if nodes_name else -(-world // local_world)
    node_rank = _int(env, "GROUP_RANK") if _first(env, "GROUP_RANK") else rank // local_world
    if node_rank >= num_nodes:
        raise ValueError(
            f"environment variable GROUP_RANK={node_rank} is out of range for {num_nodes} machine(s); "
            "check the launcher's --node_rank / --nnodes."
        )
    source: Source = "torchrun" if _first(env, "TORCHELASTIC_RUN_ID") else "env"
    addr = env.get("MASTER_ADDR", "").strip() or None
    port = _port(env, None)
    if world > 1 and (addr is None or port is None):
        absent = " and ".join(n for n, v in (("MASTER_ADDR", addr), ("MASTER_PORT", port)) if v is None)
        raise ValueError(
            f"RANK/WORLD_SIZE describe a {world}-process job but {absent} is not set, so the processes "
            "cannot find each other. Export MASTER_ADDR (rank 0's host) and MASTER_PORT, or launch with "
            "torchrun / surge launch, which set them."
        )
    return LaunchEnvironment(source, rank, world, local_rank, local_world, node_rank, num_nodes, addr, port, known)


_MPI_FLAVOURS = (
    # (rank, size, local rank, local size)
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"),
    ("MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_SIZE"),
    ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"),
)


def _from_mpi(env: Mapping[str, str], names: tuple[str, str, str, str], default_port: int) -> LaunchEnvironment:
    rank_n, size_n, lrank_n, lsize_n = names
    rank = _int(env, rank_n)
    world = _int(env, size_n, minimum=1)
    local_rank = _int(env, lrank_n) if _first(env, lrank_n) else rank
    local_world = _int(env, lsize_n, minimum=1) if _first(env, lsize_n) else world
    _check_ranks(names, rank, world, local_rank, local_world)
    num_nodes = -(-world // local_world)
    # MPI does not export a node index; with the default block mapping (ranks filled
    # node by node) it is rank // local size.
    node_rank = min(rank // local_world, num_nodes - 1)
    addr = env.get("MASTER_ADDR", "").strip() or None
    if addr is None and world > 1:
        if num_nodes > 1:
            raise ValueError(
                f"MPI started {world} processes on {num_nodes} machines but MASTER_ADDR is not set; the "
                "processes need rank 0's host to meet. Pass it with `mpirun -x MASTER_ADDR=<rank-0 host>`."
            )
        addr = "127.0.0.1"
    port = _port(env, default_port if world > 1 else None)
    return LaunchEnvironment("mpi", rank, world, local_rank, local_world, node_rank, num_nodes, addr, port)


def first_host(nodelist: str) -> str:
    """First host of a SLURM compressed host list: ``"gpu[07-09,12],cpu1"`` -> ``"gpu07"``.

    Raises:
        ValueError: the list is empty or its brackets do not balance.
    """
    text = nodelist.strip()
    depth = 0
    end = len(text)
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "," and depth == 0:
            end = i
            break
        if depth < 0:
            break
    head = text[:end]
    if not head or head.count("[") != head.count("]"):
        raise ValueError(f"SLURM node list {nodelist!r} cannot be read; expected a form like 'node[01-04],gpu7'.")
    # Each bracket group stands for its first entry; zero padding is kept as written.
    return re.sub(r"\[([^\]]*)\]", lambda m: m.group(1).split(",")[0].split("-")[0], head)


def _tasks_on_node(spec: str, node_index: int) -> int | None:
    """Read SLURM_*TASKS_PER_NODE (``"2(x3),1"``) and return the count on ``node_index``."""
    counts: list[int] = []
    for part in spec.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if m is None:
            return None
        counts.extend([int(m.group(1))] * int(m.group(2) or 1))
    return counts[node_index] if node_index < len(counts) else None


def _from_slurm(env: Mapping[str, str]) -> LaunchEnvironment:
    size_name = _first(env, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS")
    world = _int(env, size_name, minimum=1) if size_name else 1
    rank = _int(env, "SLURM_PROCID")
    local_rank = _int(env, "SLURM_LOCALID") if _first(env, "SLURM_LOCALID") else 0
    nodes_name = _first(env, "SLURM_STEP_NUM_NODES", "SLURM_NNODES", "SLURM_JOB_NUM_NODES")
    num_nodes = _int(env, nodes_name, minimum=1) if nodes_name else 1
    node_rank = _int(env, "SLURM_NODEID") if _first(env, "SLURM_NODEID") else 0
    per_node_name = _first(env, "SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE")
    local_world = _tasks_on_node(env[per_node_name], node_rank) if per_node_name else None
    if local_world is None:
        local_world = max(1, -(-world // num_nodes))
    _check_ranks(
        (
            "SLURM_PROCID",
            size_name or "SLURM_NTASKS",
            "SLURM_LOCALID",
            per_node_name or "SLURM_TASKS_PER_NODE",
        ),
        rank,
        world,
        local_rank,
        local_world,
    )
    if node_rank >= num_nodes:
        raise ValueError(f"SLURM_NODEID={node_rank} is out of range for {num_nodes} node(s).")
    addr = env.get("MASTER_ADDR", "").strip() or None
    port: int | None = None
    if world > 1:
        if addr is None:
            list_name = _first(env, "SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
            addr = first_host(env[list_name]) if list_name else "127.0.0.1"
        # Every task of the job derives the same port from the job id; MASTER_PORT wins.
        job = _int(env, "SLURM_JOB_ID") if _first(env, "SLURM_JOB_ID") else 0
        port = _port(env, 20000 + job % 20000)
    return LaunchEnvironment("slurm", rank, world, local_rank, local_world, node_rank, num_nodes, addr, port)


def parse_launch_environment(env: Mapping[str, str], *, mpi_port: int = DEFAULT_MASTER_PORT) -> LaunchEnvironment:
    """Turn launcher variables into a :class:`LaunchEnvironment` (pure; see module doc).

    ``mpi_port`` is the rendezvous port of an MPI launch that exports no ``MASTER_PORT``
    (DeepSpeed's ``init_distributed(distributed_port=)``).

    Raises:
        ValueError: a variable is not an integer, or the variables contradict each other
            (``RANK >= WORLD_SIZE``, ``LOCAL_RANK >= LOCAL_WORLD_SIZE``, missing rendezvous
            address for a multi-process job, ...). The message names the variables.
    """
    if _first(env, "RANK", "WORLD_SIZE"):
        return _from_rank_vars(env)
    for names in _MPI_FLAVOURS:
        if _first(env, names[0]) and _first(env, names[1]):
            return _from_mpi(env, names, mpi_port)
    if _first(env, "SLURM_PROCID") and _first(env, "SLURM_STEP_ID", "SLURM_STEPID"):
        return _from_slurm(env)
    return LaunchEnvironment()


def current_launch_environment(*, mpi_port: int = DEFAULT_MASTER_PORT) -> LaunchEnvironment:
    """:func:`parse_launch_environment` applied to this process's environment."""
    return parse_launch_environment(os.environ, mpi_port=mpi_port)



def rank_variable() -> int:
    """``RANK`` when it is a whole number, else 0: the rank for callers that must work even
    when :func:`current_launch_environment` rejects the environment (logging)."""
    rank = os.environ.get("RANK", "0")
    return int(rank) if rank.isdigit() else 0


def log_level_variable() -> str | None:
    """``SURGE_LOG_LEVEL``: the level ``surge.logging.get_logger`` uses when none is given."""
    return os.environ.get("SURGE_LOG_LEVEL")


MLFLOW_OVERRIDES = ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "MLFLOW_TAGS", "MLFLOW_NESTED_RUN")
"""The variables that win over the MLflow tracker's arguments, as in Accelerate."""


def mlflow_overrides() -> dict[str, str]:
    """Those of :data:`MLFLOW_OVERRIDES` that are set (the MLflow tracker applies them)."""
    return {name: os.environ[name] for name in MLFLOW_OVERRIDES if name in os.environ}


NCCL_DEBUG_DEFAULTS = {
    "TORCH_NCCL_DESYNC_DEBUG": "1",
    "TORCH_NCCL_TRACE_BUFFER_SIZE": "2000",
    "TORCH_NCCL_DUMP_ON_TIMEOUT": "1",
}
"""torch's desync report and flight recorder dump on a collective timeout (see ``surge.hang``)."""


def set_nccl_debug_defaults() -> None:
    """Set :data:`NCCL_DEBUG_DEFAULTS` in this process's environment, keeping any value the user set."""
    for name, value in NCCL_DEBUG_DEFAULTS.items():
        os.environ.setdefault(name, value)


# -- DeepSpeed's variables (the adapter in surge/deepspeed/ reads them through these) ---------


def ds_accelerator_variable() -> str | None:
    """``DS_ACCELERATOR``: DeepSpeed's override of the detected accelerator ("cuda", "cpu", "mps")."""
    return os.environ.get("DS_ACCELERATOR") or None


def deepspeed_timeout_minutes() -> float:
    """``DEEPSPEED_TIMEOUT``: the minutes DeepSpeed's ``init_distributed`` waits on a collective
    by default (30 when unset).

    Raises:
        ValueError: the variable is not a number.
    """
    raw = os.environ.get("DEEPSPEED_TIMEOUT", "").strip()
    if not raw:
        return 30.0
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"environment variable DEEPSPEED_TIMEOUT={raw!r} is not a number of minutes; unset it or "
                         "give minutes, e.g. DEEPSPEED_TIMEOUT=30.") from None


def allow_deprecated_fp16_variable() -> bool:
    """``DS_ALLOW_DEPRECATED_FP16=1``: count fp16 as supported on compute capability 6.x GPUs, as DeepSpeed does."""
    return os.environ.get("DS_ALLOW_DEPRECATED_FP16", "0") == "1"
