"""DeepSpeed checkpoints written without DeepSpeed, file for file (test fixtures).

DeepSpeed cannot be installed next to surge's torch, so these files are written here,
in the exact on-disk layout of DeepSpeed 0.16.5 (github.com/microsoft/DeepSpeed at
38327e07f6cd39b63418f60cedd1651b0be3e7c3), from a known model and optimizer state.
The source lines followed:

- deepspeed/runtime/engine.py: ``save_checkpoint`` (the ``latest`` file), ``_get_ckpt_name``
  and ``_get_rank_zero_ckpt_name`` (file names: ``zero_pp_rank_<r>_mp_rank_00_model_states.pt``
  under ZeRO-3, the ``bf16_`` prefix whenever bf16 is on), ``_save_checkpoint`` (the model
  states dict, its keys in that order, then ``client_state``), ``_save_zero_checkpoint``,
  ``_get_zero_param_shapes`` (round-robin order at ZeRO-1/2, ZeRO-3's sub groups),
  ``_get_buffer_names``, ``_get_shared_params`` (rank 0 only), ``_get_zero_frozen_param_attributes``
  (ZeRO-2/3 only), ``_configure_checkpointing`` (ZeRO-3: every rank writes model states);
- deepspeed/runtime/zero/stage_1_and_2.py: ``__init__`` (trainable parameters only;
  ``_round_robin_reorder``; ``flatten_dense_tensors_aligned`` to ``2 * world_size``;
  ``get_data_parallel_partitions``; ``groups_padding``), ``state_dict`` (unpadded fp32
  partitions, ``base_optimizer_state`` over the padded ones, or ``_get_base_optimizer_state``
  with ``elastic_checkpoint``), ``_create_param_mapping``;
- deepspeed/runtime/zero/stage3.py: ``_create_fp16_sub_groups``, ``_create_fp32_partitions``,
  ``_rigid_state_dict``; partition_parameters.py ``_partition_numel`` / ``_padding_size``
  (``ceil(numel / world_size)`` each, the last rank zero-padded) and ``free_param``
  (placeholders of ``torch.empty(0)``);
- deepspeed/runtime/bf16_optimizer.py: ``_setup_for_real_optimizer`` and ``state_dict``
  (padded partitions, padding recorded on the last rank only; no ``zero_stage``);
- deepspeed/runtime/fp16/fused_optimizer.py ``state_dict`` (one flat fp32 tensor per group)
  and loss_scaler.py (``LossScaler``, ``DynamicLossScaler`` and their attributes);
- deepspeed/runtime/lr_schedules.py ``WarmupLR`` (``{"last_batch_iteration": i}``, the lr at ``i``).

The DeepSpeed classes are pickled by reference under their real module paths (stand-in
modules exist in ``sys.modules`` only while saving), exactly as DeepSpeed's files name them.
"""

from __future__ import annotations

import contextlib
import enum
import math
import os
import sys
import types
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

VERSION = "0.16.5"


# -- DeepSpeed's classes, under their module paths while saving --------------------------------


class LossScalerBase:
    def __init__(self, cur_scale: float) -> None:
        self.cur_scale = cur_scale
        self.dynamic = False


class LossScaler(LossScalerBase):
    pass


class DynamicLossScaler(LossScalerBase):
    def __init__(self, init_scale: float, scale_window: int = 1000, min_scale: float = 1, delayed_shift: int = 1,
                 consecutive_hysteresis: bool = False) -> None:
        super().__init__(init_scale)
        self.cur_iter = 0
        self.last_overflow_iter = -1
        self.scale_factor = 2.0
        self.scale_window = scale_window
        self.min_scale = min_scale
        self.delayed_shift = delayed_shift
        self.cur_hysteresis = delayed_shift
        self.consecutive_hysteresis = consecutive_hysteresis
        self.raise_error_at_min_scale = True
        self.dynamic = True
        self.dtype = torch.float16


class ZeroStageEnum(int, enum.Enum):
    disabled = 0
    optimizer_states = 1
    gradients = 2
    weights = 3
    max_stage = 3  # noqa: PIE796 (DeepSpeed's alias)


@dataclass
class fragment_address:
    numel: int
    start: int


_PATHS = {"deepspeed.runtime.fp16.loss_scaler": (LossScalerBase, LossScaler, DynamicLossScaler),
          "deepspeed.runtime.zero.config": (ZeroStageEnum,),
          "deepspeed.utils.tensor_fragment": (fragment_address,)}


