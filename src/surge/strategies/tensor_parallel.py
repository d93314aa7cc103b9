"""Tensor-parallel plans: a transformers model's (or the user's) plan as torch ParallelStyles.

A plan maps module-name patterns ("layers.*.self_attn.q_proj", "*" one name atom) to a
style. transformers writes the styles as strings (``config.base_model_tp_plan``, relative
to the base model, and the head model's ``_tp_plan``); transformers implements them with
its own classes, surge maps each to PyTorch's own ``ParallelStyle`` (torchtitan's recipe):
the model is then parallelised by ``torch.distributed.tensor.parallel.parallelize_module``
on the mesh's "tp" dimension, before FSDP2 shards it over the data-parallel dimensions;
alone (no data parallelism) it is the :class:`TensorParallel` strategy.
"""

from __future__ import annotations

import re
from typing import Any, cast

import torch
from torch import nn

from surge.config.accelerator_config import AcceleratorConfig
from surge.config.resolve import StrategySpec
from surge.precision.base import Precision
from surge.strategies.base import Strategy, rebind_parameters
from surge.topology import DistributedType, Topology

# transformers' style names -> (torch style, its keyword arguments as layouts)
_STRING_STYLES = ("colwise", "colwise_rep", "colwise_gather_output", "rowwise", "rowwise_rep", "rowwise_split_input",
                  "sequence_parallel", "embedding_rowwise", "embedding_colwise", "replicate")


def style_from_string(name: str) -> Any:
    """PyTorch's ``ParallelStyle`` for a transformers plan string; None for "replicate"
    (the module stays whole on every tp rank).

    Raises:
        ValueError: a style surge does not map (the mapped ones are listed).
    """
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, SequenceParallel

    if name == "colwise":
        return ColwiseParallel()  # Replicate in, Shard(-1) out (local)
    if name in ("colwise_rep", "colwise_gather_output"):
        return ColwiseParallel(output_layouts=Replicate())
    if name == "rowwise":
        return RowwiseParallel()  # Shard(-1) in, Replicate out (all-reduce)
    if name in ("rowwise_rep", "rowwise_split_input"):
        return RowwiseParallel(input_layouts=Replicate())
    if name == "sequence_parallel":
        return SequenceParallel()
    if name == "embedding_rowwise":
        return RowwiseParallel(input_layouts=Replicate())  # an nn.Embedding split by rows (vocabulary)
    if name == "embedding_colwise":
        return ColwiseParallel(output_layouts=Replicate())  # an nn.Embedding split by columns
    if name == "replicate":
        return None
    raise ValueError(f"tensor-parallel style {name!r} is not mapped to a torch ParallelStyle; surge maps "
                     f"{list(_STRING_STYLES)}. Give the module a ParallelStyle object in tp_plan instead.")


def model_plan(model: nn.Module) -> dict[str, str]:
    """A transformers model's plan, keys relative to ``model``: the config's
    ``base_model_tp_plan`` under ``base_model_prefix``, then the model's own ``_tp_plan``
    (the head, e.g. ``lm_head``). Empty for a model without one."""
    plan: dict[str, str] = {}
    config = getattr(model, "config", None)
    base = getattr(config, "base_model_tp_plan", None) or {}
    prefix = getattr(model, "base_model_prefix", "")
    has_base = bool(prefix) and isinstance(getattr(model, prefix, None), nn.Module)
    for key, style in dict(base).items():
        plan[f"{prefix}.{key}" if has_base else key] = style
    plan.update(dict(getattr(model, "_tp_plan", None) or {}))
    return plan


def resolve_plan(model: nn.Module, plan: dict[str, Any] | None) -> dict[str, Any]:
    """Module name -> torch ParallelStyle for every module of ``model`` a pattern of
    ``plan`` (the model's own when None) names. Pure: the model is not changed.

    Raises:
        ValueError: no plan (the model has none and none was given), a pattern that names
            no module, or an unmapped style string.
    """
    patterns = dict(plan) if plan is not None else model_plan(model)
    if not patterns:
        raise ValueError(f"{type(model).__name__} has no tensor-parallel plan (no config.base_model_tp_plan or "
                         "_tp_plan); pass one: tp_plan={'module.name.pattern': ColwiseParallel(), ...}.")
    names = [name for name, _ in model.named_modules() if name]
    resolved: dict[str, Any] = {}
    for pattern, style in patterns.items():
        regex = re.compile("^" + re.escape(pattern).replace(r"\*", r"[^.]+") + "$")
        matched = [n for n in names if regex.match(n)]
        if not matched:
            raise ValueError(f"tp_plan pattern {pattern!r} names no module of {type(model).__name__}.")
        torch_style = style_from_string(style) if isinstance(style, str) else style
        if torch_style is None:
            continue
        for name in matched:
            resolved[name] = torch_style
    return resolved


