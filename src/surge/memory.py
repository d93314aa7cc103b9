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
stay on every tp rank); FSDP2 then shards what each rank holds over ``dp_shard x cp x sp``
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
    num_params: float, strategy: Strategy, world_size: int, precision: str = "bf16", optimizer_states: int = 2,
    trainable_params: float | None = None,
) -> tuple[float, float]:
    """(accelerator bytes, CPU bytes) of model states on each process.

    ``optimizer_states``: fp32 tensors the optimizer keeps per parameter (Adam 2, SGD with
    momentum 1, plain SGD 0); mixed precision adds the fp32 master copy.
    ``trainable_params``: the parameters that get gradients and optimizer state (None: all).

    Raises:
        ValueError: unknown precision, or a world size < 1.
    """
    if precision not in _BYTES:
        raise ValueError(f"precision={precision!r} is not supported; choose one of {', '.join(map(repr, _BYTES))}.")
    if world_size < 1:
        raise ValueError(f"world_size={world_size} must be >= 1.")
    p_bytes, g_bytes, _ = _BYTES[precision]
    o_bytes = 4 * optimizer_states + (4 if p_bytes == 2 else 0)  # fp32 state (+ fp32 masters under mixed precision)
    trained = num_params if trainable_params is None else trainable_params
    p, g, o = p_bytes * num_params, g_bytes * trained, o_bytes * trained
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


# [Note: strategy "auto"]
# The lightest strategy whose model states fit, in this order (each rung trades speed for
# memory: sharding adds communication, activation checkpointing recomputes the forward,
# offload moves state over PCIe). Model states may use STATE_SHARE of the budget; the
# rest is left to activations, temporary buffers and communication buckets, which
# activation checkpointing shrinks, so its rungs may use AC_STATE_SHARE.
STATE_SHARE = 0.7
AC_STATE_SHARE = 0.9


@dataclass(frozen=True)
class Rung:
    strategy: Strategy
    activation_checkpointing: bool = False

    @property
    def name(self) -> str:
        return self.strategy.name + (" + activation checkpointing" if self.activation_checkpointing else "")


def ladder(world_size: int) -> tuple[Rung, ...]:
    """The rungs "auto" tries, lightest first. One process has nothing to shard over: its
    rungs are the plain model, activation checkpointing, and optimizer offload."""
    by_name = {s.name: s for s in STRATEGIES}
    if world_size == 1:
        one = Strategy("one process", 0)
        return (Rung(one), Rung(one, True), Rung(Strategy("one process + offload optimizer", 0, True), True))
    return (Rung(by_name["DDP"]), Rung(by_name["ZeRO-1"]), Rung(by_name["ZeRO-2"]), Rung(by_name["ZeRO-3"]),
            Rung(by_name["ZeRO-3"], True), Rung(by_name["ZeRO-3 + offload optimizer"], True),
            Rung(by_name["ZeRO-3 + offload optimizer and params"], True))


@dataclass(frozen=True)
class Recommendation:
    """What strategy "auto" chose, and the numbers behind it."""

    rung: Rung
    fits: bool
    """False when even the last rung does not fit (it is chosen anyway)."""
    device_bytes: float
    cpu_bytes: float
    budget_bytes: float
    num_params: float
    world_size: int
    precision: str
    optimizer_states: int
    tried: tuple[tuple[str, float], ...]
    """The lighter rungs that did not fit: (name, device bytes)."""

    def explain(self) -> str:
        size = human_bytes
        share = AC_STATE_SHARE if self.rung.activation_checkpointing else STATE_SHARE
        optimizer = {0: "plain SGD", 1: "a 1-state optimizer (SGD momentum)", 2: "Adam"}.get(
            self.optimizer_states, f"a {self.optimizer_states}-state optimizer")
        head = (f"strategy auto: {self.rung.name} for {human_count(self.num_params)} parameters ({self.precision}, "
                f"{optimizer}) on {self.world_size} process{'es' if self.world_size > 1 else ''} with "
                f"{size(self.budget_bytes)} each: model states {size(self.device_bytes)} per process")
        if self.cpu_bytes:
            head += f" (+ {size(self.cpu_bytes)} on the CPU)"
        head += (f" fit in {share:.0%} of it" if self.fits
                 else f" do NOT fit in {share:.0%} of it (nothing does; the lightest-memory choice is taken)")
        if self.tried:
            head += "; lighter choices need " + ", ".join(f"{n} {size(b)}" for n, b in self.tried)
        return head


def human_bytes(n: float) -> str:
    """``n`` bytes as "1.23 GB" / "45.6 MB" / "789 KB" (powers of 1000)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


def human_count(n: float) -> str:
    """``n`` as "1.3B" / "124M" / "33.3K"."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.0f}"


def recommend(num_params: float, world_size: int, budget_bytes: float, precision: str = "bf16",
              optimizer_states: int = 2, trainable_params: float | None = None) -> Recommendation:
    """The lightest rung of :func:`ladder` whose model states fit ``budget_bytes`` per
    process (see [Note: strategy "auto"]). Pure arithmetic.

    Counted in surge's own layout, whatever the precision: mixed precision autocasts (and
    FSDP2 casts a gathered copy) from fp32 parameters, so parameters and gradients are
    4 bytes (DeepSpeed's 2-byte weights and fp32 masters, in the estimate-memory table,
    would undercount ZeRO-1 and the offload rungs); ``precision`` only labels the result.

    Raises:
        ValueError: a budget that is not positive (or see :func:`model_state_bytes`).
    """
    if not budget_bytes > 0:
        raise ValueError(f"memory budget {budget_bytes} bytes must be positive.")
    tried: list[tuple[str, float]] = []
    rungs = ladder(world_size)
    def states(strategy: Strategy) -> tuple[float, float]:
        return model_state_bytes(num_params, strategy, world_size, "fp32", optimizer_states, trainable_params)

    for rung in rungs:
        gpu, cpu = states(rung.strategy)
        share = AC_STATE_SHARE if rung.activation_checkpointing else STATE_SHARE
        if gpu <= share * budget_bytes:
            return Recommendation(rung, True, gpu, cpu, budget_bytes, num_params, world_size, precision,
                                  optimizer_states, tuple(tried))
        tried.append((rung.name, gpu))
    last = rungs[-1]
    gpu, cpu = states(last.strategy)
    return Recommendation(last, False, gpu, cpu, budget_bytes, num_params, world_size, precision, optimizer_states,
                          tuple(tried[:-1]))


def optimizer_states(optimizer: Any) -> int:
    """fp32 state tensors ``optimizer`` keeps per parameter (by its class, as the ZeRO
    arithmetic counts them): Adam-family 2, SGD with momentum / RMSprop / Adagrad / Lion 1,
    plain SGD 0; anything unknown counts as Adam."""
    if optimizer is None:
        return 2
    inner = getattr(optimizer, "optimizer", optimizer)
    name = type(inner).__name__.lower()
    defaults = getattr(inner, "defaults", {})
    if name == "sgd":
        return 1 if defaults.get("momentum", 0) else 0
    if name in ("rmsprop", "adagrad", "lion", "adafactor", "sgdw"):
        return 1
    return 2


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


def count_parameters(model: object, trainable_only: bool = False) -> int:
    """Unique parameters of a module (tied weights counted once); with ``trainable_only``,
    those that require gradients."""
    seen: set[int] = set()
    total = 0
    for param in model.parameters():  # type: ignore[attr-defined]
        if trainable_only and not param.requires_grad:
            continue
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
