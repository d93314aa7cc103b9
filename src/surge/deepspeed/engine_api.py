"""DeepSpeed's engine accessors, and its attribute forwarding to the wrapped module.

``DeepSpeedEngine`` answers many questions scripts ask of it (``fp16_enabled()``,
``get_lr()``, ``dp_world_size``, ``steps_per_print()``, ...), most of them read from the
config. :class:`EngineAPI` is the base of :class:`~surge.deepspeed.engine.Engine` that
holds them, with DeepSpeed's names and return values, so engine.py keeps the training
step and the checkpoints.

Anything else a script reads from the engine is looked up on the model, as
``DeepSpeedEngine.__getattr__`` does: ``engine.generate(...)`` (DeepSpeed-Chat),
``engine.gradient_checkpointing_enable()``, a custom method of the model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from surge.optim import AcceleratedOptimizer

if TYPE_CHECKING:
    from surge.accelerator import Accelerator
    from surge.deepspeed.monitor import Monitor


class DeepSpeedOptimizer(AcceleratedOptimizer):
    """The optimizer ``surge.initialize`` returns: the prepared optimizer, with the names
    DeepSpeed's ZeRO and fp16 optimizers add (``cur_scale``, ``loss_scale``, ``overflow``)."""

    @property
    def cur_scale(self) -> float:
        """The fp16 loss scale; 1.0 without fp16 (as DeepSpeed's ZeRO optimizers report)."""
        return self.precision.loss_scale

    @property
    def loss_scale(self) -> float:
        """``cur_scale`` under its other DeepSpeed name."""
        return self.precision.loss_scale

    @property
    def overflow(self) -> bool:
        """True when the last boundary step was skipped (fp16 overflow)."""
        return self.step_was_skipped


_DEEPSPEED_OPTIMIZERS = ("adagrad", "adam", "adamw", "lamb", "onebitadam", "onebitlamb", "zerooneadam", "muadam",
                         "muadamw", "musgd", "lion")
"""The optimizer types DeepSpeed names in lower case (``runtime/config.py``'s DEEPSPEED_OPTIMIZERS)."""


def _section(config: dict[str, Any], name: str) -> dict[str, Any]:
    value = config.get(name)
    return value if isinstance(value, dict) else {}


