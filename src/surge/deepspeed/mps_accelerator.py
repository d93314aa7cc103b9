"""Apple's GPUs under DeepSpeed's accelerator abstraction (DeepSpeed's ``MPS_Accelerator``; see
device_abstraction.py)."""

from __future__ import annotations

import torch

from surge.deepspeed.device_abstraction import DeepSpeedAccelerator, NoStreams


class MpsAccelerator(NoStreams, DeepSpeedAccelerator):
    """Apple's GPUs (DeepSpeed's ``MPS_Accelerator``): one device, no collective backend."""

    _name = "mps"
    _communication_backend_name = None

    def device_name(self, device_index: int | None = None) -> str:
        return "mps" if device_index is None else f"mps:{device_index}"

    def device(self, device_index: int | None = None) -> torch.device:
        return torch.device("mps", index=0)

    def set_device(self, device_index: int | str | torch.device) -> None:
        return None

    def current_device(self) -> torch.device:
        return torch.device("mps", index=0)

    def current_device_name(self) -> str:
        return "mps:0"

    def device_count(self) -> int:
        return 1

    def synchronize(self, device_index: int | None = None) -> None:
        torch.mps.synchronize()

    def is_available(self) -> bool:
        mps = getattr(torch.backends, "mps", None)
        return bool(mps is not None and mps.is_available())

    def set_rng_state(self, new_state: torch.Tensor, device_index: int | None = None) -> None:
        torch.mps.set_rng_state(new_state)

    def get_rng_state(self, device_index: int | None = None) -> torch.Tensor:
        return torch.mps.get_rng_state()

    def manual_seed(self, seed: int) -> None:
        torch.mps.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.mps.manual_seed(seed)

    def seed(self) -> None:
        torch.mps.seed()

    def initial_seed(self) -> None:
        return None

    def default_generator(self, device_index: int | None = None) -> None:
        return None

    def empty_cache(self) -> None:
        torch.mps.empty_cache()

    def memory_allocated(self, device_index: int | None = None) -> int:
        return int(torch.mps.current_allocated_memory())

    def max_memory_allocated(self, device_index: int | None = None) -> int:
        return int(torch.mps.driver_allocated_memory())

    def set_per_process_memory_fraction(self, fraction: float) -> None:
        torch.mps.set_per_process_memory_fraction(fraction)

    # what MPS cannot report answers None, as in DeepSpeed
    def _none(self, device_index: int | None = None) -> None:
        return None

    reset_max_memory_allocated = memory_cached = max_memory_cached = reset_max_memory_cached = _none
    memory_stats = reset_peak_memory_stats = memory_reserved = max_memory_reserved = _none
    total_memory = available_memory = _none

    def is_bf16_supported(self) -> bool:
        return False

    def is_fp16_supported(self) -> bool:
        return False

    def supported_dtypes(self) -> list[torch.dtype]:
        return [torch.float]

    def amp(self) -> None:
        return None
