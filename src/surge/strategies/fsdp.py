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
import itertools
from collections.abc import Iterator
from typing import Any, cast

import torch
from torch import nn

from surge.config.accelerator_config import AcceleratorConfig
from surge.config.resolve import StrategySpec
from surge.precision.base import Precision
from surge.strategies.base import Strategy, rebind_parameters
from surge.strategies.blocks import find_blocks, find_blocks_by_size
from surge.topology import DistributedType, Topology

__all__ = ["FSDP", "find_blocks", "find_blocks_by_size"]


class FSDP(Strategy):
    """Sharded data parallelism on FSDP2."""

    name = "fsdp"
    sharded_checkpoint = True

    def __init__(self, topology: Topology, config: AcceleratorConfig, precision: Precision,
                 spec: StrategySpec | None = None) -> None:
        super().__init__(topology, config, precision, spec)
        # With offload_params the shards already live (and step) on the CPU.
        self.offload_optimizer = self.spec.offload_optimizer and not self.spec.offload_params
        self.reshard_after_forward = self.spec.shard_degree >= 3  # ZeRO-3 frees gathered parameters after use
        self.offload_params = self.spec.offload_params
        self.hybrid = self.spec.hybrid  # HYBRID_SHARD: shard within a machine, replicate across machines
        self._distributed_type = DistributedType.DEEPSPEED if self.spec.family == "deepspeed" else DistributedType.FSDP
        mesh = self.spec.mesh
        if self.hybrid and mesh.size != topology.world_size:
            raise ValueError(f"HYBRID_SHARD's mesh {mesh.dp_replicate} x {mesh.dp_shard} (replicas x shard size) does "
                             f"not cover the job's {topology.world_size} processes; build the StrategySpec with "
                             "config.resolve.strategy_spec, which derives it from the machines.")
        self._param_map: dict[int, nn.Parameter] = {}

    @property
    def distributed_type(self) -> DistributedType:  # type: ignore[override]
        return self._distributed_type

    def _mp_policy(self) -> Any:
        from torch.distributed.fsdp import MixedPrecisionPolicy

        if self.spec.mp_policy is not None:
            return self.spec.mp_policy  # the plugin's mixed_precision_policy, as given
        dtype = self.precision.sharded_param_dtype
        # Compute in bf16 from gathered bf16 parameters, reduce gradients in fp32. fp16
        # keeps fp32 parameters and autocast instead: its loss scaler unscales fp32
        # gradients (and finds overflow across all shards: the DTensor op reduces it).
        return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32 if dtype else None)

    def prepare_model(self, model: nn.Module, *, device_placement: bool, evaluation_mode: bool = False) -> nn.Module:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import FSDPModule, fully_shard

        from surge.strategies import meta

        if isinstance(model, FSDPModule) or evaluation_mode:
            return super().prepare_model(model, device_placement=device_placement) if evaluation_mode else model
        names = {id(p): name for name, p in model.named_parameters(remove_duplicate=False)}
        # Where the weights come from, and (rank 0's) set aside while sharding on meta:
        # see [Note: a model built on the meta device] in strategies/meta.py.
        source = meta.weights_source(model, from_rank0=self.spec.load_from_rank0,
                                     init_fn=self.spec.param_init_fn is not None)
        aside = meta.set_aside(model, source) if source != "local" else None
        if device_placement and aside is None:
            model.to(self.device)
        if self.precision.sharded_param_dtype is None:
            self.precision.wrap_forward(model)  # fp16 (and fp8) autocast; a no-op for fp32
        if self.spec.mesh.tp > 1:
            _refuse_split_model(model)
        mesh = init_device_mesh(self.device.type, self._mesh_shape(), mesh_dim_names=self._mesh_names())
        if self.spec.mesh.tp > 1:
            from surge.strategies.tensor_parallel import apply_tensor_parallel

            # torchtitan's order: tensor-parallel first (parameters become DTensors on "tp"),
            # then FSDP2 shards them over the data-parallel dims of the same mesh.
            apply_tensor_parallel(model, mesh["tp"], self.spec.tp_plan, loss_parallel=self.spec.loss_parallel)
            mesh = mesh[self._mesh_names()[:-1]]
        kwargs = {"mesh": mesh, "reshard_after_forward": self.reshard_after_forward, "mp_policy": self._mp_policy()}
        if self.offload_params:
            from torch.distributed.fsdp import CPUOffloadPolicy

            # Parameter shards, their gradients and so the optimizer step live on the CPU;
            # each block is copied to the device just before it runs.
            pin = self.spec.offload_pin_memory
            kwargs["offload_policy"] = CPUOffloadPolicy(pin_memory=self.device.type == "cuda" if pin is None else pin)
        if self.spec.ignored_modules is not None:
            from surge.strategies.blocks import ignored_parameters

            # Left whole on every process; FSDP2 does not average their gradients.
            kwargs["ignored_params"] = ignored_parameters(model, self.spec.ignored_modules)
        blocks = self.blocks(model)
        self.checkpoint_activations(blocks)
        for block in blocks:
            fully_shard(block, **kwargs)
        fully_shard(model, **kwargs)
        if aside is not None:
            meta.materialise(model, aside, device=self.device, params_on_cpu=self.offload_params,
                             init_fn=self.spec.param_init_fn)
        if self.spec.forward_prefetch:
            self._prefetch_forward(blocks)
        new = dict(model.named_parameters(remove_duplicate=False))
        self._param_map.update({old: new[name] for old, name in names.items() if name in new})
        return model

    @staticmethod
    def _prefetch_forward(blocks: list[nn.Module]) -> None:
        """Each block starts gathering the next one's parameters as it runs forward
        (the plugin's ``forward_prefetch``); blocks run in module order."""
        from surge.strategies.blocks import outermost

        units = outermost(blocks)
        for current, following in itertools.pairwise(units):
            cast(Any, current).set_modules_to_forward_prefetch([following])

    def compile(self, model: nn.Module, options: dict[str, Any], *, regional: bool = False) -> nn.Module:
        """Compile each sharded block's forward (FSDP2's gather/free hooks run around it,
        outside the compiled code); with no blocks, the root's. Modules and parameter
        names stay as they are, so checkpoints and exports do not change. (This is
        regional compilation already: ``regional`` changes nothing.)"""
        from surge.strategies.blocks import compile_forward, outermost

        for block in outermost(self.blocks(model)) or [model]:
            compile_forward(block, options)
        return model

    def _mesh_shape(self) -> tuple[int, ...]:
        """(processes,) or, for HYBRID_SHARD, the plan's (replicas, shard size): parameters
        are sharded within each replica group (a machine) and replicated across them.

        The shard dimension is ``dp_shard x cp x sp``: in ParallelismConfig's mesh order
        (dp_replicate, dp_shard, cp, sp, tp) those dims are neighbours, so their flattened
        index is one contiguous dimension (torchtitan's ``dp_shard_cp``)."""
        mesh = self.spec.mesh
        shard = mesh.dp_shard * mesh.cp * mesh.sp
        if mesh.tp > 1:  # tp innermost: a tp group is neighbouring ranks (one machine)
            return (mesh.dp_replicate, shard, mesh.tp) if self.hybrid else (shard, mesh.tp)
        return (mesh.dp_replicate, shard) if self.hybrid else (self.topology.world_size,)

    def _mesh_names(self) -> tuple[str, ...]:
        names = ("replicate", "shard") if self.hybrid else ("shard",)
        return (*names, "tp") if self.spec.mesh.tp > 1 else names

    def prepare_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Rebind ``optimizer`` to the sharded parameters (see the module note)."""
        rebind_parameters(optimizer, self._param_map, "when sharding")
        return super().prepare_optimizer(optimizer)

    def no_sync(self, model: nn.Module) -> contextlib.AbstractContextManager[Any]:
        return _gradient_sync_off(model)

    def clip_grad_norm_(self, parameters: Any, max_norm: float, norm_type: float = 2.0) -> torch.Tensor:
        if self.spec.mesh.tp > 1:
            return _clip_across_meshes(parameters, max_norm, norm_type)
        norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm, norm_type=norm_type)
        # The norm of sharded gradients is a DTensor; users expect a plain tensor.
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    def model_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The full state dict, gathered to the CPU of the main process (a collective:
        every rank must call it; ranks other than 0 get an empty dict)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return cast(dict[str, torch.Tensor], state)  # full state dicts hold plain tensors


def _clip_across_meshes(parameters: Any, max_norm: float, norm_type: float) -> torch.Tensor:
    """torch's clip over gradients that are DTensors on different meshes (tensor-parallel
    ones on (dp, tp), the rest on dp alone), which one torch call cannot stack: the norm of
    each mesh's gradients is completed (a collective per mesh), then combined (torchtitan's
    approach). Returns the plain total norm."""
    params = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
    groups: dict[Any, list[torch.Tensor]] = {}
    for p in params:
        if p.grad is not None:
            groups.setdefault(getattr(p.grad, "device_mesh", None), []).append(p)
    norms = []
    for group in groups.values():
        norm = torch.nn.utils.get_total_norm([p.grad for p in group if p.grad is not None], norm_type)
        norms.append(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    if not norms:
        return torch.zeros(())
    stacked = torch.stack([n.float() for n in norms])
    total = stacked.max() if norm_type == float("inf") else stacked.pow(norm_type).sum().pow(1.0 / norm_type)
    for group in groups.values():  # one foreach per mesh: DTensors of two meshes cannot meet in one op
        torch.nn.utils.clip_grads_with_norm_(group, max_norm, total)
    return total


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


def _refuse_split_model(model: nn.Module) -> None:
    """FSDP x tp splits the model itself at ``prepare``; one split already (transformers'
    ``tp_plan="auto"`` / ``distributed_config``, on a mesh of its own) would be split twice.

    Raises:
        ValueError: a parameter is a DTensor already, naming its mesh.
    """
    from torch.distributed.tensor import DTensor

    for name, p in model.named_parameters():
        if isinstance(p, DTensor):
            raise ValueError(f"{name} is split already over {p.device_mesh} (transformers' tp_plan=\"auto\" or "
                             "distributed_config); FSDP x tensor parallel splits the model at prepare, on the "
                             "ParallelismConfig's mesh. Load the model whole (without tp_plan), or run tensor "
                             "parallelism alone (tp_size = the number of processes, no FSDP plugin), which takes "
                             "a split model as it is.")
