"""DeepSpeed's communication module, ``deepspeed.comm``, as ``surge.comm``, and
``deepspeed.init_distributed`` as ``surge.init_distributed``.

Every function keeps DeepSpeed's signature (deepspeed/comm/comm.py: the profiling
arguments ``prof``, ``log_name`` and ``debug`` are accepted and ignored) and calls the
torch.distributed function of the same job; surge adds no collective of its own.

Two conveniences DeepSpeed gets from always having a process group (its ``initialize``
starts one even for a single process, surge's Accelerator does not need one):

- the rank queries (``get_rank``, ``get_world_size``, ``get_local_rank``) answer from the
  launcher's environment while no group runs;
- a collective called while no group runs starts the group first (:func:`init_distributed`
  with its defaults), so ``deepspeed.comm.all_reduce`` after ``surge.initialize`` in one
  process works as under DeepSpeed.

``ReduceOp`` is DeepSpeed's enum; torch's ``torch.distributed.ReduceOp`` values are
accepted too. What DeepSpeed's comm module logs and profiles (``configure``,
``log_summary``) is not offered: those calls do nothing.

Example:
    >>> import surge.comm as dist
    >>> dist.init_distributed()                     # from torchrun / surge launch / MPI / SLURM variables
    >>> dist.all_reduce(loss, op=dist.ReduceOp.AVG)  # AVG needs nccl, as in torch
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "CCL_BACKEND",
    "GLOO_BACKEND",
    "HCCL_BACKEND",
    "MPI_BACKEND",
    "NCCL_BACKEND",
    "SCCL_BACKEND",
    "TORCH_DISTRIBUTED_DEFAULT_PORT",
    "ReduceOp",
    "all_gather",
    "all_gather_coalesced",
    "all_gather_into_tensor",
    "all_reduce",
    "all_reduce_coalesced",
    "all_to_all",
    "all_to_all_single",
    "allgather_fn",
    "barrier",
    "broadcast",
    "broadcast_object_list",
    "configure",
    "destroy_process_group",
    "gather",
    "get_all_ranks_from_group",
    "get_global_rank",
    "get_local_rank",
    "get_local_rank_from_launcher",
    "get_rank",
    "get_world_group",
    "get_world_rank_from_launcher",
    "get_world_size",
    "get_world_size_from_launcher",
    "has_all_gather_into_tensor",
    "has_all_reduce_coalesced",
    "has_coalescing_manager",
    "has_reduce_scatter_tensor",
    "inference_all_reduce",
    "init_distributed",
    "initialize_mesh_device",
    "irecv",
    "is_available",
    "is_initialized",
    "isend",
    "log_summary",
    "monitored_barrier",
    "new_group",
    "recv",
    "reduce",
    "reduce_scatter",
    "reduce_scatter_fn",
    "reduce_scatter_tensor",
    "scatter",
    "send",
]

TORCH_DISTRIBUTED_DEFAULT_PORT = 29500
NCCL_BACKEND = "nccl"
CCL_BACKEND = "ccl"
MPI_BACKEND = "mpi"
GLOO_BACKEND = "gloo"
SCCL_BACKEND = "sccl"
HCCL_BACKEND = "hccl"


class ReduceOp(enum.Enum):
    """DeepSpeed's reduction operators (translated to ``torch.distributed.ReduceOp``)."""

    SUM = 0
    PRODUCT = 1
    MIN = 2
    MAX = 3
    BAND = 4
    BOR = 5
    BXOR = 6
    AVG = 7
    UNUSED = 8


def _op(op: Any) -> Any:
    if isinstance(op, ReduceOp):
        if op is ReduceOp.UNUSED:
            raise ValueError("ReduceOp.UNUSED is not a reduction; use SUM, PRODUCT, MIN, MAX, BAND, BOR, BXOR or AVG.")
        return getattr(dist.ReduceOp, op.name)
    return op


def _started() -> None:
    """Start the process group from the launcher's environment when none runs (module doc)."""
    if not dist.is_initialized():
        init_distributed(verbose=False)


class _Works:
    """The handles of several asynchronous collectives, waited for together."""

    def __init__(self, works: Sequence[Any]) -> None:
        self.works = list(works)

    def wait(self) -> bool:
        for work in self.works:
            work.wait()
        return True

    def is_completed(self) -> bool:
        return all(work.is_completed() for work in self.works)


