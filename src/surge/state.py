"""Process topology and process-level state.

``Topology`` is a plain frozen value (world size, ranks, device, backend) that tests can
build with any shape and no processes. ``PartialState`` is the live view for this
process: it owns starting the default process group when the job has several
processes. There is no hidden singleton: every ``PartialState`` and every
``Accelerator`` computes its own topology; the one process-wide resource is PyTorch's
default process group, which is created once, checked for consistency by later
callers, and can be torn down with :func:`destroy_process_group`.
"""

from __future__ import annotations

import atexit
import gc
import warnings
import contextlib
import enum
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch

from surge import hang
from surge.config.environment import LaunchEnvironment, current_launch_environment
from surge.config.kwargs import BACKENDS, as_timeout
from surge.device import choose_device

F = TypeVar("F", bound=Callable[..., Any])


class DistributedType(str, enum.Enum):
    """How the job is distributed (HF Accelerate's names; compares equal to its strings)."""

    NO = "NO"
    MULTI_CPU = "MULTI_CPU"
    MULTI_GPU = "MULTI_GPU"
    DEEPSPEED = "DEEPSPEED"
    FSDP = "FSDP"


@dataclass(frozen=True)
class Topology:
    """Where this process sits: a value, no side effects.

    Example:
        >>> Topology(world_size=8, rank=3, local_rank=3, local_world_size=8).is_main_process
        False
    """

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    local_world_size: int = 1
    node_rank: int = 0
    num_nodes: int = 1
    device: str = "cpu"
    """"cpu", "cuda:<i>" or "mps"."""
    backend: str | None = None
    """Collective backend ("nccl", "gloo", "mpi"); None for a single process."""
    master_addr: str | None = None
    master_port: int | None = None
    source: str = "none"
    """The launcher convention the topology was read from (see config/environment.py)."""

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0

    @property
    def is_local_main_process(self) -> bool:
        return self.local_rank == 0

    @property
    def is_last_process(self) -> bool:
        return self.rank == self.world_size - 1

    @property
    def distributed_type(self) -> DistributedType:
        if not self.is_distributed:
            return DistributedType.NO
        return DistributedType.MULTI_GPU if self.device.startswith("cuda") else DistributedType.MULTI_CPU

    @classmethod
    def from_launch(
        cls,
        launch: LaunchEnvironment,
        *,
        cpu: bool = False,
        backend: str | None = None,
        cuda_device_count: int = 0,
        mps_available: bool = False,
    ) -> Topology:
        """Combine a launcher's description with the devices this machine has. Pure.

        Raises:
            ValueError: ``backend="nccl"`` without a CUDA device, or more local processes
                than GPUs.
        """
        device = choose_device(
            local_rank=launch.local_rank,
            local_world_size=launch.local_world_size,
            cpu=cpu,
            cuda_device_count=cuda_device_count,
            mps_available=mps_available,
            local_world_size_known=launch.local_world_size_known,
        )
        if launch.world_size == 1:
            chosen = None
        elif backend is None:
            chosen = "nccl" if device.startswith("cuda") else "gloo"
        else:
            if backend not in BACKENDS:
                raise ValueError(f"backend={backend!r} is not supported; choose one of {', '.join(map(repr, BACKENDS))}.")
            if backend == "nccl" and not device.startswith("cuda"):
                raise ValueError(
                    f"backend='nccl' needs CUDA devices but this process runs on {device!r}; use backend='gloo' "
                    "(the default on CPU) or run where GPUs are visible."
                )
            chosen = backend
        return cls(
            world_size=launch.world_size,
            rank=launch.rank,
            local_rank=launch.local_rank,
            local_world_size=launch.local_world_size,
            node_rank=launch.node_rank,
            num_nodes=launch.num_nodes,
            device=device,
            backend=chosen,
            master_addr=launch.master_addr,
            master_port=launch.master_port,
            source=launch.source,
        )

    @classmethod
    def detect(cls, *, cpu: bool = False, backend: str | None = None) -> Topology:
        """Read this process's launcher variables and devices.

        A process group the user started without launcher variables (e.g.
        ``mp.spawn`` + ``init_process_group(rank=..., world_size=...)``) defines the job.
        """
        launch = current_launch_environment()
        dist = _dist()
        if launch.world_size == 1 and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            world, rank = dist.get_world_size(), dist.get_rank()
            launch = LaunchEnvironment(
                "existing", rank, world, rank, world, 0, 1, None, None, local_world_size_known=False
            )
            backend = backend or str(dist.get_backend())
        mps = getattr(torch.backends, "mps", None)
        return cls.from_launch(
            launch,
            cpu=cpu,
            backend=backend,
            cuda_device_count=torch.cuda.device_count() if torch.cuda.is_available() else 0,
            mps_available=bool(mps is not None and mps.is_available()),
        )


