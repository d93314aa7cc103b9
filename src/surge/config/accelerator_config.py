"""The settings an :class:`~surge.Accelerator` runs with, as one frozen, validated value."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal, get_args

from surge.config._validate import check_bool, check_choice, check_int
from surge.config.dataloader import DataLoaderConfiguration
from surge.config.kwargs import (
    AORecipeKwargs,
    AutocastKwargs,
    DistributedDataParallelKwargs,
    GradScalerKwargs,
    InitProcessGroupKwargs,
    LossScaleSettings,
    ProfileKwargs,
    as_timeout,
)

MixedPrecision = Literal["no", "fp16", "bf16", "fp8"]
MIXED_PRECISION_CHOICES: tuple[str, ...] = get_args(MixedPrecision)
SchedulerSteps = Literal["num_processes", "once"]
SCHEDULER_STEPS_CHOICES: tuple[str, ...] = get_args(SchedulerSteps)
AccumulationDivisor = Literal["cycle", "num_steps"]
ACCUMULATION_DIVISOR_CHOICES: tuple[str, ...] = get_args(AccumulationDivisor)

DEFAULT_TIMEOUT = timedelta(minutes=10)


@dataclass(frozen=True)
class AcceleratorConfig:
    """Everything an Accelerator needs to know besides the job topology.

    Validation happens here, before any process group or device is touched, so a bad
    value never leaves half-built state behind (see the "several Accelerators" note in
    accelerator.py).
    """

    mixed_precision: MixedPrecision = "no"
    """"no" (fp32), "fp16" (autocast + loss scaling), "bf16" (autocast) or "fp8" (torchao, recent GPUs)."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step; gradients are synchronised only on the last one."""
    cpu: bool = False
    """Run on the CPU even when a GPU is present."""
    device_placement: bool = True
    """Move prepared models and batches to ``accelerator.device``."""
    split_batches: bool = False
    """True: each loader batch is split across processes (the batch size is global). False:
    each process gets whole batches (the global batch is batch_size x num_processes)."""
    even_batches: bool = True
    """Repeat samples from the start so every process sees the same number of batches."""
    dataloader: DataLoaderConfiguration = field(default_factory=DataLoaderConfiguration)
    """The prepared loaders' settings; its ``split_batches`` / ``even_batches`` follow the
    two fields above."""
    step_scheduler_with_optimizer: bool = True
    """Prepared schedulers step only when the optimizer really stepped; False: every call steps."""
    scheduler_steps: SchedulerSteps = "num_processes"
    """How often a prepared scheduler advances per optimizer step: "num_processes" (HF
    Accelerate's rule: once per process, or once with ``split_batches``) or "once" (surge's
    rule: a schedule measured in optimizer steps ends where they end on any number of
    processes). See [Note: the scheduler rule] in optim.py."""
    sync_each_batch: bool = False
    """Synchronise gradients on every micro-batch of an accumulation cycle (no ``no_sync``);
    ``GradientAccumulationPlugin(sync_each_batch=True)``."""
    sync_with_dataloader: bool = True
    """A prepared dataloader's last batch ends the accumulation cycle (``GradientAccumulationPlugin``)."""
    adjust_scheduler: bool = True
    """``GradientAccumulationPlugin(adjust_scheduler=...)``, kept for reading back; it changes nothing."""
    accumulation_divisor: AccumulationDivisor = "cycle"
    """What ``backward`` divides a micro-batch's loss by: "cycle" (the number of micro-batches
    in its accumulation cycle, so a last cycle cut short by the end of the data is the true mean
    of the micro-batches it has) or "num_steps" (always ``gradient_accumulation_steps``, HF
    Accelerate's rule: a short cycle's gradient comes out smaller). See [Note: the short cycle]
    in accumulation.py."""
    profile: ProfileKwargs | None = None
    """``ProfileKwargs`` passed in ``kwargs_handlers``: the default of ``Accelerator.profile()``."""
    fp8_recipe: AORecipeKwargs | None = field(default=None, hash=False)
    """``AORecipeKwargs`` passed in ``kwargs_handlers``: how fp8 converts the models."""
    ddp: DistributedDataParallelKwargs = field(default_factory=DistributedDataParallelKwargs)
    """Options passed to DistributedDataParallel."""
    autocast: AutocastKwargs = field(default_factory=AutocastKwargs)
    """Options for the autocast region of fp16 / bf16 / fp8."""
    scaler: GradScalerKwargs | LossScaleSettings = field(default_factory=GradScalerKwargs)
    """Options for fp16's dynamic loss scaler (``LossScaleSettings``: DeepSpeed's rule)."""
    backend: str | None = None
    """Process-group backend; None picks nccl for CUDA, gloo for CPU."""
    init_method: str | None = None
    """Rendezvous URL; None uses the launcher's variables."""
    timeout: timedelta | None = None
    """How long any collective may wait for the other ranks before it fails; None means
    ``DEFAULT_TIMEOUT`` (10 minutes) for a group this Accelerator starts."""

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(
            self,
            "mixed_precision",
            check_choice("mixed_precision", self.mixed_precision, MIXED_PRECISION_CHOICES),
        )
        set_(self, "scheduler_steps", check_choice("scheduler_steps", self.scheduler_steps, SCHEDULER_STEPS_CHOICES))
        set_(self, "accumulation_divisor", check_choice("accumulation_divisor", self.accumulation_divisor,
                                                        ACCUMULATION_DIVISOR_CHOICES))
        check_int(
            "gradient_accumulation_steps",
            self.gradient_accumulation_steps,
            minimum=1,
            fix="Use 1 for no accumulation.",
        )
        for name in ("cpu", "device_placement", "split_batches", "even_batches", "step_scheduler_with_optimizer",
                     "sync_each_batch", "sync_with_dataloader", "adjust_scheduler"):
            check_bool(name, getattr(self, name))
        for name, kinds in (("ddp", (DistributedDataParallelKwargs,)), ("autocast", (AutocastKwargs,)),
                            ("scaler", (GradScalerKwargs, LossScaleSettings))):
            if not isinstance(getattr(self, name), kinds):
                raise TypeError(f"{name}={getattr(self, name)!r} must be a {kinds[0].__name__}.")
        if self.timeout is not None:
            set_(self, "timeout", as_timeout("timeout", self.timeout))
        if not isinstance(self.dataloader, DataLoaderConfiguration):
            raise TypeError(f"dataloader={self.dataloader!r} must be a DataLoaderConfiguration.")
        if (self.dataloader.split_batches, self.dataloader.even_batches) != (self.split_batches, self.even_batches):
            set_(self, "dataloader", dataclasses.replace(self.dataloader, split_batches=self.split_batches,
                                                         even_batches=self.even_batches))
        if self.fp8_recipe is not None and self.mixed_precision != "fp8":
            raise ValueError(f"kwargs_handlers has an AORecipeKwargs (an fp8 recipe) but mixed_precision="
                             f"{self.mixed_precision!r}; set mixed_precision='fp8', or drop the handler.")

    @classmethod
    def from_handlers(cls, handlers: list[Any] | tuple[Any, ...] | None, **values: Any) -> AcceleratorConfig:
        """Build a config from constructor values plus HF-style ``kwargs_handlers``.

        Raises:
            TypeError: a handler is not one surge knows, or the list is not a list.
            ValueError: the same handler type is given twice.
        """
        if handlers is None:
            handlers = []
        if not isinstance(handlers, (list, tuple)):
            raise TypeError(f"kwargs_handlers={handlers!r} must be a list of handler objects.")
        seen: dict[type, Any] = {}
        known = (DistributedDataParallelKwargs, InitProcessGroupKwargs, AutocastKwargs, GradScalerKwargs, ProfileKwargs,
                 AORecipeKwargs)
        for handler in handlers:
            if not isinstance(handler, known):
                raise TypeError(
                    f"kwargs_handlers contains {handler!r}; supported handlers are "
                    + ", ".join(k.__name__ for k in known)
                    + "."
                )
            if type(handler) in seen:
                raise ValueError(f"kwargs_handlers has two {type(handler).__name__} objects; pass one.")
            seen[type(handler)] = handler
        for key, kind in (("ddp", DistributedDataParallelKwargs), ("autocast", AutocastKwargs),
                          ("scaler", GradScalerKwargs)):
            if kind in seen:
                values[key] = seen[kind]
        if ProfileKwargs in seen:
            values["profile"] = seen[ProfileKwargs]
        if AORecipeKwargs in seen:
            values["fp8_recipe"] = seen[AORecipeKwargs]
        pg = seen.get(InitProcessGroupKwargs)
        if pg is not None:
            values.update(backend=pg.backend, init_method=pg.init_method)
            if pg.timeout is not None:
                values["timeout"] = pg.timeout
        return cls(**values)