# -- starting and stopping ----------------------------------------------------------------------


def init_distributed(dist_backend: str | None = None, auto_mpi_discovery: bool = True,
                     distributed_port: int = TORCH_DISTRIBUTED_DEFAULT_PORT, verbose: bool = True,
                     timeout: timedelta | None = None, init_method: str | None = None,
                     dist_init_required: bool | None = None, config: Any = None, rank: int = -1,
                     world_size: int = -1) -> None:
    """Start torch.distributed's default process group from the launcher's environment
    (DeepSpeed's ``deepspeed.init_distributed``); nothing happens when a group is running.

    The job is read as surge reads it everywhere (``surge.config.environment``):
    torchrun / ``surge launch`` / DeepSpeed's launcher variables, then MPI (Open MPI,
    MPICH, MVAPICH: no mpi4py needed), then SLURM ``srun`` steps. One process gets a
    group of one (DeepSpeed starts one too, so ``torch.distributed.get_rank()`` works);
    it meets through an in-memory store, no port.

    Args:
        dist_backend: "nccl", "gloo" or "mpi"; None: "nccl" on CUDA, "gloo" on the CPU.
        auto_mpi_discovery: Accepted; surge always reads MPI's variables when the
            torchrun ones are absent.
        distributed_port: The rendezvous port of an MPI job that exports no ``MASTER_PORT``.
        verbose: Log the start on rank 0.
        timeout: How long a collective may wait. None: the config's
            ``collective_timeout`` when set, else DeepSpeed's default, ``DEEPSPEED_TIMEOUT``
            minutes (30 when unset).
        init_method: torch's ``init_method`` URL (e.g. "tcp://host:port"); None: env:// under
            torchrun, the launcher's address otherwise.
        dist_init_required: False: only check that a group runs (DeepSpeed's meaning).
        config: DeepSpeed's comms-logging settings; accepted, not used.
        rank: This process's rank, with ``world_size``, for an ``init_method`` that needs
            them; -1: from the environment.
        world_size: The number of processes, with ``rank``.

    Raises:
        RuntimeError: ``dist_init_required=False`` and no group runs.
        ValueError: only one of ``rank`` / ``world_size`` given, an unknown backend, nccl
            without a GPU, or inconsistent launcher variables (named).

    Example:
        >>> import surge as deepspeed
        >>> deepspeed.init_distributed(dist_backend="gloo")
    """
    from surge.config.environment import current_launch_environment
    from surge.logging import get_logger
    from surge.process_group import ensure_process_group, start_single_process_group
    from surge.topology import Topology

    if dist.is_available() and dist.is_initialized():
        return
    if dist_init_required is False:
        raise RuntimeError(
            "init_distributed(dist_init_required=False) found no process group running. Start one first "
            "(surge.init_distributed(), an Accelerator or surge.initialize), or leave dist_init_required unset.")
    if (rank >= 0) != (world_size > 0):
        raise ValueError(f"init_distributed(rank={rank}, world_size={world_size}): give both (rank >= 0 and "
                         "world_size >= 1) to set the job by hand, or neither to read it from the launcher.")
    settled = _timeout(timeout)
    launch = current_launch_environment(mpi_port=distributed_port)
    if world_size > 0:
        launch = _by_hand(launch, rank, world_size)
    topology = Topology.detect(backend=dist_backend, launch=launch)
    backend = topology.backend or dist_backend or ("nccl" if topology.device.startswith("cuda") else "gloo")
    if verbose:
        get_logger(__name__).info("Initializing torch.distributed with backend %s (%d process(es), timeout %s)",
                                  backend, topology.world_size, settled)
    if topology.is_distributed:
        ensure_process_group(topology, timeout=settled, asked=timeout is not None, init_method=init_method)
    else:
        start_single_process_group(backend, topology.device, timeout=settled)