@contextlib.contextmanager
def deepspeed_modules() -> Iterator[None]:
    """DeepSpeed's module paths in ``sys.modules`` (for pickling by reference), then gone."""
    added = []
    for path, classes in _PATHS.items():
        parts = path.split(".")
        for i in range(1, len(parts) + 1):
            name = ".".join(parts[:i])
            if name not in sys.modules:
                sys.modules[name] = types.ModuleType(name)
                added.append(name)
        for cls in classes:
            cls.__module__ = path
            cls.__qualname__ = cls.__name__
            setattr(sys.modules[path], cls.__name__, cls)
    try:
        yield
    finally:
        for name in added:
            del sys.modules[name]


# -- the run being saved ------------------------------------------------------------------------


@dataclass
class Run:
    """A model mid-training and its Adam(W) optimizer (with state), as DeepSpeed holds them."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    last_batch_iteration: int | None = None
    """WarmupLR's state (None: no scheduler)."""
    global_steps: int = 0
    skipped_steps: int = 0
    client_state: dict[str, Any] = field(default_factory=dict)
    scaler: LossScalerBase | None = None
    """fp16's DynamicLossScaler (None: a LossScaler of 1.0, as DeepSpeed has without fp16)."""
    config: dict[str, Any] = field(default_factory=dict)

    def names(self) -> dict[int, str]:
        return {id(p): n for n, p in self.model.named_parameters()}


def _dtype(precision: str) -> torch.dtype:
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).float() for t in tensors]) if tensors else torch.empty(0)


def _round_robin(params: list[Any], world: int) -> list[Any]:
    buckets: dict[int, list[Any]] = {}
    for i, p in enumerate(params):
        buckets.setdefault(i % world, []).append(p)
    return [p for j in buckets for p in buckets[j]]


def _state(optimizer: torch.optim.Optimizer, p: torch.Tensor, key: str) -> torch.Tensor:
    return optimizer.state[p][key]


def _hyper(group: dict[str, Any], params: list[int]) -> dict[str, Any]:
    return {**{k: v for k, v in group.items() if k != "params"}, "params": params}


def _step(run: Run) -> torch.Tensor:
    first = next(iter(run.optimizer.state.values()))
    return first["step"].clone()


def _scaler(run: Run) -> LossScalerBase:
    return run.scaler if run.scaler is not None else LossScaler(1.0)


def _trainable_groups(run: Run) -> list[list[nn.Parameter]]:
    return [[p for p in g["params"] if p.requires_grad] for g in run.optimizer.param_groups]