# --- the default process group -------------------------------------------------------

_OWNED_GROUP = False  # True when surge created the default process group in this process
_GROUP_TIMEOUT: list[timedelta] = []  # the timeout surge started it with


def _dist() -> Any:
    import torch.distributed as dist  # already loaded by `import torch`; local for clarity

    return dist


def ensure_process_group(topology: Topology, *, timeout: timedelta | None, init_method: str | None = None) -> None:
    """Start the default process group for ``topology`` unless one is running.

    A group started elsewhere (by the user or an earlier Accelerator) is reused after
    checking it describes the same job. The timeout is applied to every collective of
    the group: a rank that waits longer than ``timeout`` (None: 10 minutes) for the
    others fails instead of hanging. Asking a running group for another timeout warns.

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
        if timeout is not None and _GROUP_TIMEOUT and timeout != _GROUP_TIMEOUT[0]:
            warnings.warn(
                f"the process group is already running with a timeout of {_GROUP_TIMEOUT[0]}; the timeout "
                f"{timeout} asked for now cannot change it. Set it on the first Accelerator/PartialState.",
                stacklevel=3,
            )
        hang.install(rank, world, _GROUP_TIMEOUT[0] if _GROUP_TIMEOUT else timeout)
        return
    if timeout is None:
        timeout = configured_timeout()
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


def group_timeout() -> timedelta | None:
    """The collective timeout of the group surge started (None: not started by surge)."""
    return _GROUP_TIMEOUT[0] if _GROUP_TIMEOUT else None


def configured_timeout() -> timedelta:
    """The collective timeout of the active config (``collective_timeout``), else
    ``DEFAULT_TIMEOUT`` (10 minutes)."""
    from surge.config.accelerator import DEFAULT_TIMEOUT
    from surge.config.file import active_values

    seconds = active_values()[0].get("collective_timeout")
    return timedelta(seconds=seconds) if seconds is not None else DEFAULT_TIMEOUT


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


# --- helpers shared by PartialState and Accelerator ------------------------------------


class ProcessQueries:
    """Rank queries and rank-aware helpers, built on ``self.topology``."""

    topology: Topology

    @property
    def device(self) -> torch.device:
        """The device this process computes on."""
        return self._device

    @functools.cached_property
    def _device(self) -> torch.device:
        return torch.device(self.topology.device)

    @property
    def num_processes(self) -> int:
        return self.topology.world_size

    @property
    def process_index(self) -> int:
        return self.topology.rank

    @property
    def local_process_index(self) -> int:
        return self.topology.local_rank

    @property
    def num_machines(self) -> int:
        return self.topology.num_nodes

    @property
    def is_main_process(self) -> bool:
        return self.topology.is_main_process

    @property
    def is_local_main_process(self) -> bool:
        return self.topology.is_local_main_process

    @property
    def is_last_process(self) -> bool:
        return self.topology.is_last_process

    @property
    def use_distributed(self) -> bool:
        return self.topology.is_distributed

    @property
    def backend(self) -> str | None:
        return self.topology.backend

    def wait_for_everyone(self) -> None:
        """Block until every process reaches this line (a barrier; no-op for one process)."""
        if self.topology.is_distributed:
            dist = _dist()
            if self.topology.backend == "nccl":
                dist.barrier(device_ids=[torch.device(self.topology.device).index or 0])
            else:
                dist.barrier()

    @contextlib.contextmanager
    def _first(self, go_first: bool) -> Iterator[None]:
        if not go_first:
            self.wait_for_everyone()
        yield
        if go_first:
            self.wait_for_everyone()

    def main_process_first(self) -> contextlib.AbstractContextManager[None]:
        """Run the block on the main process first, then on the others (e.g. dataset
        preprocessing that writes a cache the others then read)."""
        return self._first(self.is_main_process)

    def local_main_process_first(self) -> contextlib.AbstractContextManager[None]:
        """Like :meth:`main_process_first`, once per machine."""
        return self._first(self.is_local_main_process)

    def _only_if(self, flag_name: str, fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if getattr(self, flag_name):
                return fn(*args, **kwargs)
            return None

        return wrapper  # type: ignore[return-value]

    def on_main_process(self, function: F) -> F:
        """Decorator: run ``function`` on the main process only (others get None)."""
        return self._only_if("is_main_process", function)

    def on_local_main_process(self, function: F) -> F:
        """Decorator: run ``function`` on each machine's first process only."""
        return self._only_if("is_local_main_process", function)

    def on_last_process(self, function: F) -> F:
        """Decorator: run ``function`` on the last process only."""
        return self._only_if("is_last_process", function)

    def on_process(self, function: F | None = None, process_index: int | None = None) -> Any:
        """Decorator: run ``function`` on the process with ``process_index`` only."""
        if function is None:
            return functools.partial(self.on_process, process_index=process_index)
        if process_index is None:
            raise TypeError("on_process needs process_index=<rank>.")

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if self.process_index == process_index:
                return function(*args, **kwargs)
            return None

        return wrapper

    def print(self, *args: Any, **kwargs: Any) -> None:
        """``print`` on the main process only."""
        if self.is_main_process:
            print(*args, **kwargs)

    @contextlib.contextmanager
    def split_between_processes(self, inputs: Any, apply_padding: bool = False) -> Iterator[Any]:
        """Yield this process's contiguous share of ``inputs`` (a list, tuple, tensor or a
        dict of those, split along the first dimension).

        Shares differ by at most one item, earlier ranks getting the extra ones. With
        ``apply_padding=True`` shorter shares are padded with their last item so every
        rank gets the same count (useful before ``gather``; drop the padding afterwards).

        Example:
            >>> with state.split_between_processes(["a", "b", "c"]) as prompts:
            ...     results = [generate(p) for p in prompts]
        """
        yield split_for_rank(inputs, self.num_processes, self.process_index, apply_padding)