class EngineAPI(nn.Module):
    """DeepSpeed's accessors on the engine (see the module docstring). The engine sets
    the attributes annotated here."""

    module: nn.Module
    accelerator: Accelerator
    optimizer: Any
    lr_scheduler: Any
    config: dict[str, Any]
    monitor: Monitor
    _train_batch_size: int | None
    _micro_batch_size: int | None
    _zero_stage: int
    _client_optimizer: bool

    # -- anything else is the model's -------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        """An attribute the engine does not have is the wrapped model's (DeepSpeed's rule):
        ``engine.generate(...)``, ``engine.gradient_checkpointing_enable()``."""
        try:
            return super().__getattr__(name)  # nn.Module's: parameters, buffers, submodules
        except AttributeError:
            pass
        module = self.__dict__.get("_modules", {}).get("module")
        if module is None or (name.startswith("__") and name.endswith("__")):
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")
        try:
            return getattr(module, name)
        except AttributeError:
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}', and neither has its "
                                 f"module (a {type(module).__name__})") from None

    # -- where this process sits ------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def local_rank(self) -> int:
        return self.accelerator.local_process_index

    @property
    def global_rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes

    @property
    def dp_world_size(self) -> int:
        """Data-parallel processes: all of them (surge runs no model parallelism)."""
        return self.accelerator.num_processes

    @property
    def seq_dp_world_size(self) -> int:
        return self.accelerator.num_processes

    @property
    def mp_world_size(self) -> int:
        """Model-parallel processes: 1."""
        return 1

    # -- the config, as DeepSpeed reports it ------------------------------------------------

    def train_batch_size(self) -> int | None:
        return self._train_batch_size

    def train_micro_batch_size_per_gpu(self) -> int | None:
        return self._micro_batch_size

    def gradient_accumulation_steps(self) -> int:
        return self.accelerator.gradient_accumulation_steps

    def zero_optimization_stage(self) -> int:
        return self._zero_stage

    def zero_optimization(self) -> bool:
        return self._zero_stage > 0

    def zero_optimization_partition_gradients(self) -> bool:
        return self._zero_stage >= 2

    def zero_optimization_partition_weights(self) -> bool:
        return self._zero_stage >= 3

    def zero_offload_optimizer(self) -> bool:
        return _section(_section(self.config, "zero_optimization"), "offload_optimizer").get("device") == "cpu"

    def zero_offload_param(self) -> bool:
        return _section(_section(self.config, "zero_optimization"), "offload_param").get("device") == "cpu"

    def zero_cpu_offload(self) -> bool:
        return self.zero_offload_optimizer()

    def fp16_enabled(self) -> bool:
        return self.accelerator.precision.export_dtype is torch.float16

    def bfloat16_enabled(self) -> bool:
        return self.accelerator.precision.export_dtype is torch.bfloat16

    bf16_enabled = bfloat16_enabled  # surge's earlier name

    def amp_enabled(self) -> bool:
        """Apex AMP: never (surge's fp16 is torch's autocast + loss scaling)."""
        return False

    def gradient_clipping(self) -> float:
        value = self.config.get("gradient_clipping", 0.0)
        return float(value) if isinstance(value, (int, float)) else 0.0

    def steps_per_print(self) -> int | None:
        """The config's ``steps_per_print`` (None when absent, as in DeepSpeed): every so
        many optimizer steps the main process logs step, lr and momentum at INFO."""
        value = self.config.get("steps_per_print")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def wall_clock_breakdown(self) -> bool:
        """The config's ``wall_clock_breakdown`` (surge keeps no per-phase timers)."""
        return self.config.get("wall_clock_breakdown") is True

    def memory_breakdown(self) -> bool:
        return self.config.get("memory_breakdown") is True

    def dataloader_drop_last(self) -> bool:
        return self.config.get("dataloader_drop_last") is True

    def dynamic_loss_scale(self) -> bool:
        """True for fp16 with ``loss_scale`` 0 (dynamic scaling)."""
        return self.fp16_enabled() and self.loss_scale() == 0

    def loss_scale(self) -> float:
        """The config's static loss scale (DeepSpeed's meaning): ``fp16.loss_scale``, 0 for
        dynamic scaling; 1.0 under bf16; 0 otherwise. The scale in use is
        ``engine.optimizer.cur_scale`` (or :meth:`get_loss_scale`)."""
        if self.fp16_enabled():
            value = _section(self.config, "fp16").get("loss_scale", 0)
            return float(value) if isinstance(value, (int, float)) else 0.0
        return 1.0 if self.bfloat16_enabled() else 0.0

    def initial_dynamic_scale(self) -> float:
        power = _section(self.config, "fp16").get("initial_scale_power", 16) if self.fp16_enabled() else (
            0 if self.bfloat16_enabled() else 16)
        return float(2 ** (power if isinstance(power, int) else 16))

    def optimizer_name(self) -> str | None:
        """The passed optimizer's class name, else the config's optimizer ``type``, lowercased
        when it names one of DeepSpeed's own optimizers ("Adam" -> "adam"), as DeepSpeed does."""
        if self._client_optimizer and self.optimizer is not None:
            return type(getattr(self.optimizer, "original", self.optimizer)).__name__
        opt = _section(self.config, "optimizer")
        if "type" not in opt:
            return None
        name = str(opt["type"])
        return name.lower() if name.lower() in _DEEPSPEED_OPTIMIZERS else name

    def optimizer_params(self) -> dict[str, Any] | None:
        params = _section(self.config, "optimizer").get("params")
        return params if isinstance(params, dict) else None

    def scheduler_name(self) -> str | None:
        sched = _section(self.config, "scheduler")
        return str(sched["type"]) if "type" in sched else None

    def scheduler_params(self) -> dict[str, Any] | None:
        params = _section(self.config, "scheduler").get("params")
        return params if isinstance(params, dict) else None

    # -- the optimizer's state --------------------------------------------------------------

    def _group_values(self, key: str) -> list[Any]:
        if self.optimizer is None:
            return []
        return [group.get(key, 0.0) for group in self.optimizer.param_groups]

    def get_lr(self) -> list[float]:
        """Each param group's learning rate ([] without an optimizer)."""
        return self._group_values("lr")

    def get_type(self) -> list[Any]:
        return self._group_values("type")

    def get_mom(self) -> list[Any]:
        """Each group's ``momentum`` (SGD, RMSprop) or ``betas`` (the others)."""
        return self._group_values("momentum" if self.optimizer_name() in ("SGD", "RMSprop") else "betas")

    def get_global_grad_norm(self) -> float | None:
        """The norm of all gradients at the last optimizer step, before clipping (None
        before the first step)."""
        norm = getattr(self.optimizer, "last_grad_norm", None)
        return None if norm is None else float(norm)

    def get_loss_scale(self) -> float:
        """The loss scale in use (fp16's dynamic scale; 1.0 otherwise); surge's name for
        DeepSpeed's ``engine.optimizer.cur_scale``."""
        return self.accelerator.precision.loss_scale

    @property
    def cur_scale(self) -> float:
        return self.accelerator.precision.loss_scale

    def was_step_applied(self) -> bool:
        """False when the last boundary step was skipped (fp16 overflow)."""
        return self.optimizer is not None and not self.optimizer.step_was_skipped

    def destroy(self) -> None:
        """Release what the engine started: the monitor's trackers are flushed and closed,
        and an optimizer with a ``destroy`` method (DeepSpeed's) is destroyed."""
        self.monitor.finish()
        destroy = getattr(getattr(self.optimizer, "optimizer", None), "destroy", None)
        if callable(destroy):
            destroy()

