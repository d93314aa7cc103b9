"""DeepSpeed's accelerator abstraction: ``deepspeed.accelerator.get_accelerator()`` as
``surge.accelerator.get_accelerator()`` (also ``surge.get_accelerator``).

DeepSpeed scripts write device code once through this object (``device_name(i)``,
``current_device_name()``, ``device_count()``, ``is_bf16_supported()``,
``communication_backend_name()``, ``synchronize()``, ``manual_seed``, ``empty_cache``,
memory queries, streams and events, pinned memory). The three accelerators surge runs on
answer as DeepSpeed's ``CUDA_Accelerator``, ``CPU_Accelerator`` and ``MPS_Accelerator`` do,
method for method (DeepSpeed's ``accelerator/*_accelerator.py``), with these differences:

- the CPU accelerator's backend is always ``"gloo"`` (DeepSpeed says ``"ccl"`` when Intel's
  oneCCL bindings are installed; surge does not run ccl), its ``current_device()`` is the
  local rank as an ``int`` (DeepSpeed returns the ``LOCAL_RANK`` string) and its
  ``device_count()`` the number of processes on this machine (DeepSpeed counts NUMA nodes
  when the launcher does not say);
- ``stream(s)`` is a no-op context on MPS (DeepSpeed returns None there);
- CUDA's ``available_memory()`` asks the driver (``torch.cuda.mem_get_info``), which is
  what DeepSpeed's NVML query answers, without needing pynvml;
- DeepSpeed's compiled ops are not part of surge: ``create_op_builder`` /
  ``get_op_builder`` return a builder whose ``is_compatible()`` is False and whose
  ``load()`` raises :class:`~surge.unsupported.UnsupportedError` naming the op.

The accelerator is detected once, as DeepSpeed detects it: ``DS_ACCELERATOR`` ("cuda",
"cpu" or "mps") when set, else MPS when it is available, else CUDA when a GPU is visible,
else the CPU. :func:`set_accelerator` replaces it (None: detect again).

Example:
    >>> from surge.accelerator import get_accelerator
    >>> device = torch.device(get_accelerator().device_name(local_rank))  # "cuda:1" / "cpu"
    >>> get_accelerator().manual_seed_all(1234)
"""

from __future__ import annotations

import contextlib
import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, MutableMapping, Sequence
from typing import Any

import torch

from surge.unsupported import UnsupportedError

__all__ = [
    "DeepSpeedAccelerator",
    "UnavailableOpBuilder",
    "get_accelerator",
    "is_current_accelerator_supported",
    "set_accelerator",
]

SUPPORTED = ("cuda", "cpu", "mps")
"""The accelerators surge runs on (DeepSpeed also has xpu, npu, hpu, mlu, sdaa)."""


class UnavailableOpBuilder:
    """What ``create_op_builder`` returns (``get_op_builder`` returns its class): DeepSpeed's
    compiled ops (FusedAdam, CPUAdam, async I/O, the transformer kernels, ...) are not part of
    surge, which runs torch's own implementations."""

    NAME = "unavailable"

    def is_compatible(self, verbose: bool = False) -> bool:
        return False

    def absolute_name(self) -> str:
        return f"deepspeed.ops.{self.NAME}"

    def load(self, verbose: bool = True) -> Any:
        raise UnsupportedError(
            f"DeepSpeed's compiled op {self.NAME!r} is not part of surge: surge has no compiled ops. Use the torch "
            "equivalent (torch.optim.Adam/AdamW with fused=True or foreach=True for FusedAdam and CPUAdam; the "
            "config's optimizer section builds it) or run this code under DeepSpeed.")

    def builder(self) -> Any:
        return self.load()


@functools.cache
def _builder_class(class_name: str) -> type[UnavailableOpBuilder]:
    return type(class_name, (UnavailableOpBuilder,), {"NAME": class_name})