def _timeout(timeout: timedelta | None) -> timedelta:
    from surge.config.environment import deepspeed_timeout_minutes
    from surge.config.file import active_values

    if timeout is not None:
        if not isinstance(timeout, timedelta):
            raise TypeError(f"timeout={timeout!r} must be a datetime.timedelta (or None for the default).")
        return timeout
    seconds = active_values()[0].get("collective_timeout")
    return timedelta(seconds=seconds) if seconds is not None else timedelta(minutes=deepspeed_timeout_minutes())


def _by_hand(launch: Any, rank: int, world_size: int) -> Any:
    """The launcher's description with the rank and size given to ``init_distributed``."""
    from dataclasses import replace

    if launch.world_size == world_size and launch.rank == rank:
        return launch
    return replace(launch, source="env", rank=rank, world_size=world_size, local_rank=rank,
                   local_world_size=world_size, node_rank=0, num_nodes=1, local_world_size_known=False)


def is_initialized() -> bool:
    return bool(dist.is_available() and dist.is_initialized())


def is_available() -> bool:
    return True


def destroy_process_group(group: Any = None) -> None:
    """Tear down ``group``, or the default group (and surge's bookkeeping of it) for None."""
    if group is None:
        from surge.process_group import destroy_process_group as destroy_default

        destroy_default()
    else:
        dist.destroy_process_group(group)


def new_group(ranks: Sequence[int]) -> Any:
    _started()
    return dist.new_group(list(ranks))


def configure(deepspeed_config: Any = None, enabled: Any = None, prof_all: Any = None, prof_ops: Any = None,
              verbose: Any = None, debug: Any = None) -> None:
    """DeepSpeed's comms logger settings: accepted; surge does not profile collectives."""


def log_summary(show_straggler: bool = False) -> None:
    """DeepSpeed's comms-logger summary: nothing to print (surge does not profile collectives)."""


def initialize_mesh_device(mesh_shape: Sequence[int], mesh_dim_names: Sequence[str]) -> Any:
    """A ``DeviceMesh`` of ``mesh_shape`` over every process, on this process's device type."""
    from torch.distributed.device_mesh import init_device_mesh

    from surge.deepspeed.device_abstraction import get_accelerator

    _started()
    return init_device_mesh(get_accelerator().device_name(), tuple(mesh_shape), mesh_dim_names=tuple(mesh_dim_names))


# -- who is who ---------------------------------------------------------------------------------


def _launched() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the launcher, or from a group started without one."""
    from surge.config.environment import current_launch_environment

    launch = current_launch_environment()
    if launch.world_size == 1 and is_initialized() and dist.get_world_size() > 1:
        return dist.get_rank(), dist.get_world_size(), dist.get_rank()
    return launch.rank, launch.world_size, launch.local_rank


def get_rank(group: Any = None) -> int:
    """This process's rank in ``group`` (default: the job); -1 outside ``group``."""
    if group is None and not is_initialized():
        return _launched()[0]
    return dist.get_rank(group)


def get_world_size(group: Any = None) -> int:
    """The number of processes in ``group`` (default: the job)."""
    if group is None and not is_initialized():
        return _launched()[1]
    return dist.get_world_size(group)


def get_local_rank() -> int:
    """This process's rank on its machine (the GPU it uses), from the launcher."""
    return _launched()[2]


def get_local_rank_from_launcher() -> int:
    return _launched()[2]


def get_world_rank_from_launcher() -> int:
    return _launched()[0]


def get_world_size_from_launcher() -> int:
    return _launched()[1]


def get_world_group() -> Any:
    _started()
    return dist.group.WORLD


def get_global_rank(group: Any = None, group_rank: int = 0) -> int:
    """The job rank of ``group``'s rank ``group_rank`` (the default group: itself)."""
    _started()
    chosen: Any = dist.group.WORLD if group is None else group
    return dist.get_global_rank(chosen, group_rank)


def get_all_ranks_from_group(group: Any = None) -> list[int]:
    """The job ranks of ``group``'s members, in group order."""
    _started()
    return list(dist.get_process_group_ranks(dist.group.WORLD if group is None else group))


# -- collectives (torch.distributed's, with DeepSpeed's signatures) ----------------------------


def broadcast(tensor: torch.Tensor, src: int, group: Any = None, async_op: bool = False, prof: bool = False,
              log_name: str = "broadcast", debug: Any = None) -> Any:
    _started()
    return dist.broadcast(tensor=tensor, src=src, group=group, async_op=async_op)