def _model_states(run: Run, *, stage: int, world: int, precision: str, rank: int = 0,
                  param_shapes: list[OrderedDict[str, torch.Size]] | None,
                  optimizer: Any = None, frozen_fragments: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """engine.py ``_save_checkpoint``'s dict."""
    dtype = _dtype(precision)
    names = run.names()
    module = OrderedDict((k, v.detach().clone().to(dtype) if v.is_floating_point() else v.detach().clone())
                         for k, v in run.model.state_dict().items())
    buffer_names = [n for n, _ in run.model.named_buffers()]
    if stage == 3:
        for n, _ in run.model.named_parameters(remove_duplicate=False):
            module[n] = torch.empty(0, dtype=dtype)  # free_param's placeholder
    zero_state = stage > 0 or precision == "bf16"
    frozen = [p for p in run.model.parameters() if not p.requires_grad]
    save_frozen = stage >= 2
    shared: dict[str, str] = {}
    if zero_state and rank == 0:
        seen: dict[int, str] = {}
        for n, p in run.model.named_parameters(remove_duplicate=False):
            if id(p) in seen:
                shared[n] = seen[id(p)]
            else:
                seen[id(p)] = n
    state = {
        "module": module, "buffer_names": buffer_names, "optimizer": optimizer if not zero_state else None,
        "param_shapes": param_shapes if zero_state else None,
        "frozen_param_shapes": OrderedDict((names[id(p)], p.shape) for p in frozen) if save_frozen else None,
        "shared_params": shared if zero_state else None,
        "frozen_param_fragments": (frozen_fragments if frozen_fragments is not None else
                                   OrderedDict((names[id(p)], p.detach().to(dtype)) for p in frozen))
        if save_frozen else None,
        "lr_scheduler": {"last_batch_iteration": run.last_batch_iteration}
        if run.last_batch_iteration is not None else None,
        "data_sampler": None, "random_ltd": None, "sparse_tensor_module_names": set(),
        "skipped_steps": run.skipped_steps, "global_steps": run.global_steps,
        "global_samples": run.global_steps * run.config.get("train_batch_size", 1),
        "dp_world_size": world, "mp_world_size": 1, "ds_config": run.config, "ds_version": VERSION}
    state.update(run.client_state)
    return state


def _zero12(run: Run, stage: int, world: int, rank: int, *, bf16_optimizer: bool, elastic: bool,
            round_robin: bool) -> tuple[dict[str, Any], list[OrderedDict[str, torch.Size]]]:
    """stage_1_and_2.py's (or bf16_optimizer.py's) ``state_dict`` for ``rank``, and param_shapes."""
    names = run.names()
    opt = run.optimizer
    fp32_partitions, lean, paddings, base_state, base_groups, lean_states, mappings = [], [], [], {}, [], [], []
    shapes = []
    for i, (group, params) in enumerate(zip(opt.param_groups, _trainable_groups(run), strict=True)):
        ordered = _round_robin(params, world) if round_robin and not bf16_optimizer else params
        shapes.append(OrderedDict((names[id(p)], p.shape) for p in ordered))
        orig = sum(p.numel() for p in ordered)
        align = 2 * world
        total = align * math.ceil(orig / align)

        def padded(tensors: list[torch.Tensor], total: int = total) -> torch.Tensor:
            v = _flat(tensors)
            return torch.cat([v, torch.zeros(total - v.numel())])

        size = total // world
        left = rank * size
        if bf16_optimizer:
            padding = total - orig if rank == world - 1 else 0
        else:
            padding = size if orig <= left else (left + size - orig if orig < left + size else 0)
        paddings.append(padding)
        part = padded(list(ordered))[left:left + size].clone()
        part.requires_grad = True
        fp32_partitions.append(part)
        lean.append(part[:size - padding] if not bf16_optimizer else part)
        moments = {k: padded([_state(opt, p, k) for p in ordered])[left:left + size].clone()
                   for k in ("exp_avg", "exp_avg_sq")}
        base_state[i] = {"step": _step(run), **moments}
        base_groups.append(_hyper(group, [i]))
        lean_states.append({"step": _step(run), **{k: v[:size - padding] for k, v in moments.items()}})
        mapping: OrderedDict[str, fragment_address] = OrderedDict()
        offset = 0
        for p in ordered:
            lo, hi = max(offset, left), min(offset + p.numel(), left + size)
            if lo < hi:
                mapping[names[id(p)]] = fragment_address(numel=hi - lo, start=lo - offset)
            offset += p.numel()
        mappings.append(mapping)
    if bf16_optimizer:
        sd: dict[str, Any] = {"clip_grad": 1.0, "base_optimizer_state": {"state": base_state,
                                                                         "param_groups": base_groups},
                              "single_partition_of_fp32_groups": fp32_partitions, "group_paddings": paddings,
                              "partition_count": [world] * len(paddings), "ds_version": VERSION,
                              "param_slice_mappings": mappings}
        return sd, shapes
    sd = {"loss_scaler": _scaler(run), "dynamic_loss_scale": run.scaler is not None, "overflow": False,
          "clip_grad": 1.0}
    if elastic:
        sd["base_optimizer_state"] = lean_states
        sd["base_optimizer_state_step"] = _step(run)
    else:
        sd["base_optimizer_state"] = {"state": base_state, "param_groups": base_groups}
    sd["single_partition_of_fp32_groups"] = lean
    sd["zero_stage"] = ZeroStageEnum.gradients if stage == 2 else ZeroStageEnum.optimizer_states
    sd["group_paddings"] = paddings
    sd["partition_count"] = [world] * len(paddings)
    sd["ds_version"] = VERSION
    sd["param_slice_mappings"] = mappings
    return sd, shapes


def _slice3(t: torch.Tensor, world: int, rank: int) -> torch.Tensor:
    part = math.ceil(t.numel() / world)
    v = t.detach().reshape(-1)
    v = torch.cat([v, torch.zeros(part * world - v.numel(), dtype=v.dtype)])
    return v[rank * part:(rank + 1) * part]


def _zero3(run: Run, world: int, rank: int, sub_group_size: int | None
           ) -> tuple[dict[str, Any], list[OrderedDict[str, torch.Size]]]:
    """stage3.py's ``_rigid_state_dict`` for ``rank``, and param_shapes (one per sub group)."""
    names = run.names()
    opt = run.optimizer
    sub_groups: list[tuple[int, list[nn.Parameter]]] = []
    for i, params in enumerate(_trainable_groups(run)):
        size = sum(math.ceil(p.numel() / world) for p in params)
        if sub_group_size is None or sub_group_size >= size:
            sub_groups.append((i, params))
            continue
        current: list[nn.Parameter] = []
        local = 0
        for p in params:
            current.append(p)
            local += math.ceil(p.numel() / world)
            if local >= sub_group_size or p is params[-1]:
                sub_groups.append((i, current))
                current, local = [], 0
    flats, state, groups = [], {}, [_hyper(g, []) for g in opt.param_groups]
    for k, (i, params) in enumerate(sub_groups):
        flat = torch.cat([_slice3(p.float(), world, rank) for p in params]).clone()
        flat.ds_id = f"{k}_{k}"
        flat.requires_grad = True
        flats.append(flat)
        state[k] = {"step": _step(run), **{key: torch.cat([_slice3(_state(opt, p, key), world, rank) for p in params])
                                           for key in ("exp_avg", "exp_avg_sq")}}
        groups[i]["params"].append(k)
    sd = {"zero_stage": ZeroStageEnum.weights, "loss_scaler": _scaler(run),
          "dynamic_loss_scale": run.scaler is not None, "overflow": False, "partition_count": world,
          "optimizer_state_dict": {"state": state, "param_groups": groups}, "fp32_flat_groups": flats}
    return sd, [OrderedDict((names[id(p)], p.shape) for p in params) for _, params in sub_groups]


def _fp16_optimizer(run: Run) -> dict[str, Any]:
    """fused_optimizer.py's ``FP16_Optimizer.state_dict`` (fp16 without ZeRO)."""
    opt = run.optimizer
    params = [g["params"] for g in opt.param_groups]
    scaler = _scaler(run)
    sd: dict[str, Any] = {"dynamic_loss_scale": scaler.dynamic, "cur_scale": scaler.cur_scale,
                          "cur_iter": getattr(scaler, "cur_iter", 0)}
    if scaler.dynamic:
        sd.update(last_overflow_iter=scaler.last_overflow_iter, scale_factor=2.0, scale_window=scaler.scale_window)
    sd["optimizer_state_dict"] = {
        "state": {i: {"step": _step(run), **{k: _flat([_state(opt, p, k) for p in ps])
                                             for k in ("exp_avg", "exp_avg_sq")}}
                  for i, ps in enumerate(params)},
        "param_groups": [_hyper(g, [i]) for i, g in enumerate(opt.param_groups)]}
    sd["fp32_groups_flat"] = [_flat(ps) for ps in params]
    sd["clip_grad"] = 0.0
    return sd


def write_checkpoint(save_dir: str, run: Run, *, stage: int, world: int, precision: str = "fp32",
                     tag: str | None = None, elastic: bool = False, round_robin: bool = False,
                     sub_group_size: int | None = None) -> str:
    """Write ``run`` as DeepSpeed's ``engine.save_checkpoint(save_dir, tag)`` would on
    ``world`` data-parallel ranks at ZeRO ``stage`` (0 with bf16: ``BF16_Optimizer``);
    returns the tag directory."""
    tag = tag or f"global_step{run.global_steps}"
    directory = os.path.join(save_dir, tag)
    os.makedirs(directory, exist_ok=True)
    prefix = "bf16_" if precision == "bf16" else ""
    config = {**run.config, "zero_optimization": {"stage": stage, "elastic_checkpoint": elastic},
              "fp16": {"enabled": precision == "fp16"}, "bf16": {"enabled": precision == "bf16"}}
    run = Run(**{**run.__dict__, "config": config})
    with deepspeed_modules():
        if stage == 0 and precision != "bf16":
            optimizer = _fp16_optimizer(run) if precision == "fp16" else run.optimizer.state_dict()
            torch.save(_model_states(run, stage=0, world=world, precision=precision, param_shapes=None,
                                     optimizer=optimizer), os.path.join(directory, "mp_rank_00_model_states.pt"))
        for rank in range(world if (stage > 0 or precision == "bf16") else 0):
            if stage == 3:
                sd, shapes = _zero3(run, world, rank, sub_group_size)
                frozen = OrderedDict((n, _slice3(p.to(_dtype(precision)), world, rank).clone())
                                     for n, p in run.model.named_parameters() if not p.requires_grad)
                torch.save(_model_states(run, stage=3, world=world, precision=precision, rank=rank,
                                         param_shapes=shapes, frozen_fragments=frozen),
                           os.path.join(directory, f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt"))
            else:
                sd, shapes = _zero12(run, stage, world, rank, bf16_optimizer=stage == 0, elastic=elastic,
                                     round_robin=round_robin)
                if rank == 0:
                    torch.save(_model_states(run, stage=stage, world=world, precision=precision, param_shapes=shapes),
                               os.path.join(directory, "mp_rank_00_model_states.pt"))
            torch.save({"optimizer_state_dict": sd, "ds_config": config, "ds_version": VERSION},
                       os.path.join(directory, f"{prefix}zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"))
    with open(os.path.join(save_dir, "latest"), "w") as f:
        f.write(tag)
    return directory


# -- a known run --------------------------------------------------------------------------------

WARMUP = {"warmup_min_lr": 0.001, "warmup_max_lr": 0.01, "warmup_num_steps": 10}


def warmup_lr(last_batch_iteration: int) -> float:
    """DeepSpeed's WarmupLR ("log") at ``last_batch_iteration``."""
    if last_batch_iteration < 0:
        return WARMUP["warmup_min_lr"]
    w = max(2, WARMUP["warmup_num_steps"])
    gamma = math.log(last_batch_iteration + 1) / math.log(w) if last_batch_iteration < w else 1.0
    return WARMUP["warmup_min_lr"] + (WARMUP["warmup_max_lr"] - WARMUP["warmup_min_lr"]) * gamma


class Net(nn.Module):
    """Odd sizes (so partitions are padded), a buffer, a frozen parameter and, with
    ``tied``, a layer sharing another's weight (as language models tie embeddings)."""

    def __init__(self, tied: bool = False) -> None:
        super().__init__()
        self.emb = nn.Linear(5, 7)
        self.body = nn.Sequential(nn.Linear(7, 9), nn.Tanh(), nn.Linear(9, 7))
        self.head = nn.Linear(7, 5)
        self.mix = nn.Linear(7, 7, bias=False) if tied else None
        self.unmix = nn.Linear(7, 7, bias=False) if tied else None
        if self.mix is not None and self.unmix is not None:
            self.unmix.weight = self.mix.weight
        self.register_buffer("scale", torch.tensor([1.5]))
        self.frozen = nn.Parameter(torch.full((3,), 0.25), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(self.emb(x)) * self.scale
        if self.mix is not None and self.unmix is not None:
            h = h + self.unmix(torch.tanh(self.mix(h)))
        out: torch.Tensor = self.head(h) + self.frozen.sum()
        return out


def batch(seed: int, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g), torch.randn(n, 5, generator=g)


def groups(model: nn.Module, weight_decay: float = 0.1) -> list[dict[str, Any]]:
    """DeepSpeedExamples' two groups: weight decay on the matrices, none on biases."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [{"params": [p for n, p in trainable if not n.endswith("bias")], "weight_decay": weight_decay},
            {"params": [p for n, p in trainable if n.endswith("bias")], "weight_decay": 0.0}]


def trained_run(steps: int = 3, seed: int = 0, tied: bool = False) -> Run:
    """``Net`` after ``steps`` AdamW steps under WarmupLR, plain PyTorch: what a DeepSpeed
    run holds at ``global_step<steps>`` (its lr already stepped to ``steps - 1``)."""
    torch.manual_seed(seed)
    model = Net(tied)
    optimizer = torch.optim.AdamW(groups(model), lr=warmup_lr(-1), betas=(0.9, 0.95), eps=1e-8)
    for i in range(steps):
        x, y = batch(100 + i)
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
        for g in optimizer.param_groups:
            g["lr"] = warmup_lr(i)  # WarmupLR.step(): last_batch_iteration i
    return Run(model, optimizer, last_batch_iteration=steps - 1, global_steps=steps,
               client_state={"epoch": 1, "best": 0.5, "note": "mid-epoch"}, config={"train_batch_size": 8})
