"""The default process group: started once per process, checked by later callers,
torn down at exit while Python is still alive.

The one process-wide resource surge shares between Accelerators and PartialStates is
PyTorch's default process group (see [Note: several Accelerators] in accelerator.py).
Everything here takes a settled :class:`~surge.topology.Topology` and timeout; nothing
reads the environment or a config file.
"""

from __future__ import annotations

import atexit
import gc
import warnings
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch

from surge import hang
from surge.topology import Topology, _dist

_OWNED_GROUP = False  # True when surge created the default process group in this process
_GROUP_TIMEOUT: list[timedelta] = []  # the timeout surge started it with


def ensure_process_group(topology: Topology, *, timeout: timedelta, asked: bool = True,
                         init_method: str | None = None) -> None:
    """Start the default process group for ``topology`` unless one is running.

    A group started elsewhere (by the user or an earlier Accelerator) is reused after
    checking it describes the same job. The timeout (settled by
    :func:`surge.config.resolve.resolve_timeout`) is applied to every collective of the
    group: a rank that waits longer for the others fails instead of hanging. Asking
    (``asked``: the caller set it explicitly) a running group for another timeout warns.

    Raises:
        ValueError: a running group has another world size or rank than the environment.
    """
    global _OWNED_GROUP
    if not topology.is_distributed:
        return
    dist = _dist()
    if dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
        if (world, rank) != (topology.world_size, topology.rank):
            raise ValueError(
                f"a process group is already running with world size {world} and rank {rank}, but the "
                f"environment describes world size {topology.world_size} and rank {topology.rank}. Destroy the "
                "old group (surge.state.destroy_process_group()) or fix the launcher variables."
            )
        if asked and _GROUP_TIMEOUT and timeout != _GROUP_TIMEOUT[0]:
            warnings.warn(
                f"the process group is already running with a timeout of {_GROUP_TIMEOUT[0]}; the timeout "
                f"{timeout} asked for now cannot change it. Set it on the first Accelerator/PartialState.",
                stacklevel=3,
            )
        hang.install(rank, world, _GROUP_TIMEOUT[0] if _GROUP_TIMEOUT else timeout if asked else None)
        return
    if topology.device.startswith("cuda"):
        torch.cuda.set_device(torch.device(topology.device))
    if init_method is None:
        # torchrun's workers must join the agent's store, which env:// (reading MASTER_ADDR /
        # MASTER_PORT the agent exported) does; other launchers get an explicit TCP address.
        init_method = (
            "env://"
            if topology.source in ("torchrun", "env")
            else f"tcp://{topology.master_addr}:{topology.master_port}"
        )
    kwargs: dict[str, Any] = {}
    if topology.backend == "nccl":
        kwargs["device_id"] = torch.device(topology.device)  # eager NCCL init, bound to our GPU
        hang.nccl_environment()
    dist.init_process_group(
        backend=topology.backend,
        init_method=init_method,
        world_size=topology.world_size,
        rank=topology.rank,
        timeout=timeout,
        **kwargs,
    )
    if not _OWNED_GROUP:
        atexit.register(_destroy_at_exit)
    _OWNED_GROUP = True
    _GROUP_TIMEOUT[:] = [timeout]
    hang.install(topology.rank, topology.world_size, timeout)  # hang.py: [Note: how a hang is diagnosed]


def start_single_process_group(backend: str, device: str, *, timeout: timedelta) -> None:
    """Start a default process group of one process, unless a group is running.

    DeepSpeed's ``init_distributed`` starts a group even for one process, so a script's
    ``torch.distributed.get_rank()`` works after it; surge's Accelerator does not need one.
    The group meets through an in-memory store: no port is opened. A later Accelerator of
    one process ignores it (the topology has one process) and surge tears it down at exit.
    """
    global _OWNED_GROUP
    dist = _dist()
    if dist.is_initialized():
        return
    kwargs: dict[str, Any] = {}
    if backend == "nccl":
        torch.cuda.set_device(torch.device(device))
        kwargs["device_id"] = torch.device(device)
    dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout, **kwargs)
    if not _OWNED_GROUP:
        atexit.register(_destroy_at_exit)
    _OWNED_GROUP = True
    _GROUP_TIMEOUT[:] = [timeout]


def group_timeout() -> timedelta | None:
    """The collective timeout of the group surge started (None: not started by surge)."""
    return _GROUP_TIMEOUT[0] if _GROUP_TIMEOUT else None


def destroy_process_group() -> None:
    """Tear down the default process group (if any), so a new job shape can start.

    Safe to call when no group exists.
    """
    global _OWNED_GROUP
    dist = _dist()
    if dist.is_available() and dist.is_initialized():
        hang.uninstall()
        dist.destroy_process_group()
    _OWNED_GROUP = False
    _GROUP_TIMEOUT.clear()


_EXIT_CLEANUPS: list[Callable[[], None]] = []


def register_exit_cleanup(fn: Callable[[], None]) -> None:
    """Run ``fn`` at interpreter exit, before surge's process group is destroyed."""
    if fn not in _EXIT_CLEANUPS:
        _EXIT_CLEANUPS.append(fn)


def _destroy_at_exit() -> None:
    # [Note: tear down while Python is alive]
    # Objects that hold the process group from C++ (DDP's reducer) must go before the
    # interpreter is finalised: destroyed during finalisation, the group's worker
    # threads can try to take the GIL and the process dies with "terminate called
    # without an active exception" (SIGABRT) after the script already finished. So at
    # exit: collect cyclic garbage, release the reducers still referenced by globals,
    # destroy the group, collect again. Only the group surge created is ours to close.
    if not _OWNED_GROUP:
        return
    gc.collect()
    for cleanup in _EXIT_CLEANUPS:
        cleanup()
    destroy_process_group()
    gc.collect()


def process_group_active() -> bool:
    dist = _dist()
    return bool(dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)


def barrier(topology: Topology) -> None:
    """Block until every process of ``topology`` reaches this call (no-op for one)."""
    if topology.is_distributed:
        dist = _dist()
        if topology.backend == "nccl":
            dist.barrier(device_ids=[torch.device(topology.device).index or 0])
        else:
            dist.barrier()
