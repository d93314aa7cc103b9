"""Several processes, each with a full replica: DistributedDataParallel."""

from __future__ import annotations

import contextlib
import weakref
from typing import Any

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from surge.process_group import register_exit_cleanup
from surge.strategies.base import Strategy
from surge.topology import DistributedType

_WRAPPED: weakref.WeakSet[DistributedDataParallel] = weakref.WeakSet()


def _release_reducers() -> None:
    """Drop the reducers of DDP modules still alive at exit (see [Note: tear down while
    Python is alive] in process_group.py). The modules are not used after the script ended."""
    for module in list(_WRAPPED):
        if hasattr(module, "reducer"):
            del module.reducer


class DDP(Strategy):
    """Wraps trainable models in ``DistributedDataParallel``; gradients are averaged by
    DDP's bucketed all-reduce during backward."""

    name = "ddp"

    @property
    def distributed_type(self) -> DistributedType:  # type: ignore[override]
        return self.topology.distributed_type

    def prepare_model(self, model: nn.Module, *, device_placement: bool, evaluation_mode: bool = False) -> nn.Module:
        model = super().prepare_model(model, device_placement=device_placement, evaluation_mode=evaluation_mode)
        if evaluation_mode or isinstance(model, DistributedDataParallel):
            return model
        if not any(p.requires_grad for p in model.parameters()):
            # Nothing to synchronise (a frozen teacher, an EMA copy): DDP would refuse it.
            return model
        device_ids = [self.device.index or 0] if self.device.type == "cuda" else None
        options = self.config.ddp.to_kwargs()
        if self.spec.zero_fills_grads and not options.get("static_graph"):
            # DeepSpeed runs whatever parameters the loss leaves unused (see [Note: unused
            # parameters] in optim.py). Costs one walk of the autograd graph per backward
            # (a static graph finds them once instead).
            options["find_unused_parameters"] = True
        wrapped = DistributedDataParallel(model, device_ids=device_ids, **options)
        self.config.ddp.register_comm_hook(wrapped)  # DistributedDataParallelKwargs(comm_hook=...)
        _WRAPPED.add(wrapped)
        register_exit_cleanup(_release_reducers)
        return wrapped

    def no_sync(self, model: nn.Module) -> contextlib.AbstractContextManager[Any]:
        model = getattr(model, "_orig_mod", model)  # a compiled DDP model
        if isinstance(model, DistributedDataParallel):
            return model.no_sync()
        return contextlib.nullcontext()