def split_for_rank(inputs: Any, num_shards: int, index: int, apply_padding: bool = False) -> Any:
    """The ``index``-th of ``num_shards`` contiguous shares of ``inputs``. Pure."""
    if num_shards == 1:
        return inputs
    if isinstance(inputs, Mapping):
        lengths = {k: len(v) for k, v in inputs.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"split_between_processes needs dict values of one length; got lengths {lengths}.")
        return type(inputs)({k: split_for_rank(v, num_shards, index, apply_padding) for k, v in inputs.items()})
    if not isinstance(inputs, (Sequence, torch.Tensor)) or isinstance(inputs, (str, bytes)):
        raise TypeError(
            f"split_between_processes cannot split a {type(inputs).__name__}; pass a list, tuple, tensor or a "
            "dict of those."
        )
    n = len(inputs)
    per, extra = divmod(n, num_shards)
    start = index * per + min(index, extra)
    size = per + (1 if index < extra else 0)
    share = inputs[start : start + size]
    missing = (per + (1 if extra else 0)) - size
    if apply_padding and missing and n:
        # Pad with this share's last item (or the input's last item for an empty share).
        filler = inputs[start + size - 1 : start + size] if size else inputs[n - 1 : n]
        if isinstance(share, torch.Tensor):
            share = torch.cat([share] + [filler] * missing)
        elif isinstance(share, (list, tuple)):
            share = share + filler * missing
        else:
            share = list(share) + list(filler) * missing
    return share


class PartialState(ProcessQueries):
    """Process-level state without an Accelerator: topology, device, process group.

    Creating one starts the default process group when the job has several processes
    (and reuses a running one). Instances are cheap and independent; several may exist.

    Args:
        cpu: Use the CPU even when GPUs are visible.
        timeout: How long a collective may wait (timedelta or seconds); default 10 minutes.
        backend: "nccl", "gloo" or "mpi"; None picks by device.

    Example:
        >>> state = surge.PartialState()
        >>> with state.split_between_processes(prompts) as mine: ...
    """

    def __init__(
        self,
        cpu: bool = False,
        *,
        timeout: timedelta | float | None = None,
        backend: str | None = None,
        init_method: str | None = None,
    ) -> None:
        if not isinstance(cpu, bool):
            raise TypeError(f"cpu={cpu!r} must be True or False.")
        self.timeout = None if timeout is None else as_timeout("timeout", timeout)
        self.topology = Topology.detect(cpu=cpu, backend=backend)
        ensure_process_group(self.topology, timeout=self.timeout, init_method=init_method)

    @property
    def distributed_type(self) -> DistributedType:
        return self.topology.distributed_type

    def destroy_process_group(self) -> None:
        """Tear down the default process group (see :func:`destroy_process_group`)."""
        destroy_process_group()

    def __repr__(self) -> str:
        t = self.topology
        return (
            f"PartialState(distributed_type={self.distributed_type.value}, num_processes={t.world_size}, "
            f"process_index={t.rank}, local_process_index={t.local_rank}, device={t.device!r}, backend={t.backend!r})"
        )