def apply_tensor_parallel(model: nn.Module, tp_mesh: Any, plan: dict[str, Any] | None, *,
                          loss_parallel: bool = False) -> nn.Module:
    """Parallelise ``model`` in place on ``tp_mesh`` (a 1-D DeviceMesh): each planned
    module's parameters become DTensors sharded across it (a collective on the tp group).

    ``loss_parallel``: the output head keeps its logits split over the vocabulary (a
    DTensor) and the model's forward runs under torch's ``loss_parallel`` context, so its
    cross-entropy never gathers them.

    Raises:
        ValueError: see :func:`resolve_plan`; ``loss_parallel`` on a model without an
            output head (transformers' ``get_output_embeddings``).
    """
    from torch.distributed.tensor.parallel import parallelize_module

    resolved = resolve_plan(model, plan)
    if loss_parallel:
        from torch.distributed.tensor import Shard
        from torch.distributed.tensor.parallel import ColwiseParallel

        find_head = getattr(model, "get_output_embeddings", None)
        head = find_head() if callable(find_head) else None
        name = next((n for n, m in model.named_modules() if head is not None and m is head), None)
        if name is None:
            raise ValueError(f"TorchTensorParallelConfig(loss_parallel=True): {type(model).__name__} has no output "
                             "head (get_output_embeddings()) to split over the vocabulary; turn loss_parallel off.")
        resolved[name] = ColwiseParallel(output_layouts=Shard(-1), use_local_output=False)
        if not isinstance(model.__dict__.get("forward"), LossParallelForward):
            model.forward = LossParallelForward(model.forward)
    parallelize_module(model, tp_mesh, resolved)
    return model


class LossParallelForward:
    """A module's forward run under ``torch.distributed.tensor.parallel.loss_parallel``."""

    def __init__(self, forward: Any) -> None:
        self.forward = forward

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from torch.distributed.tensor.parallel import loss_parallel

        with loss_parallel():
            return self.forward(*args, **kwargs)


class TensorParallel(Strategy):
    """Tensor parallelism alone (``ParallelismConfig(tp_size=N)`` on N processes, no data
    parallelism): each planned module's parameters are DTensors split over every process;
    the rest (norms, unplanned modules) are whole on each and receive the same gradient on
    each, so nothing is averaged. Accelerate accepts only a model transformers already split
    (``from_pretrained(tp_plan="auto")``); surge takes that one as it is and splits any
    other by its plan here."""

    name = "tp"
    sharded_checkpoint = True

    def __init__(self, topology: Topology, config: AcceleratorConfig, precision: Precision,
                 spec: StrategySpec | None = None) -> None:
        super().__init__(topology, config, precision, spec)
        self._param_map: dict[int, nn.Parameter] = {}

    @property
    def distributed_type(self) -> DistributedType:  # type: ignore[override]
        return self.topology.distributed_type

    def prepare_model(self, model: nn.Module, *, device_placement: bool, evaluation_mode: bool = False) -> nn.Module:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor import DTensor

        names = {id(p): name for name, p in model.named_parameters(remove_duplicate=False)}
        model = super().prepare_model(model, device_placement=device_placement, evaluation_mode=evaluation_mode)
        if any(isinstance(p, DTensor) for p in model.parameters()):
            if self.spec.loss_parallel and not isinstance(model.__dict__.get("forward"), LossParallelForward):
                raise ValueError("TorchTensorParallelConfig(loss_parallel=True) needs surge to split the model (its "
                                 "head over the vocabulary), but this model is split already (transformers' "
                                 "tp_plan=\"auto\"); load it whole, or turn loss_parallel off.")
            return model  # split already (transformers' tp_plan="auto", or prepared before)
        mesh = init_device_mesh(self.device.type, (self.topology.world_size,), mesh_dim_names=("tp",))
        apply_tensor_parallel(model, mesh, self.spec.tp_plan, loss_parallel=self.spec.loss_parallel)
        new = dict(model.named_parameters(remove_duplicate=False))
        self._param_map.update({old: new[name] for old, name in names.items() if name in new})
        return model

    def prepare_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Rebind ``optimizer`` to the split parameters (as FSDP does for its shards)."""
        rebind_parameters(optimizer, self._param_map, "under tensor parallelism")
        return super().prepare_optimizer(optimizer)

    def clip_grad_norm_(self, parameters: Any, max_norm: float, norm_type: float = 2.0) -> torch.Tensor:
        from surge.strategies.fsdp import _clip_across_meshes

        return _clip_across_meshes(parameters, max_norm, norm_type)

    def model_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The full state dict, gathered to the CPU (a collective: every rank calls it)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(self.unwrap_model(model),
                                     options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return cast(dict[str, torch.Tensor], state)
