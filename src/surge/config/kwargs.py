"""Keyword handlers: typed bundles of options passed through to PyTorch objects.

They keep the names HF Accelerate uses (``kwargs_handlers=[DistributedDataParallelKwargs(
find_unused_parameters=True)]``) so scripts move over with only the import changed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from surge.config._validate import check_bool, check_choice, check_int

BACKENDS = ("nccl", "gloo", "mpi")


class KwargsHandler:
    """Base for option bundles. ``to_kwargs()`` returns only the values that differ from
    the defaults, so PyTorch's own defaults stay in charge of everything not set."""

    def to_kwargs(self) -> dict[str, Any]:
        defaults = type(self)()
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
            if getattr(self, f.name) != getattr(defaults, f.name)
        }


@dataclass(frozen=True)
class DistributedDataParallelKwargs(KwargsHandler):
    """Options for ``torch.nn.parallel.DistributedDataParallel`` (same names and meaning).

    Example:
        >>> Accelerator(kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    """

    dim: int = 0
    """Dimension along which DDP scatters inputs (only used with several devices per process)."""
    broadcast_buffers: bool = True
    """Broadcast buffers (e.g. BatchNorm statistics) from rank 0 at every forward."""
    bucket_cap_mb: int = 25
    """Gradient bucket size in MiB; bigger buckets mean fewer, larger all-reduces."""
    find_unused_parameters: bool = False
    """Walk the autograd graph each step to find parameters with no gradient (costs time;
    needed when some parameters are skipped by the forward)."""
    check_reduction: bool = False
    """Deprecated in PyTorch; accepted for compatibility."""
    gradient_as_bucket_view: bool = False
    """Let ``.grad`` alias the communication buckets: saves one gradient copy of memory."""
    static_graph: bool = False
    """Promise that the set of used parameters is the same every step (enables optimisations)."""

    def __post_init__(self) -> None:
        check_int("DistributedDataParallelKwargs.dim", self.dim, minimum=0)
        check_int("DistributedDataParallelKwargs.bucket_cap_mb", self.bucket_cap_mb, minimum=1)
        for name in ("broadcast_buffers", "find_unused_parameters", "check_reduction", "gradient_as_bucket_view",
                     "static_graph"):
            check_bool(f"DistributedDataParallelKwargs.{name}", getattr(self, name))


@dataclass(frozen=True)
class InitProcessGroupKwargs(KwargsHandler):
    """Options for ``torch.distributed.init_process_group``.

    Example:
        >>> Accelerator(kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(minutes=30))])
    """

    backend: str | None = None
    """"nccl", "gloo" or "mpi"; None picks nccl for CUDA devices and gloo for CPU."""
    init_method: str | None = None
    """Rendezvous URL; None uses the launcher's MASTER_ADDR/MASTER_PORT."""
    timeout: timedelta | None = None
    """How long a collective may wait for the other ranks before failing; None = 10 minutes."""

    def __post_init__(self) -> None:
        if self.backend is not None:
            object.__setattr__(self, "backend", check_choice("InitProcessGroupKwargs.backend", self.backend, BACKENDS))
        if self.timeout is not None:
            object.__setattr__(self, "timeout", as_timeout("InitProcessGroupKwargs.timeout", self.timeout))
        if self.init_method is not None and not isinstance(self.init_method, str):
            raise TypeError(
                f"InitProcessGroupKwargs.init_method={self.init_method!r} must be a URL string such as "
                "'tcp://10.0.0.1:29500' or 'env://'."
            )


def as_timeout(name: str, value: Any) -> timedelta:
    """Accept a ``timedelta`` or a number of seconds; return a positive ``timedelta``."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise TypeError(f"{name}={value!r} must be a datetime.timedelta or a number of seconds.")
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"{name}={value!r} must be a positive, finite duration, e.g. timedelta(minutes=10).")
    return timedelta(seconds=seconds)


@dataclass(frozen=True)
class AutocastKwargs(KwargsHandler):
    """Options for the autocast region mixed precision puts around the model's forward.

    Example:
        >>> Accelerator(mixed_precision="bf16", kwargs_handlers=[AutocastKwargs(cache_enabled=True)])
    """

    enabled: bool = True
    """False runs the forward in full precision even with mixed_precision set."""
    cache_enabled: bool | None = None
    """Cache low-precision weight casts inside one autocast region (torch's default when None)."""
    convert_outputs_to_fp32: bool = True
    """Return the prepared model's floating outputs in fp32 (set False to keep them in half
    precision and save the memory of an fp32 copy of e.g. large logits)."""

    def __post_init__(self) -> None:
        check_bool("AutocastKwargs.enabled", self.enabled)
        check_bool("AutocastKwargs.convert_outputs_to_fp32", self.convert_outputs_to_fp32)
        if self.cache_enabled is not None:
            check_bool("AutocastKwargs.cache_enabled", self.cache_enabled)


@dataclass(frozen=True)
class GradScalerKwargs(KwargsHandler):
    """Options for fp16's dynamic loss scaler (``torch.amp.GradScaler``, same names).

    Example:
        >>> Accelerator(mixed_precision="fp16", kwargs_handlers=[GradScalerKwargs(init_scale=1024)])
    """

    init_scale: float = 65536.0
    """Loss scale at the start."""
    growth_factor: float = 2.0
    """Multiply the scale by this after ``growth_interval`` steps without overflow."""
    backoff_factor: float = 0.5
    """Multiply the scale by this when a step overflows (that step is skipped)."""
    growth_interval: int = 2000
    """Overflow-free steps before the scale grows."""
    enabled: bool = True
    """False turns loss scaling off (fp16 autocast alone)."""

    def __post_init__(self) -> None:
        from surge.config._validate import check_positive_float

        check_positive_float("GradScalerKwargs.init_scale", self.init_scale)
        if check_positive_float("GradScalerKwargs.growth_factor", self.growth_factor) <= 1.0:
            raise ValueError(f"GradScalerKwargs.growth_factor={self.growth_factor!r} must be > 1.")
        if not 0 < check_positive_float("GradScalerKwargs.backoff_factor", self.backoff_factor) < 1:
            raise ValueError(f"GradScalerKwargs.backoff_factor={self.backoff_factor!r} must be between 0 and 1.")
        check_int("GradScalerKwargs.growth_interval", self.growth_interval, minimum=1)
        check_bool("GradScalerKwargs.enabled", self.enabled)


@dataclass(frozen=True)
class LossScaleSettings:
    """DeepSpeed's fp16 loss scaling (the ``fp16`` section), see precision/fp16.py."""

    initial_scale: float = 2.0**16
    """``2 ** initial_scale_power``, or the fixed ``loss_scale``."""
    window: int = 1000
    """``loss_scale_window``: overflow-free steps before the scale doubles."""
    hysteresis: int = 2
    """Overflows tolerated before the scale halves (the delayed shift)."""
    consecutive_hysteresis: bool = False
    """Refill the hysteresis after every overflow-free step, not only when the scale grows."""
    min_scale: float = 1.0
    """``min_loss_scale``: the scale never halves below this."""
    static: bool = False
    """``loss_scale`` > 0: the scale never changes (overflowing steps are still skipped)."""
