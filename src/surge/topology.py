"""Where this process sits in the job: ``Topology``, a plain frozen value.

A ``Topology`` is the launcher's description of the job (a
:class:`~surge.config.environment.LaunchEnvironment`) plus what this machine decided
for it: the device and the collective backend. It has no side effects, so tests build
any job shape (``world_size=8`` included) without processes. Starting the process
group is process_group.py's job.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import torch

from surge.config.environment import LaunchEnvironment, Source, current_launch_environment
from surge.config.kwargs import BACKENDS
from surge.device import choose_device


class DistributedType(str, enum.Enum):
    """How the job is distributed: every member of HF Accelerate 1.15's enum, with its
    string values (members compare equal to their strings).

    surge runs as NO, MULTI_CPU, MULTI_GPU, DEEPSPEED (ZeRO on FSDP2) or FSDP; the other
    members (other accelerators, XLA, Megatron-LM) exist so scripts that compare with
    them run, and are never reported.
    """

    NO = "NO"
    MULTI_CPU = "MULTI_CPU"
    MULTI_GPU = "MULTI_GPU"
    MULTI_NPU = "MULTI_NPU"
    MULTI_MLU = "MULTI_MLU"
    MULTI_SDAA = "MULTI_SDAA"
    MULTI_MUSA = "MULTI_MUSA"
    MULTI_XPU = "MULTI_XPU"
    DEEPSPEED = "DEEPSPEED"
    FSDP = "FSDP"
    XLA = "XLA"
    MEGATRON_LM = "MEGATRON_LM"
    MULTI_HPU = "MULTI_HPU"
    MULTI_NEURON = "MULTI_NEURON"


@dataclass(frozen=True)
class Topology:
    """Where this process sits: a value, no side effects.

    Example:
        >>> launch = LaunchEnvironment("env", rank=3, world_size=8, local_rank=3, local_world_size=8)
        >>> Topology.from_launch(launch).is_main_process
        False
    """

    launch: LaunchEnvironment = field(default_factory=LaunchEnvironment)
    """The job shape as the launcher described it (ranks, sizes, rendezvous address)."""
    device: str = "cpu"
    """"cpu", "cuda:<i>" or "mps"."""
    backend: str | None = None
    """Collective backend ("nccl", "gloo", "mpi"); None for a single process."""

    # -- the launcher's numbers, by the names the rest of surge uses ------------------------

    @property
    def world_size(self) -> int:
        return self.launch.world_size

    @property
    def rank(self) -> int:
        return self.launch.rank

    @property
    def local_rank(self) -> int:
        return self.launch.local_rank

    @property
    def local_world_size(self) -> int:
        return self.launch.local_world_size

    @property
    def node_rank(self) -> int:
        return self.launch.node_rank

    @property
    def num_nodes(self) -> int:
        return self.launch.num_nodes

    @property
    def master_addr(self) -> str | None:
        return self.launch.master_addr

    @property
    def master_port(self) -> int | None:
        return self.launch.master_port

    @property
    def source(self) -> Source:
        """The launcher convention the topology was read from (see config/environment.py)."""
        return self.launch.source

    # -- derived ----------------------------------------------------------------------------

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
        chosen: str | None
        if launch.world_size == 1:
            chosen = None
        elif backend is None:
            chosen = "nccl" if device.startswith("cuda") else "gloo"
        else:
            if backend not in BACKENDS:
                raise ValueError(f"backend={backend!r} is not supported; choose one of "
                                 f"{', '.join(map(repr, BACKENDS))}.")
            if backend == "nccl" and not device.startswith("cuda"):
                raise ValueError(
                    f"backend='nccl' needs CUDA devices but this process runs on {device!r}; use backend='gloo' "
                    "(the default on CPU) or run where GPUs are visible."
                )
            chosen = backend
        return cls(launch=launch, device=device, backend=chosen)

    @classmethod
    def detect(cls, *, cpu: bool = False, backend: str | None = None,
               launch: LaunchEnvironment | None = None) -> Topology:
        """Read this process's launcher variables (or take ``launch``) and devices.

        A process group the user started without launcher variables (e.g.
        ``mp.spawn`` + ``init_process_group(rank=..., world_size=...)``) defines the job.
        """
        launch = current_launch_environment() if launch is None else launch
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


def _dist() -> Any:
    import torch.distributed as dist  # already loaded by `import torch`; local for clarity

    return dist
