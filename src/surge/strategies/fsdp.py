"""ZeRO-2 / ZeRO-3 (SHARD_GRAD_OP / FULL_SHARD) on PyTorch's FSDP2 ``fully_shard``.

Each transformer block is sharded on its own, then the root: a block's parameters are
gathered just before it runs and (ZeRO-3) freed right after, gradients are
reduce-scattered to their owners, and each rank keeps and steps only its shard of the
parameters and optimizer state.

[Note: the optimizer follows the sharded parameters]
``fully_shard`` replaces every parameter with a new DTensor parameter. Users build their
optimizer from the original parameters before ``prepare``; ``prepare_optimizer``
rebinds its groups to the new parameters by name, keeping each group's settings.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from surge.state import DistributedType
from surge.strategies.base import Strategy


def find_blocks(model: nn.Module, class_names: list[str] | None = None) -> list[nn.Module]:
    """The modules to shard one by one, outermost first, never nested in each other.

    Taken from ``class_names`` when given, else from transformers'
    ``_no_split_modules``, else the children of any ``nn.ModuleList`` whose entries
    repeat one class (the usual stack of transformer layers).
    """
    if class_names is not None and not class_names:
        return []  # NO_WRAP: the root alone
    names = set(class_names or getattr(model, "_no_split_modules", None) or [])
    if names:
        chosen = [m for m in model.modules() if type(m).__name__ in names and m is not model]
        if class_names and not chosen:
            raise ValueError(
                f"transformer_layer_cls_to_wrap={class_names} matches no submodule of {type(model).__name__}; "
                f"its submodule classes include {sorted({type(m).__name__ for m in model.modules()})[:12]}."
            )
    else:
        chosen = []
        for m in model.modules():
            if isinstance(m, nn.ModuleList) and len(m) > 1:
                kinds = Counter(type(c) for c in m)
                if len(kinds) == 1:
                    chosen.extend(m)
    outer: list[nn.Module] = []
    for m in chosen:  # drop blocks nested inside another chosen block
        if not any(m is not o and any(m is d for d in o.modules()) for o in chosen):
            outer.append(m)
    return outer


class CheckpointedForward:
    """Replaces a block's ``forward``: its activations are recomputed in backward instead
    of stored (non-reentrant ``torch.utils.checkpoint``). Set as an instance attribute,
    like the autocast forward, so the block's class and state dict keys are unchanged."""

    def __init__(self, forward: Any) -> None:
        self.__wrapped__ = forward

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from torch.utils.checkpoint import checkpoint

        return checkpoint(self.__wrapped__, *args, use_reentrant=False, **kwargs)


def checkpoint_block(block: nn.Module) -> None:
    """Recompute ``block``'s activations in backward (idempotent)."""
    if not isinstance(block.__dict__.get("forward"), CheckpointedForward):
        block.forward = CheckpointedForward(block.forward)


class FSDP(Strategy):
    """Sharded data parallelism on FSDP2."""

    name = "fsdp"

    def __init__(self, topology: Any, config: Any, precision: Any, *, reshard_after_forward: bool,
                 layer_classes: list[str] | None = None, distributed_type: DistributedType = DistributedType.FSDP,
                 offload_params: bool = False, activation_checkpointing: bool = False) -> None:
        super().__init__(topology, config, precision)
        self.reshard_after_forward = reshard_after_forward
        self.layer_classes = layer_classes
        self.offload_params = offload_params
        self.activation_checkpointing = activation_checkpointing
        self._distributed_type = distributed_type
        self._param_map: dict[int, nn.Parameter] = {}

    @property
    def distributed_type(self) -> DistributedType:  # type: ignore[override]
        return self._distributed_type

    def _mp_policy(self) -> Any:
        from torch.distributed.fsdp import MixedPrecisionPolicy

        dtype = self.precision.autocast_dtype if self.precision.name == "bf16" else None
        # Compute in bf16 from gathered bf16 parameters, reduce gradients in fp32.
        return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32 if dtype else None)

    def prepare_model(self, model: nn.Module, *, device_placement: bool, evaluation_mode: bool = False) -> nn.Module:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import FSDPModule, fully_shard

        if isinstance(model, FSDPModule) or evaluation_mode:
            return super().prepare_model(model, device_placement=device_placement) if evaluation_mode else model
        if self.precision.name == "fp16":
            raise ValueError("mixed_precision='fp16' with ZeRO-2/3 sharding is not supported yet; use 'bf16' "
                             "(no loss scaling needed) or 'no'.")
        names = {id(p): name for name, p in model.named_parameters(remove_duplicate=False)}
        if device_placement:
            model.to(self.device)
        mesh = init_device_mesh(self.device.type, (self.topology.world_size,))
        kwargs = {"mesh": mesh, "reshard_after_forward": self.reshard_after_forward, "mp_policy": self._mp_policy()}
        if self.offload_params:
            from torch.distributed.fsdp import CPUOffloadPolicy

            # Parameter shards, their gradients and so the optimizer step live on the CPU;
            # each block is copied to the device just before it runs.
            kwargs["offload_policy"] = CPUOffloadPolicy(pin_memory=self.device.type == "cuda")
        blocks = find_blocks(model, self.layer_classes)
        if self.activation_checkpointing:
            for block in blocks:
                checkpoint_block(block)
        for block in blocks:
            fully_shard(block, **kwargs)
        fully_shard(model, **kwargs)
        new = dict(model.named_parameters(remove_duplicate=False))
        self._param_map.update({old: new[name] for old, name in names.items() if name in new})
        return model

    def prepare_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Rebind ``optimizer`` to the sharded parameters (see the module note)."""
        if optimizer.state:
            raise ValueError("the optimizer already has state; prepare it before its first step when sharding "
                             "(its state must be created for the parameter shards).")
        for group in optimizer.param_groups:
            group["params"] = [self._param_map.get(id(p), p) for p in group["params"]]
        return optimizer

    def no_sync(self, model: nn.Module) -> contextlib.AbstractContextManager[Any]:
        return _gradient_sync_off(model)

    def clip_grad_norm_(self, parameters: Any, max_norm: float, norm_type: float = 2.0) -> torch.Tensor:
        norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm, norm_type=norm_type)
        # The norm of sharded gradients is a DTensor; users expect a plain tensor.
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    def model_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The full state dict, gathered to the CPU of the main process (a collective:
        every rank must call it; ranks other than 0 get an empty dict)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


@contextlib.contextmanager
def _gradient_sync_off(model: nn.Module) -> Iterator[None]:
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        yield
        return
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)
