"""Per-process memory of model states (parameters, gradients, optimizer) per strategy.

ZeRO's arithmetic (Rajbhandari et al., 2020) for Adam with Ψ parameters on N
processes. Mixed precision (fp16/bf16) keeps 2-byte parameters and gradients plus
12 bytes of fp32 optimizer state per parameter (master weights, momentum,
variance); fp32 training keeps 4-byte parameters and gradients plus 8 bytes of state.

| strategy | mixed precision (K = 12) | fp32 |
| --- | --- | --- |
| DDP | 16Ψ | 16Ψ |
| ZeRO-1 (optimizer state sharded) | 4Ψ + 12Ψ/N | 8Ψ + 8Ψ/N |
| ZeRO-2 (+ gradients) | 2Ψ + 14Ψ/N | 4Ψ + 12Ψ/N |
| ZeRO-3 (+ parameters) | 16Ψ/N | 16Ψ/N |

Offloading the optimizer moves its sharded state to CPU memory; offloading
parameters (ZeRO-3) moves the parameter shards too. Activations, temporary buffers
and the communication buckets come on top and are not counted.

On an N-D mesh (:func:`mesh_model_state_bytes`) tensor parallelism first divides the
Ψ_tp parameters its plan splits by tp (the rest, Ψ_rep: embeddings left whole, norms,
stay on every tp rank); FSDP2 then shards what each rank holds over ``dp_shard x sp``
(replicas, ``dp_replicate``, divide nothing):

    per rank = (Ψ_rep + Ψ_tp / tp) x (p + g + o) / shard      (FULL_SHARD, ZeRO-3)

FSDP2 keeps its sharded parameters, gradients and optimizer state in fp32 under bf16
(it casts a gathered copy for compute), so p = g = 4 bytes; o is the optimizer's state
(Adam 8, SGD with momentum 4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported when measuring only (estimate-memory's arithmetic needs none)
    import torch

# bytes per parameter: (parameters, gradients, optimizer state)
_BYTES = {"fp32": (4, 4, 8), "bf16": (2, 2, 12), "fp16": (2, 2, 12)}


@dataclass(frozen=True)
class Strategy:
    name: str
    stage: int
    offload_optimizer: bool = False
    offload_param: bool = False


STRATEGIES = (
    Strategy("DDP", 0),
    Strategy("ZeRO-1", 1),
    Strategy("ZeRO-2", 2),
    Strategy("ZeRO-3", 3),
    Strategy("ZeRO-1 + offload optimizer", 1, offload_optimizer=True),
    Strategy("ZeRO-2 + offload optimizer", 2, offload_optimizer=True),
    Strategy("ZeRO-3 + offload optimizer", 3, offload_optimizer=True),
    Strategy("ZeRO-3 + offload optimizer and params", 3, offload_optimizer=True, offload_param=True),
)


def model_state_bytes(
    num_params: float, strategy: Strategy, world_size: int, precision: str = "bf16"
) -> tuple[float, float]:
    """(accelerator bytes, CPU bytes) of model states on each process.

    Raises:
        ValueError: unknown precision, or a world size < 1.
    """
    if precision not in _BYTES:
        raise ValueError(f"precision={precision!r} is not supported; choose one of {', '.join(map(repr, _BYTES))}.")
    if world_size < 1:
        raise ValueError(f"world_size={world_size} must be >= 1.")
    p, g, o = (b * num_params for b in _BYTES[precision])
    n = world_size
    params = p / n if strategy.stage >= 3 else p
    grads = g / n if strategy.stage >= 2 else g
    optim = o / n if strategy.stage >= 1 else o
    gpu, cpu = params + grads + optim, 0.0
    if strategy.offload_optimizer:
        gpu -= optim
        cpu += optim
    if strategy.offload_param:
        gpu -= params
        cpu += params
    return gpu, cpu


def mesh_model_state_bytes(num_params: float, tp_params: float, *, tp: int, shard: int,
                           optimizer_state_bytes: float = 8.0) -> float:
    """Device bytes of model states on each rank of an FSDP2 (FULL_SHARD) x tensor-parallel
    mesh: ``num_params`` in all, ``tp_params`` of them split by the tp plan (see the
    module docstring; 4-byte parameters and gradients, ``optimizer_state_bytes`` per
    parameter of optimizer state).

    Raises:
        ValueError: sizes below 1, or more tp parameters than parameters.
    """
    if tp < 1 or shard < 1:
        raise ValueError(f"tp={tp} and shard={shard} must be >= 1.")
    if not 0 <= tp_params <= num_params:
        raise ValueError(f"tp_params={tp_params} must be between 0 and num_params={num_params}.")
    per_rank = (num_params - tp_params) + tp_params / tp
    return per_rank * (4 + 4 + optimizer_state_bytes) / shard


def tensor_parallel_parameters(model: Any, plan: dict[str, Any] | None = None) -> int:
    """How many of ``model``'s parameters its tensor-parallel plan (the model's own when
    ``plan`` is None) splits: the weights of column- and row-wise modules and the biases
    of column-wise ones (a row-wise bias is added after the all-reduce, whole). Works on
    the meta device.

    Raises:
        ValueError: see :func:`surge.strategies.tensor_parallel.resolve_plan`.
    """
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    from surge.strategies.tensor_parallel import resolve_plan

    total = 0
    for name, style in resolve_plan(model, plan).items():
        module = model.get_submodule(name)
        if isinstance(style, (ColwiseParallel, RowwiseParallel)) and getattr(module, "weight", None) is not None:
            total += module.weight.numel()
            if isinstance(style, ColwiseParallel) and getattr(module, "bias", None) is not None:
                total += module.bias.numel()
    return total


def count_parameters(model: object) -> int:
    """Unique parameters of a module (tied weights counted once)."""
    seen: set[int] = set()
    total = 0
    for param in model.parameters():  # type: ignore[attr-defined]
        if id(param) not in seen:
            seen.add(id(param))
            total += param.numel()
    return total


def measured_model_state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes this process holds for parameters, gradients and optimizer state, counting
    only the local shard of sharded tensors (DTensor) and each storage once."""
    import torch

    seen: set[int] = set()

    def local_bytes(value: object) -> int:
        if not isinstance(value, torch.Tensor):
            return 0
        t: torch.Tensor = getattr(value, "_local_tensor", value)  # the shard this rank holds
        key = t.untyped_storage().data_ptr()
        if key in seen or t.numel() == 0:
            return 0
        seen.add(key)
        return t.untyped_storage().nbytes()

    params = sum(local_bytes(p) for p in model.parameters())
    grads = sum(local_bytes(p.grad) for p in model.parameters() if p.grad is not None)
    inner: Any = getattr(optimizer, "optimizer", optimizer)
    inner = getattr(inner, "optim", inner)  # ZeroRedundancyOptimizer keeps its shard's optimizer here
    state = sum(local_bytes(v) for s in inner.state.values() for v in s.values())
    return {"params": params, "grads": grads, "optimizer": state, "total": params + grads + state}