def broadcast_object_list(object_list: list[Any], src: int, group: Any = None, device: Any = None) -> Any:
    _started()
    return dist.broadcast_object_list(object_list, src=src, group=group, device=device)


def all_gather(tensor_list: list[torch.Tensor], tensor: torch.Tensor, group: Any = None, async_op: bool = False,
               prof: bool = False, log_name: str = "all_gather", debug: Any = None) -> Any:
    _started()
    return dist.all_gather(tensor_list, tensor, group=group, async_op=async_op)


def all_gather_into_tensor(output_tensor: torch.Tensor, tensor: torch.Tensor, group: Any = None,
                           async_op: bool = False, prof: bool = False, log_name: str = "all_gather_into_tensor",
                           debug: Any = None) -> Any:
    _started()
    return dist.all_gather_into_tensor(output_tensor, tensor, group=group, async_op=async_op)


def allgather_fn(output_tensor: torch.Tensor, input_tensor: torch.Tensor, group: Any = None, async_op: bool = False,
                 debug: Any = None) -> Any:
    return all_gather_into_tensor(output_tensor, input_tensor, group=group, async_op=async_op)


def all_gather_coalesced(output_tensors: Sequence[torch.Tensor], input_tensors: Sequence[torch.Tensor],
                         group: Any = None, async_op: bool = False) -> Any:
    """``all_gather_into_tensor`` for each (output, input) pair; one handle for all."""
    _started()
    works = [dist.all_gather_into_tensor(out, inp, group=group, async_op=async_op)
             for out, inp in zip(output_tensors, input_tensors, strict=True)]
    return _Works(works) if async_op else None


def has_all_gather_into_tensor() -> bool:
    return True


def has_reduce_scatter_tensor() -> bool:
    return True


def has_all_reduce_coalesced() -> bool:
    return True


def has_coalescing_manager() -> bool:
    return hasattr(dist.distributed_c10d, "_coalescing_manager")


def reduce_scatter_tensor(output_tensor: torch.Tensor, tensor: torch.Tensor, op: Any = ReduceOp.SUM,
                          group: Any = None, async_op: bool = False, prof: bool = False,
                          log_name: str = "reduce_scatter_tensor", debug: Any = None) -> Any:
    _started()
    return dist.reduce_scatter_tensor(output_tensor, tensor, op=_op(op), group=group, async_op=async_op)


def reduce_scatter_fn(output_tensor: torch.Tensor, tensor: torch.Tensor, op: Any = ReduceOp.SUM, group: Any = None,
                      async_op: bool = False, prof: bool = False, debug: Any = None) -> Any:
    return reduce_scatter_tensor(output_tensor, tensor, op=op, group=group, async_op=async_op)


def reduce_scatter(output: torch.Tensor, input_list: list[torch.Tensor], op: Any = ReduceOp.SUM, group: Any = None,
                   async_op: bool = False, prof: bool = False, log_name: str = "reduce_scatter",
                   debug: Any = None) -> Any:
    _started()
    return dist.reduce_scatter(output, input_list, op=_op(op), group=group, async_op=async_op)


def all_to_all_single(output: torch.Tensor, tensor: torch.Tensor, output_split_sizes: list[int] | None = None,
                      input_split_sizes: list[int] | None = None, group: Any = None, async_op: bool = False,
                      prof: bool = False, log_name: str = "all_to_all_single", debug: Any = None) -> Any:
    _started()
    return dist.all_to_all_single(output, tensor, output_split_sizes=output_split_sizes,
                                  input_split_sizes=input_split_sizes, group=group, async_op=async_op)


def all_to_all(output_tensor_list: list[torch.Tensor], input_tensor_list: list[torch.Tensor], group: Any = None,
               async_op: bool = False) -> Any:
    _started()
    return dist.all_to_all(output_tensor_list, input_tensor_list, group=group, async_op=async_op)


def send(tensor: torch.Tensor, dst: int, group: Any = None, tag: int = 0, prof: bool = False,
         log_name: str = "send", debug: Any = None) -> None:
    _started()
    dist.send(tensor, dst, group=group, tag=tag)


