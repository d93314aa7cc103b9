"""What every strategy can do, and the defaults a single-device run uses.

[Note: strategies are asked, not inspected]
The Accelerator never branches on which strategy it holds. It calls the methods
below; a strategy that cannot do something says so through the method's behaviour
(e.g. ``no_sync`` returning a null context when there is nothing to skip).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from surge.config.accelerator_config import AcceleratorConfig
from surge.config.resolve import StrategySpec
from surge.precision.base import Precision, remove_autocast_forward
from surge.topology import DistributedType, Topology

if TYPE_CHECKING:
    from surge.checkpoint.full import FullWriter
    from surge.checkpoint.sharded import ShardedWriter


def unwrap_module(model: nn.Module) -> nn.Module:
    """Strip every wrapper surge or PyTorch puts around a module (DDP, DataParallel,
    ``torch.compile``), returning the user's own module."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):  # torch.compile
            model = model._orig_mod
        else:
            return model


class Strategy:
    """One process on one device: the model as it is."""

    name = "single"
    distributed_type = DistributedType.NO
    sharded_checkpoint = False
    """True when no single process holds the whole training state, so checkpoints are
    collectives (see [Note: checkpoint layout])."""

    def checkpoint_writer(self) -> FullWriter | ShardedWriter:
        """The writer of this strategy's checkpoint layout (see [Note: checkpoint layout]):
        the full layout written by the main process alone when it holds everything; for
        sharded state, the full layout gathered to the main process (FSDP's
        FULL_STATE_DICT) or every process writing its shards through DCP."""
        from surge.checkpoint.full import FullWriter
        from surge.checkpoint.sharded import ShardedWriter

        if not self.sharded_checkpoint:
            return FullWriter()
        return FullWriter(gather=True) if self.spec.full_state_dict else ShardedWriter()

    def __init__(self, topology: Topology, config: AcceleratorConfig, precision: Precision,
                 spec: StrategySpec | None = None) -> None:
        spec = spec if spec is not None else StrategySpec()
        self.topology = topology
        self.config = config
        self.precision = precision
        self.spec = spec
        self.device = torch.device(topology.device)
        self.offload_optimizer = spec.offload_optimizer
        self.activation_checkpointing = spec.activation_checkpointing
        # block classes; None finds them, [] means none
        self.layer_classes = list(spec.layer_classes) if spec.layer_classes is not None else None
        self.min_num_params = spec.min_num_params  # SIZE_BASED_WRAP when set

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        """The model's blocks: sharded one by one (FSDP) and checkpointed one by one."""
        from surge.strategies.blocks import find_blocks, find_blocks_by_policy, find_blocks_by_size

        if self.spec.wrap_policy is not None:
            return find_blocks_by_policy(model, self.spec.wrap_policy)
        if self.min_num_params is not None:
            return find_blocks_by_size(model, self.min_num_params)
        return find_blocks(model, self.layer_classes)

    def checkpoint_activations(self, blocks: list[nn.Module]) -> None:
        """Recompute the activations of each (outermost) block in backward, when asked."""
        from surge.strategies.blocks import checkpoint_block, outermost

        if self.activation_checkpointing:
            for block in outermost(blocks):
                checkpoint_block(block)

    def prepare_model(self, model: nn.Module, *, device_placement: bool, evaluation_mode: bool = False) -> nn.Module:
        """Convert, place and (in subclasses) wrap ``model``; returns what the user calls.

        Order matters: the precision converts the module (fp8 layers) before it moves,
        and its autocast forward is installed on the user's module so any wrapper
        added later (DDP) calls through it.
        """
        from surge.strategies.meta import refuse_meta

        refuse_meta(model, self.name)
        model = self.precision.convert_module(model)
        if device_placement:
            model.to(self.device)
        if not evaluation_mode:
            self.checkpoint_activations(self.blocks(model) if self.activation_checkpointing else [])
        self.precision.wrap_forward(model)
        return model

    def compile(self, model: nn.Module, options: dict[str, Any], *, regional: bool = False) -> nn.Module:
        """``torch.compile`` the prepared ``model``, wrapper included (DDP: dynamo splits
        the graph at gradient buckets so communication still overlaps backward). The
        result forwards attribute access to the module; ``unwrap_model`` strips it.

        ``regional``: compile each repeated block of the module in place instead (and the
        rest whole), the wrapper and the parameter names unchanged."""
        if regional:
            from surge.utils.other import compile_regions_deepspeed

            compile_regions_deepspeed(unwrap_module(model), **options)
            return model
        return cast(nn.Module, torch.compile(model, **options))  # an OptimizedModule for a module

    def prepare_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """The optimizer to step for the user's ``optimizer``: itself, rebound to sharded
        parameters, a sharded replacement (ZeRO-1), or (``offload_optimizer``) one that
        keeps fp32 masters and its state on the CPU (see [Note: optimizer offload])."""
        if self.offload_optimizer:
            from surge.strategies.offload import OffloadedOptimizer

            return OffloadedOptimizer(optimizer, pin_memory=self.device.type == "cuda")
        return optimizer

    def clip_grad_norm_(self, parameters: Any, max_norm: float, norm_type: float = 2.0) -> torch.Tensor:
        """Clip and return the total gradient norm over all processes."""
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm, norm_type=norm_type)

    def unwrap_model(self, model: nn.Module, keep_fp32_wrapper: bool = True) -> nn.Module:
        inner = unwrap_module(model)
        return inner if keep_fp32_wrapper else remove_autocast_forward(inner)

    def backward(self, loss: torch.Tensor, **kwargs: Any) -> None:
        if self.spec.loss_parallel:  # the loss came from vocabulary-split logits (TorchTensorParallelConfig)
            from torch.distributed.tensor.parallel import loss_parallel

            with loss_parallel():
                self.precision.backward(loss, **kwargs)
            return
        self.precision.backward(loss, **kwargs)

    def no_sync(self, model: nn.Module) -> contextlib.AbstractContextManager[Any]:
        """A context in which backward does not synchronise gradients (nothing to skip here)."""
        return contextlib.nullcontext()

    def model_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The full (unsharded) state dict of the user's module."""
        return self.unwrap_model(model).state_dict()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(device={self.topology.device!r}, world_size={self.topology.world_size})"


def rebind_parameters(optimizer: torch.optim.Optimizer, new: dict[int, nn.Parameter], what: str) -> None:
    """Point ``optimizer``'s groups at the parameters that replaced the user's (``new``: id
    of the old one -> its replacement), keeping each group's settings. FSDP2 and tensor
    parallelism replace parameters with DTensors; the optimizer was built before.

    Raises:
        ValueError: the optimizer already has state (it would belong to the old tensors).
    """
    if optimizer.state:
        raise ValueError(f"the optimizer already has state; prepare it before its first step {what} (its state must "
                         "be created for the new parameters).")
    for group in optimizer.param_groups:
        group["params"] = [new.get(id(p), p) for p in group["params"]]