class DeepSpeedAccelerator(ABC):
    """The interface (DeepSpeed's abstract base class of the same name) and what the three
    accelerators share; :class:`~surge.deepspeed.cuda_accelerator.CudaAccelerator`,
    :class:`~surge.deepspeed.cpu_accelerator.CpuAccelerator` and
    :class:`~surge.deepspeed.mps_accelerator.MpsAccelerator` answer for their device."""

    _name = "abstract"
    _communication_backend_name: str | None = None

    def __init__(self) -> None:
        self._compile_backend = "inductor"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self._name!r}, backend={self._communication_backend_name!r})"

    # -- the device (each accelerator answers) --------------------------------------------------

    @abstractmethod
    def device_name(self, device_index: int | None = None) -> str:
        """"cuda" / "cuda:<i>", "cpu", "mps" / "mps:<i>"."""

    @abstractmethod
    def device(self, device_index: int | None = None) -> Any: ...

    @abstractmethod
    def set_device(self, device_index: int | str | torch.device) -> None: ...

    @abstractmethod
    def current_device(self) -> Any: ...

    @abstractmethod
    def current_device_name(self) -> str: ...

    @abstractmethod
    def device_count(self) -> int: ...

    @abstractmethod
    def synchronize(self, device_index: int | None = None) -> None: ...

    @abstractmethod
    def is_available(self) -> bool: ...

    @abstractmethod
    def set_rng_state(self, new_state: torch.Tensor, device_index: int | None = None) -> None: ...

    @abstractmethod
    def get_rng_state(self, device_index: int | None = None) -> torch.Tensor: ...

    @abstractmethod
    def manual_seed(self, seed: int) -> Any: ...

    @abstractmethod
    def manual_seed_all(self, seed: int) -> Any: ...

    @abstractmethod
    def initial_seed(self) -> int | None: ...

    @abstractmethod
    def default_generator(self, device_index: int) -> torch.Generator | None: ...

    @abstractmethod
    def stream(self, stream: Any) -> Any: ...

    @abstractmethod
    def current_stream(self, device_index: int | None = None) -> Any: ...

    @abstractmethod
    def default_stream(self, device_index: int | None = None) -> Any: ...

    @abstractmethod
    def empty_cache(self) -> None: ...

    @abstractmethod
    def memory_allocated(self, device_index: int | None = None) -> int | None: ...

    @abstractmethod
    def max_memory_allocated(self, device_index: int | None = None) -> int | None: ...

    @abstractmethod
    def reset_max_memory_allocated(self, device_index: int | None = None) -> None: ...

    @abstractmethod
    def memory_cached(self, device_index: int | None = None) -> int | None: ...

    @abstractmethod
    def max_memory_cached(self, device_index: int | None = None) -> int | None: ...

    @abstractmethod
    def reset_max_memory_cached(self, device_index: int | None = None) -> None: ...

    @abstractmethod
    def memory_stats(self, device_index: int | None = None) -> dict[str, Any] | None: ...

    @abstractmethod
    def reset_peak_memory_stats(self, device_index: int | None = None) -> None: ...

    @abstractmethod
    def memory_reserved(self, device_index: int | None = None) -> int | None: ...

    @abstractmethod
    def max_memory_reserved(self, device_index: int | None = None) -> int | None: ...

    @abstractmethod
    def total_memory(self, device_index: int | None = None) -> int | None: ...

    @abstractmethod
    def available_memory(self, device_index: int | None = None) -> int | None: ...

    @abstractmethod
    def is_bf16_supported(self) -> bool: ...

    @abstractmethod
    def is_fp16_supported(self) -> bool: ...

    @abstractmethod
    def supported_dtypes(self) -> list[torch.dtype]: ...

    @abstractmethod
    def amp(self) -> Any: ...

    # streams, events and the legacy tensor types: None where the device has none (MPS)
    Stream: Any = property(lambda self: None)
    Event: Any = property(lambda self: None)
    BFloat16Tensor: Any = property(lambda self: None)
    ByteTensor: Any = property(lambda self: None)
    DoubleTensor: Any = property(lambda self: None)
    FloatTensor: Any = property(lambda self: None)
    HalfTensor: Any = property(lambda self: None)
    IntTensor: Any = property(lambda self: None)
    LongTensor: Any = property(lambda self: None)

    # -- how the device relates to the host ---------------------------------------------------

    def is_synchronized_device(self) -> bool:
        """True where work runs synchronously with the host (the CPU)."""
        return False

    def use_host_timers(self) -> bool:
        return self.is_synchronized_device()

    def resolves_data_dependency(self) -> bool:
        return self.is_synchronized_device()

    def handles_memory_backpressure(self) -> bool:
        return self.is_synchronized_device()

    # -- RNG, misc ----------------------------------------------------------------------------

    def random(self) -> Any:
        return torch.random

    def communication_backend_name(self) -> str | None:
        """The torch.distributed backend for this device: "nccl", "gloo" (CPU), None (MPS)."""
        return self._communication_backend_name

    def is_triton_supported(self) -> bool:
        return False

    def range_push(self, msg: str) -> Any:
        return None

    def range_pop(self) -> Any:
        return None

    def lazy_call(self, callback: Callable[[], Any]) -> Any:
        return callback()

    def create_graph(self) -> Any:
        return None

    def capture_to_graph(self, graph: Any, pool: Any = None, stream: Any = None) -> Any:
        return contextlib.nullcontext()

    def replay_graph(self, graph: Any) -> None:
        return None

    # -- memory placement ---------------------------------------------------------------------

    def pin_memory(self, tensor: torch.Tensor, align_bytes: int = 1) -> torch.Tensor:
        return tensor.pin_memory()

    def is_pinned(self, tensor: torch.Tensor) -> bool:
        return tensor.is_pinned()

    def on_accelerator(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor`` lives on this accelerator's device type."""
        return tensor.device.type == self._name

    # -- DeepSpeed's compiled ops and build tooling -------------------------------------------

    def op_builder_dir(self) -> str:
        return "deepspeed.ops.op_builder"

    def create_op_builder(self, class_name: str) -> UnavailableOpBuilder:
        """A builder for ``class_name`` whose ``load()`` raises (surge has no compiled ops)."""
        return self.get_op_builder(class_name)()

    def get_op_builder(self, class_name: str) -> type[UnavailableOpBuilder]:
        """The builder class for ``class_name`` (see :class:`UnavailableOpBuilder`)."""
        return _builder_class(class_name)

    def build_extension(self) -> Any:
        from torch.utils.cpp_extension import BuildExtension

        return BuildExtension

    def export_envs(self) -> list[str]:
        return []

    def visible_devices_envs(self) -> list[str]:
        return ["CUDA_VISIBLE_DEVICES"]

    def set_visible_devices_envs(self, current_env: MutableMapping[str, str],
                                 local_accelerator_ids: Sequence[int]) -> None:
        for name in self.visible_devices_envs():
            current_env[name] = ",".join(map(str, local_accelerator_ids))

    def get_compile_backend(self) -> str:
        return self._compile_backend

    def set_compile_backend(self, backend: str) -> None:
        """Raises:
            ValueError: ``backend`` is not one of torch.compile's backends (they are listed)."""
        import torch._dynamo

        supported = torch._dynamo.list_backends(exclude_tags=())
        if backend not in supported:
            raise ValueError(f"{backend} not supported by {self._name}. Supported Backends are {supported}")
        self._compile_backend = backend


class NoStreams:
    """Streams for devices without them (CPU, MPS, as DeepSpeed's accelerators answer):
    ``stream(...)`` is a no-op context, the current and default stream None."""

    def stream(self, stream: Any) -> Any:
        return contextlib.nullcontext()

    def current_stream(self, device_index: int | None = None) -> None:
        return None

    def default_stream(self, device_index: int | None = None) -> None:
        return None


_CURRENT: list[DeepSpeedAccelerator] = []  # the process's accelerator once detected or set (DeepSpeed keeps one)


def _detect() -> str:
    """DeepSpeed's order: ``DS_ACCELERATOR``, then MPS, then CUDA with a visible GPU, then CPU."""
    from surge.config.environment import ds_accelerator_variable

    name = ds_accelerator_variable()
    if name is not None:
        if name not in SUPPORTED:
            raise ValueError(f"DS_ACCELERATOR={name!r} is not an accelerator surge runs on; use one of "
                             f"{', '.join(map(repr, SUPPORTED))} or unset it to detect the device.")
        return name
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    if torch.cuda.device_count() > 0 and torch.cuda.is_available():
        return "cuda"
    return "cpu"


def get_accelerator() -> DeepSpeedAccelerator:
    """The process's accelerator: detected on first use (see the module doc), then the same object.

    Raises:
        ValueError: ``DS_ACCELERATOR`` names an accelerator surge does not run on.
    """
    if not _CURRENT:
        name = _detect()
        if name == "cuda":
            from surge.deepspeed.cuda_accelerator import CudaAccelerator

            _CURRENT.append(CudaAccelerator())
        elif name == "mps":
            from surge.deepspeed.mps_accelerator import MpsAccelerator

            _CURRENT.append(MpsAccelerator())
        else:
            from surge.deepspeed.cpu_accelerator import CpuAccelerator

            _CURRENT.append(CpuAccelerator())
    return _CURRENT[0]


def set_accelerator(accel_obj: DeepSpeedAccelerator | None) -> None:
    """Use ``accel_obj`` from now on (None: detect again on the next :func:`get_accelerator`).

    Raises:
        TypeError: ``accel_obj`` is not a :class:`DeepSpeedAccelerator`.
    """
    if accel_obj is not None and not isinstance(accel_obj, DeepSpeedAccelerator):
        raise TypeError(
            "set_accelerator needs a DeepSpeedAccelerator (CudaAccelerator, CpuAccelerator or MpsAccelerator from "
            f"surge.deepspeed.cuda_accelerator / cpu_accelerator / mps_accelerator), got {type(accel_obj).__name__}.")
    _CURRENT.clear()
    if accel_obj is not None:
        _CURRENT.append(accel_obj)


def is_current_accelerator_supported() -> bool:
    return get_accelerator().device_name() in SUPPORTED