def recv(tensor: torch.Tensor, src: int | None = None, group: Any = None, tag: int = 0, prof: bool = False,
         log_name: str = "recv", debug: Any = None) -> int:
    _started()
    return dist.recv(tensor, src, group=group, tag=tag)


def isend(tensor: torch.Tensor, dst: int, group: Any = None, tag: int = 0, prof: bool = False,
          log_name: str = "isend", debug: Any = None) -> Any:
    """DeepSpeed's ``isend``: it blocks until sent (it calls ``send``; scripts written for DeepSpeed
    may rely on that), then returns a handle whose ``wait()`` returns at once."""
    send(tensor, dst, group=group, tag=tag)
    return _Works([])


def irecv(tensor: torch.Tensor, src: int | None = None, group: Any = None, tag: int = 0, prof: bool = False,
          log_name: str = "irecv", debug: Any = None) -> Any:
    """DeepSpeed's ``irecv``: it blocks until received (it calls ``recv``), then returns a handle
    whose ``wait()`` returns at once."""
    recv(tensor, src, group=group, tag=tag)
    return _Works([])


def gather(tensor: torch.Tensor, gather_list: list[torch.Tensor] | None = None, dst: int = 0, group: Any = None,
           async_op: bool = False, prof: bool = False, log_name: str = "gather", debug: Any = None) -> Any:
    _started()
    return dist.gather(tensor, gather_list, dst=dst, group=group, async_op=async_op)


def scatter(tensor: torch.Tensor, scatter_list: list[torch.Tensor] | None = None, src: int = 0, group: Any = None,
            async_op: bool = False, prof: bool = False, log_name: str = "scatter", debug: Any = None) -> Any:
    _started()
    return dist.scatter(tensor, scatter_list, src=src, group=group, async_op=async_op)


def barrier(group: Any = None, async_op: bool = False, device_ids: list[int] | None = None, prof: bool = False,
            log_name: str = "barrier", debug: Any = None) -> Any:
    """Wait for every process of ``group`` (on nccl, on this process's GPU unless ``device_ids``)."""
    _started()
    if device_ids is None and dist.get_backend(group) == "nccl":
        device_ids = [torch.cuda.current_device()]
    return dist.barrier(group=group, async_op=async_op, device_ids=device_ids)


def monitored_barrier(group: Any = None, timeout: timedelta | None = None, wait_all_ranks: bool = False,
                      prof: bool = False, log_name: str = "monitored_barrier", debug: Any = None) -> Any:
    """torch's ``monitored_barrier`` (gloo): a rank that does not arrive within ``timeout`` is named."""
    _started()
    return dist.monitored_barrier(group=group, timeout=timeout, wait_all_ranks=wait_all_ranks)


def reduce(tensor: torch.Tensor, dst: int, op: Any = ReduceOp.SUM, group: Any = None, async_op: bool = False,
           prof: bool = False, log_name: str = "reduce", debug: Any = None) -> Any:
    _started()
    return dist.reduce(tensor, dst, op=_op(op), group=group, async_op=async_op)


def all_reduce(tensor: torch.Tensor, op: Any = ReduceOp.SUM, group: Any = None, async_op: bool = False,
               prof: bool = False, log_name: str = "all_reduce", debug: Any = None) -> Any:
    _started()
    return dist.all_reduce(tensor, op=_op(op), group=group, async_op=async_op)


def inference_all_reduce(tensor: torch.Tensor, op: Any = ReduceOp.SUM, group: Any = None, async_op: bool = False,
                         prof: bool = False, log_name: str = "all_reduce", debug: Any = None) -> Any:
    """``all_reduce`` (DeepSpeed's inference kernel is not part of surge); synchronous, as there."""
    return all_reduce(tensor, op=op, group=group)


def all_reduce_coalesced(tensors: Sequence[torch.Tensor], op: Any = ReduceOp.SUM, group: Any = None,
                         async_op: bool = False, prof: bool = False, log_name: str = "all_reduce",
                         debug: Any = None) -> Any:
    """``all_reduce`` on each tensor; one handle for all."""
    _started()
    works = [dist.all_reduce(t, op=_op(op), group=group, async_op=async_op) for t in tensors]
    return _Works(works) if async_op else None
