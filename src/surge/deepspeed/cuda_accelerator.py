"""NVIDIA GPUs under DeepSpeed's accelerator abstraction (DeepSpeed's ``CUDA_Accelerator``;
see device_abstraction.py)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from surge.deepspeed.device_abstraction import DeepSpeedAccelerator


class CudaAccelerator(DeepSpeedAccelerator):
    """NVIDIA GPUs (DeepSpeed's ``CUDA_Accelerator``)."""

    _name = "cuda"
    _communication_backend_name = "nccl"

    def device_name(self, device_index: int | None = None) -> str:
        return "cuda" if device_index is None else f"cuda:{device_index}"

    def device(self, device_index: int | None = None) -> Any:
        return torch.cuda.device(device_index)

    def set_device(self, device_index: int | str | torch.device) -> None:
        torch.cuda.set_device(device_index)

    def current_device(self) -> int:
        return torch.cuda.current_device()

    def current_device_name(self) -> str:
        return f"cuda:{torch.cuda.current_device()}"

    def device_count(self) -> int:
        return torch.cuda.device_count()

    def synchronize(self, device_index: int | None = None) -> None:
        torch.cuda.synchronize(device_index)

    def is_available(self) -> bool:
        return torch.cuda.is_available()

    # RNG
    def set_rng_state(self, new_state: torch.Tensor, device_index: int | None = None) -> None:
        if device_index is None:
            torch.cuda.set_rng_state(new_state)
        else:
            torch.cuda.set_rng_state(new_state, device_index)

    def get_rng_state(self, device_index: int | None = None) -> torch.Tensor:
        return torch.cuda.get_rng_state() if device_index is None else torch.cuda.get_rng_state(device_index)

    def manual_seed(self, seed: int) -> None:
        torch.cuda.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.cuda.manual_seed_all(seed)

    def initial_seed(self) -> int:
        return torch.cuda.initial_seed()

    def default_generator(self, device_index: int) -> torch.Generator:
        return torch.cuda.default_generators[device_index]

    # streams and events
    @property
    def Stream(self) -> Any:  # DeepSpeed's name
        return torch.cuda.Stream

    def stream(self, stream: Any) -> Any:
        return torch.cuda.stream(stream)

    def current_stream(self, device_index: int | None = None) -> Any:
        return torch.cuda.current_stream(device_index)

    def default_stream(self, device_index: int | None = None) -> Any:
        return torch.cuda.default_stream(device_index)

    @property
    def Event(self) -> Any:  # DeepSpeed's name
        return torch.cuda.Event

    # memory (the *_cached names are torch's old names for reserved memory)
    def empty_cache(self) -> None:
        torch.cuda.empty_cache()

    def memory_allocated(self, device_index: int | None = None) -> int:
        return torch.cuda.memory_allocated(device_index)

    def max_memory_allocated(self, device_index: int | None = None) -> int:
        return torch.cuda.max_memory_allocated(device_index)

    def reset_max_memory_allocated(self, device_index: int | None = None) -> None:
        torch.cuda.reset_peak_memory_stats(device_index)

    def memory_cached(self, device_index: int | None = None) -> int:
        return torch.cuda.memory_reserved(device_index)

    def max_memory_cached(self, device_index: int | None = None) -> int:
        return torch.cuda.max_memory_reserved(device_index)

    def reset_max_memory_cached(self, device_index: int | None = None) -> None:
        torch.cuda.reset_peak_memory_stats(device_index)

    def memory_stats(self, device_index: int | None = None) -> dict[str, Any]:
        return torch.cuda.memory_stats(device_index)

    def reset_peak_memory_stats(self, device_index: int | None = None) -> None:
        torch.cuda.reset_peak_memory_stats(device_index)

    def memory_reserved(self, device_index: int | None = None) -> int:
        return torch.cuda.memory_reserved(device_index)

    def max_memory_reserved(self, device_index: int | None = None) -> int:
        return torch.cuda.max_memory_reserved(device_index)

    def total_memory(self, device_index: int | None = None) -> int:
        return int(torch.cuda.get_device_properties(device_index).total_memory)

    def available_memory(self, device_index: int | None = None) -> int:
        """Free memory on the device as the driver reports it (other processes' use included)."""
        index = self.current_device() if device_index is None else device_index
        return int(torch.cuda.mem_get_info(index)[0])

    # data types
    def is_bf16_supported(self) -> bool:
        if not torch.cuda.is_available():
            return True  # DeepSpeed's answer when it cannot ask a device
        return bool(torch.cuda.is_bf16_supported())

    def is_fp16_supported(self) -> bool:
        """Compute capability 7.0 and later (6.x with ``DS_ALLOW_DEPRECATED_FP16=1``), as DeepSpeed."""
        if not torch.cuda.is_available():
            return True
        from surge.config.environment import allow_deprecated_fp16_variable

        major, _ = torch.cuda.get_device_capability()
        return major >= 7 or (major == 6 and allow_deprecated_fp16_variable())

    def supported_dtypes(self) -> list[torch.dtype]:
        dtypes = [torch.float]
        if self.is_fp16_supported():
            dtypes.append(torch.half)
        if self.is_bf16_supported():
            dtypes.append(torch.bfloat16)
        return dtypes

    def amp(self) -> Any:
        return torch.cuda.amp

    def is_triton_supported(self) -> bool:
        return torch.cuda.get_device_capability()[0] >= 8

    def range_push(self, msg: str) -> Any:
        return torch.cuda.nvtx.range_push(msg)  # type: ignore[no-untyped-call]

    def range_pop(self) -> Any:
        return torch.cuda.nvtx.range_pop()  # type: ignore[no-untyped-call]

    def lazy_call(self, callback: Callable[[], Any]) -> Any:
        return torch.cuda._lazy_call(callback)  # type: ignore[no-untyped-call]

    def create_graph(self) -> Any:
        return torch.cuda.CUDAGraph()

    def capture_to_graph(self, graph: Any, pool: Any = None, stream: Any = None) -> Any:
        return torch.cuda.graph(graph, pool, stream)

    def replay_graph(self, graph: Any) -> None:
        graph.replay()

    def export_envs(self) -> list[str]:
        return ["NCCL"]

    # tensor constructors on the GPU, as DeepSpeed gives them
    BFloat16Tensor = property(lambda self: functools.partial(torch.tensor, dtype=torch.bfloat16, device="cuda"))
    ByteTensor = property(lambda self: functools.partial(torch.tensor, dtype=torch.uint8, device="cuda"))
    DoubleTensor = property(lambda self: functools.partial(torch.tensor, dtype=torch.double, device="cuda"))
    FloatTensor = property(lambda self: functools.partial(torch.tensor, dtype=torch.float, device="cuda"))
    HalfTensor = property(lambda self: functools.partial(torch.tensor, dtype=torch.half, device="cuda"))
    IntTensor = property(lambda self: functools.partial(torch.tensor, dtype=torch.int, device="cuda"))
    LongTensor = property(lambda self: functools.partial(torch.tensor, dtype=torch.long, device="cuda"))
