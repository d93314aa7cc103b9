"""The CPU under DeepSpeed's accelerator abstraction (DeepSpeed's ``CPU_Accelerator``; see
device_abstraction.py)."""

from __future__ import annotations

from typing import Any

import torch

from surge.deepspeed.device_abstraction import DeepSpeedAccelerator, NoStreams


class CpuAccelerator(NoStreams, DeepSpeedAccelerator):
    """The CPU (DeepSpeed's ``CPU_Accelerator``): memory queries answer with the process's
    resident memory, the peak being the largest value seen by a query since the last reset."""

    _name = "cpu"
    _communication_backend_name = "gloo"

    def __init__(self) -> None:
        super().__init__()
        self.max_mem = self._rss()

    @staticmethod
    def _rss() -> int:
        import psutil

        return int(psutil.Process().memory_info().rss)

    def is_synchronized_device(self) -> bool:
        return True

    def device_name(self, device_index: int | None = None) -> str:
        return "cpu"

    def device(self, device_index: int | None = None) -> None:
        return None

    def set_device(self, device_index: int | str | torch.device) -> None:
        return None

    def current_device(self) -> int:
        """This process's local rank (DeepSpeed returns the ``LOCAL_RANK`` variable)."""
        from surge.config.environment import current_launch_environment

        return current_launch_environment().local_rank

    def current_device_name(self) -> str:
        return "cpu"

    def device_count(self) -> int:
        """The number of processes on this machine (one CPU "device" each); 1 unlaunched."""
        from surge.config.environment import current_launch_environment

        return max(1, current_launch_environment().local_world_size)

    def synchronize(self, device_index: int | None = None) -> None:
        return None

    def is_available(self) -> bool:
        return True

    # RNG
    def set_rng_state(self, new_state: torch.Tensor, device_index: int | None = None) -> None:
        torch.set_rng_state(new_state)

    def get_rng_state(self, device_index: int | None = None) -> torch.Tensor:
        return torch.get_rng_state()

    def manual_seed(self, seed: int) -> torch.Generator:
        return torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> torch.Generator:
        return torch.manual_seed(seed)

    def initial_seed(self) -> int:
        return torch.initial_seed()

    def default_generator(self, device_index: int | None = None) -> torch.Generator:
        return torch.default_generator

    # no streams or events on the CPU (Stream and Event are None): NoStreams

    # memory: the process's resident set
    def empty_cache(self) -> None:
        return None

    def get_rss(self) -> int:
        mem = self._rss()
        self.max_mem = max(self.max_mem, mem)
        return mem

    def reset_rss(self) -> int:
        self.max_mem = self._rss()
        return self.max_mem

    def memory_allocated(self, device_index: int | None = None) -> int:
        return self.get_rss()

    def max_memory_allocated(self, device_index: int | None = None) -> int:
        self.get_rss()
        return self.max_mem

    def reset_max_memory_allocated(self, device_index: int | None = None) -> None:
        self.reset_rss()

    memory_cached = memory_reserved = memory_allocated
    max_memory_cached = max_memory_reserved = max_memory_allocated
    reset_max_memory_cached = reset_peak_memory_stats = reset_max_memory_allocated

    def memory_stats(self, device_index: int | None = None) -> dict[str, int]:
        mem = self.get_rss()
        return {"allocated_bytes.all.current": mem, "allocated_bytes.all.peak": self.max_mem}

    def total_memory(self, device_index: int | None = None) -> int:
        import psutil

        return int(psutil.virtual_memory().total)

    def available_memory(self, device_index: int | None = None) -> int:
        import psutil

        return int(psutil.virtual_memory().available)

    # data types
    def is_bf16_supported(self) -> bool:
        return True

    def is_fp16_supported(self) -> bool:
        return False

    def supported_dtypes(self) -> list[torch.dtype]:
        return [torch.float, torch.bfloat16]

    def amp(self) -> Any:
        return torch.cpu.amp

    def pin_memory(self, tensor: torch.Tensor, align_bytes: int = 1) -> torch.Tensor:
        return tensor  # DeepSpeed's CPU accelerator does not pin: the CPU is the device

    # torch's legacy CPU tensor types, as DeepSpeed gives them
    BFloat16Tensor = property(lambda self: torch.BFloat16Tensor)
    ByteTensor = property(lambda self: torch.ByteTensor)
    DoubleTensor = property(lambda self: torch.DoubleTensor)
    FloatTensor = property(lambda self: torch.FloatTensor)
    HalfTensor = property(lambda self: torch.HalfTensor)
    IntTensor = property(lambda self: torch.IntTensor)
    LongTensor = property(lambda self: torch.LongTensor)
