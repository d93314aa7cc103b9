"""Keyword handlers: typed bundles of options passed through to PyTorch objects.

They keep the names HF Accelerate uses (``kwargs_handlers=[DistributedDataParallelKwargs(
find_unused_parameters=True)]``) so scripts move over with only the import changed.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from surge.config._validate import check_bool, check_choice, check_int
from surge.config.enums import DDPCommunicationHookType

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
    comm_hook: DDPCommunicationHookType | str = DDPCommunicationHookType.NO
    """A DDP communication hook registered on the wrapped model (torch's ``ddp_comm_hooks``):
    FP16 / BF16 compress the gradients for the all-reduce, POWER_SGD / BATCHED_POWER_SGD
    compress them to low rank. A ``DDPCommunicationHookType`` or its value ("fp16", ...)."""
    comm_wrapper: DDPCommunicationHookType | str = DDPCommunicationHookType.NO
    """FP16 / BF16: wrap ``comm_hook`` (PowerSGD) so it communicates in half precision."""
    comm_state_option: dict[str, Any] = field(default_factory=dict, hash=False)
    """Keyword arguments of torch's ``PowerSGDState`` (e.g. ``{"matrix_approximation_rank": 2}``),
    for the PowerSGD hooks."""

    _COMM_FIELDS = ("comm_hook", "comm_wrapper", "comm_state_option")

    def __post_init__(self) -> None:
        check_int("DistributedDataParallelKwargs.dim", self.dim, minimum=0)
        check_int("DistributedDataParallelKwargs.bucket_cap_mb", self.bucket_cap_mb, minimum=1)
        for name in ("broadcast_buffers", "find_unused_parameters", "check_reduction", "gradient_as_bucket_view",
                     "static_graph"):
            check_bool(f"DistributedDataParallelKwargs.{name}", getattr(self, name))
        hooks, wrappers = DDPCommunicationHookType.list(), ["no", "fp16", "bf16"]
        for name, allowed in (("comm_hook", hooks), ("comm_wrapper", wrappers)):
            value = getattr(self, name)
            # Accelerate's enum is not a str: its values are accepted here too (there, a string
            # silently registers no hook).
            text = value.value if isinstance(value, DDPCommunicationHookType) else value
            object.__setattr__(self, name, DDPCommunicationHookType(
                check_choice(f"DistributedDataParallelKwargs.{name}", text, allowed)))
        if not isinstance(self.comm_state_option, dict):
            raise TypeError(f"DistributedDataParallelKwargs.comm_state_option={self.comm_state_option!r} must be a "
                            "dict of PowerSGDState arguments, e.g. {'matrix_approximation_rank': 2}.")

    def to_kwargs(self) -> dict[str, Any]:
        """DistributedDataParallel's own arguments that differ from its defaults (the
        communication hook is registered separately, by :meth:`register_comm_hook`)."""
        return {k: v for k, v in super().to_kwargs().items() if k not in self._COMM_FIELDS}

    def register_comm_hook(self, model: Any) -> None:
        """Register ``comm_hook`` (wrapped by ``comm_wrapper``) on a DistributedDataParallel
        ``model``; nothing for ``DDPCommunicationHookType.NO``."""
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook

        kind = DDPCommunicationHookType
        hooks: dict[Any, Callable[..., Any]] = {
            kind.FP16: default_hooks.fp16_compress_hook, kind.BF16: default_hooks.bf16_compress_hook,
            kind.POWER_SGD: powerSGD_hook.powerSGD_hook, kind.BATCHED_POWER_SGD: powerSGD_hook.batched_powerSGD_hook,
        }
        wrappers: dict[Any, Callable[..., Any]] = {kind.FP16: default_hooks.fp16_compress_wrapper,
                                                   kind.BF16: default_hooks.bf16_compress_wrapper}
        hook = hooks.get(self.comm_hook)
        if hook is None:
            return
        wrapper = wrappers.get(self.comm_wrapper)
        if wrapper is not None:
            hook = wrapper(hook)
        state = (powerSGD_hook.PowerSGDState(None, **self.comm_state_option)
                 if self.comm_hook in (kind.POWER_SGD, kind.BATCHED_POWER_SGD) else None)
        model.register_comm_hook(state=state, hook=hook)


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


@dataclass(frozen=True)
class GradientAccumulationPlugin(KwargsHandler):
    """How gradient accumulation behaves (HF Accelerate's plugin, same fields):
    ``Accelerator(gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=4))``.
    Pass it or ``gradient_accumulation_steps``, not both.

    Example:
        >>> Accelerator(gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=2, sync_each_batch=True))
    """

    num_steps: int | None = None
    """Micro-batches per optimizer step (None: 1)."""
    adjust_scheduler: bool = True
    """Accepted for compatibility; the schedule is not changed by it. (In Accelerate 1.15 it
    only bumps a scheduler's internal ``_step_count`` when ``GradientState`` reads it as True,
    which it never does: the plugin hands over only non-default values and the default is
    True, so it reads False either way.)"""
    sync_with_dataloader: bool = True
    """End the accumulation cycle at a prepared dataloader's last batch (the next epoch starts a
    fresh cycle). False: cycles run on across epochs, every ``num_steps`` micro-batches."""
    sync_each_batch: bool = False
    """Synchronise gradients across processes on every micro-batch (no ``no_sync``): less
    memory under DDP, more communication. The optimizer still steps every ``num_steps``."""

    def __post_init__(self) -> None:
        if self.num_steps is not None:
            check_int("GradientAccumulationPlugin.num_steps", self.num_steps, minimum=1,
                      fix="Use 1 for no accumulation.")
        for name in ("adjust_scheduler", "sync_with_dataloader", "sync_each_batch"):
            check_bool(f"GradientAccumulationPlugin.{name}", getattr(self, name))


PROFILER_ACTIVITIES = ("cpu", "cuda", "xpu", "mtia", "hpu")
PROFILE_PATTERN_NAME = "profile_{suffix}.json"  # Accelerate's trace file name, one per process


@dataclass(frozen=True)
class ProfileKwargs(KwargsHandler):
    """Settings of ``torch.profiler.profile`` for :meth:`Accelerator.profile` (HF Accelerate's
    names; also accepted in ``kwargs_handlers``).

    Example:
        >>> Accelerator(kwargs_handlers=[ProfileKwargs(activities=["cpu"], output_trace_dir="trace")])
    """

    activities: list[str] | None = field(default=None, hash=False)
    """Activity groups: "cpu", "cuda", "xpu", "mtia", "hpu" (None: torch's default)."""
    schedule_option: dict[str, int] | None = field(default=None, hash=False)
    """``torch.profiler.schedule`` arguments: wait, warmup, active, repeat, skip_first."""
    on_trace_ready: Callable[..., Any] | None = None
    """Called with the profiler each time the schedule completes an active span."""
    record_shapes: bool = False
    """Record operators' input shapes."""
    profile_memory: bool = False
    """Track tensor allocations and frees."""
    with_stack: bool = False
    """Record the source file and line of operators."""
    with_flops: bool = False
    """Estimate the FLOPs of matrix products and convolutions."""
    with_modules: bool = False
    """Record the module hierarchy of operators."""
    output_trace_dir: str | os.PathLike[str] | None = None
    """Write each process's Chrome trace here as ``profile_<process index>.json`` at the end
    of the ``profile()`` block (None: no file)."""

    def __post_init__(self) -> None:
        if self.activities is not None:
            if not isinstance(self.activities, (list, tuple)):
                raise TypeError(f"ProfileKwargs.activities={self.activities!r} must be a list such as ['cpu', 'cuda'].")
            for activity in self.activities:
                check_choice("ProfileKwargs.activities", activity, PROFILER_ACTIVITIES)
        if self.schedule_option is not None and not isinstance(self.schedule_option, dict):
            raise TypeError(f"ProfileKwargs.schedule_option={self.schedule_option!r} must be a dict such as "
                            "{'wait': 1, 'warmup': 1, 'active': 2}.")
        for name in ("record_shapes", "profile_memory", "with_stack", "with_flops", "with_modules"):
            check_bool(f"ProfileKwargs.{name}", getattr(self, name))
        if self.output_trace_dir is not None and not isinstance(self.output_trace_dir, (str, os.PathLike)):
            raise TypeError(f"ProfileKwargs.output_trace_dir={self.output_trace_dir!r} must be a path or None.")

    def build(self) -> Any:
        """A ``torch.profiler.profile`` with these settings (use it as a ``with`` block).

        Raises:
            ValueError: an activity this machine's torch cannot profile.
        """
        import torch

        available = {"cpu": torch.profiler.ProfilerActivity.CPU}
        for name in ("cuda", "xpu", "mtia", "hpu"):
            activity = getattr(torch.profiler.ProfilerActivity, name.upper(), None)
            backend = getattr(torch, name, None)
            if activity is not None and backend is not None and getattr(backend, "is_available", lambda: False)():
                available[name] = activity
        activities = None
        if self.activities is not None:
            missing = [a for a in self.activities if a not in available]
            if missing:
                raise ValueError(f"ProfileKwargs.activities={list(self.activities)!r}: {missing} cannot be profiled "
                                 f"here; this machine has {sorted(available)}.")
            activities = [available[a] for a in self.activities]
        schedule = torch.profiler.schedule(**self.schedule_option) if self.schedule_option is not None else None
        return torch.profiler.profile(
            activities=activities, schedule=schedule, on_trace_ready=self.on_trace_ready,
            record_shapes=self.record_shapes, profile_memory=self.profile_memory, with_stack=self.with_stack,
            with_flops=self.with_flops, with_modules=self.with_modules,
        )


@dataclass
class AORecipeKwargs(KwargsHandler):
    """fp8 training with torchao, configured (``kwargs_handlers=[AORecipeKwargs(...)]`` with
    ``mixed_precision="fp8"``), as Accelerate's: prepared models are converted with
    ``config`` and ``module_filter_func``, whose default skips the model's first and last
    linear layers and those whose dimensions are not multiples of 16 (without this handler
    surge converts every linear layer whose dimensions are multiples of 16).

    Raises:
        ImportError: torchao is not installed (with the pip command).
    """

    config: Any = None
    """``torchao.float8.Float8LinearConfig``; None builds one from the two fields below."""
    module_filter_func: Callable[..., bool] | None = None
    """``(module, fully qualified name) -> bool``: which layers to convert."""
    pad_inner_dim: bool | None = None
    """Pad matrix dimensions to multiples of 16 (None: ``ACCELERATE_FP8_PAD_INNER_DIM``, else True)."""
    enable_fsdp_float8_all_gather: bool | None = None
    """All-gather FSDP parameters in fp8 (None: ``ACCELERATE_FP8_ENABLE_FSDP_FLOAT8_ALL_GATHER``, else True)."""

    def __post_init__(self) -> None:
        from surge.config.env_vars import parse_flag_from_env

        if self.config is not None:
            return
        try:
            from torchao.float8 import Float8LinearConfig
        except ImportError:
            raise ImportError("AORecipeKwargs configures torchao's fp8 training, and torchao is not installed: "
                              "pip install torchao") from None
        if self.pad_inner_dim is None:
            self.pad_inner_dim = parse_flag_from_env("ACCELERATE_FP8_PAD_INNER_DIM", default=True)
        if self.enable_fsdp_float8_all_gather is None:
            self.enable_fsdp_float8_all_gather = parse_flag_from_env("ACCELERATE_FP8_ENABLE_FSDP_FLOAT8_ALL_GATHER",
                                                                     default=True)
        self.config = Float8LinearConfig(pad_inner_dim=self.pad_inner_dim,
                                         enable_fsdp_float8_all_gather=self.enable_fsdp_float8_all_gather)
