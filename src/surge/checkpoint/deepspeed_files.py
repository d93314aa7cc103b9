"""Reading a checkpoint written by DeepSpeed's own ``engine.save_checkpoint``: its files,
unpickled without running code, reassembled into full tensors keyed by parameter name
(weights, fp32 master weights, optimizer state), whatever ZeRO stage and data-parallel
size saved it. checkpoint/deepspeed_resume.py loads them into a surge engine;
``surge merge-weights`` writes the weights.

[Note: DeepSpeed checkpoints]
What DeepSpeed (0.16; the same layout since 0.10) writes under ``save_dir``
(runtime/engine.py ``save_checkpoint``, ``_save_checkpoint``, ``_save_zero_checkpoint``):

- ``latest``: the tag of the newest checkpoint (``global_step<N>`` unless named).
- ``<tag>/mp_rank_00_model_states.pt`` (under ZeRO-3: ``zero_pp_rank_<r>_mp_rank_00_model_states.pt``,
  one per rank, alike but for ``frozen_param_fragments``): ``module`` (``model.state_dict()``,
  16-bit under fp16/bf16; under ZeRO-3 empty placeholders for the partitioned parameters),
  ``buffer_names``, ``param_shapes`` (one ``OrderedDict`` name -> shape per flat group, in
  flat order: what ``engine._get_zero_param_shapes`` records), ``frozen_param_shapes`` /
  ``frozen_param_fragments`` (ZeRO-2/3: parameters without ``requires_grad``; ZeRO-3 keeps
  each rank's slice), ``shared_params`` (tied weights: alias -> the name holding the data),
  ``optimizer`` (only without ZeRO and bf16: the optimizer's own state dict, or fp16's
  ``FP16_Optimizer`` dict with ``fp32_groups_flat`` / ``fp32_groups`` and the loss scale),
  ``lr_scheduler``, ``global_steps``, ``global_samples``, ``skipped_steps``, ``dp_world_size``,
  ``mp_world_size``, ``ds_config``, ``ds_version``, ... and the user's ``client_state`` keys
  at the top level.
- ``<tag>/zero_pp_rank_<r>_mp_rank_00_optim_states.pt`` for each data-parallel rank ``r``
  (``bf16_zero_pp_rank_...`` when bf16 is on; bf16 without ZeRO writes them too, from
  ``BF16_Optimizer``): ``optimizer_state_dict`` holding ``zero_stage`` (an enum),
  ``partition_count``, ``loss_scaler`` (an object), and the fp32 masters with the optimizer
  state of this rank's partition:

  * ZeRO-1/2 (zero/stage_1_and_2.py ``state_dict``) and ``BF16_Optimizer``: each param
    group's trainable parameters, in ``param_shapes`` order, flattened back to back,
    zero-padded at the end to a multiple of ``2 * world_size`` and cut into
    ``world_size`` equal partitions; rank ``r`` holds partition ``r``
    (``single_partition_of_fp32_groups``; ZeRO-1/2 drop the padding, BF16_Optimizer keeps
    it). ``base_optimizer_state`` is torch's state dict of the inner optimizer over those
    flat partitions (padded), or with ``elastic_checkpoint`` one unpadded state dict per
    group plus ``base_optimizer_state_step``. Concatenating the ranks' pieces in rank order
    therefore starts with the parameters back to back, padded or not.
  * ZeRO-3 (zero/stage3.py ``_rigid_state_dict``): every parameter is split on its own:
    each rank holds ``ceil(numel / world_size)`` elements of it (the last rank's
    zero-padded), and a rank's flat group (``fp32_flat_groups``, one per sub group) is its
    slices of the sub group's parameters back to back. ``optimizer_state_dict`` is torch's
    state dict over those flat groups.

  ``utils/zero_to_fp32.py`` reassembles the weights the same way.
- ``expp_rank_*`` / ``layer_*_expert_*`` (MoE), ``layer_*-model_*`` (pipeline) and
  ``mp_rank_01`` and up (tensor parallelism) are layouts surge has no model for: refused.

The files are pickles holding a few DeepSpeed objects (the loss scaler, the stage enum,
fragment addresses). They are loaded with ``torch.load(weights_only=True)`` and stand-in
classes registered under DeepSpeed's names (:data:`DEEPSPEED_GLOBALS`): unpickling one
only sets its attributes, and nothing else is allowed (checkpoint/allowlist.py).
"""

from __future__ import annotations

import enum
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from surge.checkpoint.allowlist import NUMPY_RNG, NUMPY_SCALARS, importable, load_allowed

MODEL_STATES = "mp_rank_00_model_states.pt"
ZERO3_MODEL_STATES = "zero_pp_rank_{}_mp_rank_00_model_states.pt"
OPTIM_STATES = "{}zero_pp_rank_{}_mp_rank_00_optim_states.pt"
_PREFIXES = ("", "bf16_", "fp16_")
_OPTIM_PATTERN = re.compile(r"(bf16_|fp16_)?zero_pp_rank_(\d+)_mp_rank_00_?optim_states\.pt")
_REFUSED = (
    (re.compile(r"(expp_rank_\d+|(layer_\d+_)?expert_\d+)_mp_rank_\d+_(optim|model)_states\.pt"),
     "a Mixture-of-Experts model (expert files {files}); surge has no MoE layers"),
    (re.compile(r"layer_\d+-model_\d+-model_states\.pt"),
     "a pipeline-parallel model (PipelineModule layer files {files}); surge trains data-parallel only"),
    (re.compile(r"(zero_pp_rank_\d+_)?mp_rank_(0[1-9]|[1-9]\d)_(model|optim)_states\.pt"),
     "a tensor/model-parallel run (mp_rank_01 and up: {files}); surge trains data-parallel only"),
)
_CONVERT = ("To keep the whole training state, re-save that file with the object replaced by plain values (where "
            "you trust the file: torch.load(path, weights_only=False), replace it, torch.save); to keep the weights "
            "only, run DeepSpeed's zero_to_fp32.py (copied into the save directory) and load its output into the "
            "model before surge.initialize.")


class _Attributes:
    """A DeepSpeed object read back as its attributes: unpickling sets ``__dict__`` and
    runs nothing else."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class LossScalerBase(_Attributes):
    """``deepspeed.runtime.fp16.loss_scaler.LossScalerBase``'s pickled attributes."""


class LossScaler(LossScalerBase):
    """A static scale (``cur_scale``); DeepSpeed's ``LossScaler``."""


class DynamicLossScaler(LossScalerBase):
    """``cur_scale``, ``cur_iter``, ``last_overflow_iter``, ``cur_hysteresis``, ``scale_window``, ..."""


class FragmentAddress(_Attributes):
    """``deepspeed.utils.tensor_fragment.fragment_address`` (``numel``, ``start``)."""


class ZeroStageEnum(enum.IntEnum):
    """``deepspeed.runtime.zero.config.ZeroStageEnum``."""

    disabled = 0
    optimizer_states = 1
    gradients = 2
    weights = 3


_NUMERIC_DTYPES = tuple(f"numpy.dtypes.{n}DType" for n in (
    "Bool", "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64", "Float16", "Float32", "Float64"))
DEEPSPEED_GLOBALS: list[tuple[Any, str]] = [
    (LossScalerBase, "deepspeed.runtime.fp16.loss_scaler.LossScalerBase"),
    (LossScaler, "deepspeed.runtime.fp16.loss_scaler.LossScaler"),
    (DynamicLossScaler, "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler"),
    (ZeroStageEnum, "deepspeed.runtime.zero.config.ZeroStageEnum"),
    (FragmentAddress, "deepspeed.utils.tensor_fragment.fragment_address"),
]
"""What DeepSpeed's files pickle besides tensors and plain values, each read by a stand-in;
``argparse.Namespace`` (scripts put their ``args`` in ``client_state``) and NumPy scalars
and numeric arrays are allowed as they are."""


def load_file(path: str) -> Any:
    """One DeepSpeed file through the allow-list (memory-mapped: every process reads all
    ranks' files, and only the slices used are paged in).

    Raises:
        ValueError: missing, corrupted, or holding another type (named, with the conversion).
    """
    allowed = [*DEEPSPEED_GLOBALS, *importable(("argparse.Namespace", *NUMPY_SCALARS, *NUMPY_RNG, *_NUMERIC_DTYPES))]
    return load_allowed(path, allowed, kind="DeepSpeed checkpoint file", convert=_CONVERT, mmap=True,
                        allowed_text="DeepSpeed's loss scaler, stage enum and fragment addresses, argparse.Namespace "
                                     "and NumPy numbers")


def is_deepspeed_checkpoint(directory: str | os.PathLike[str]) -> bool:
    """True when ``directory`` is a checkpoint tag directory DeepSpeed wrote (its model
    states file, or a layout refused by :func:`open_checkpoint`), not a surge one."""
    from surge.checkpoint.training import MANIFEST

    directory = os.fspath(directory)
    if not os.path.isdir(directory) or os.path.exists(os.path.join(directory, MANIFEST)):
        return False
    names = os.listdir(directory)
    return (MODEL_STATES in names or ZERO3_MODEL_STATES.format(0) in names
            or any(p.fullmatch(n) for p, _ in _REFUSED for n in names))


@dataclass
class OptimizerGroup:
    """One of DeepSpeed's param groups, keyed by parameter name."""

    names: list[str]
    """Its trainable parameters, in DeepSpeed's flat order."""
    hyperparameters: dict[str, Any] | None
    """``lr``, ``betas``, ... as saved (None: not saved, as with ZeRO's ``elastic_checkpoint``)."""
    state: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per parameter: its full optimizer state (``exp_avg``, ``exp_avg_sq``, ``step`` as a tensor, ...)."""


@dataclass
class DeepSpeedCheckpoint:
    """A DeepSpeed checkpoint directory, read (see [Note: DeepSpeed checkpoints])."""

    directory: str
    model_states: dict[str, Any]
    """Rank 0's model states file."""
    stage: int
    """0-3 (0 also for ``BF16_Optimizer``'s partitioned files without ZeRO)."""
    world_size: int
    """The data-parallel size that saved it."""
    zero: list[dict[str, Any]] = field(default_factory=list)
    """Each rank's ``optimizer_state_dict`` from its optim states file (empty without them)."""
    frozen_fragments: list[dict[str, Any]] = field(default_factory=list)
    """ZeRO-3: each rank's ``frozen_param_fragments``."""

    @property
    def param_shapes(self) -> list[dict[str, torch.Size]]:
        shapes = self.model_states.get("param_shapes") or []
        return [{_clean(n): torch.Size(s) for n, s in group.items()} for group in shapes]

    @property
    def version(self) -> str:
        return str(self.model_states.get("ds_version", "unknown"))


def _clean(name: str) -> str:
    """A name as in the user's module (a compiled module's ``_orig_mod.`` removed)."""
    return name.replace("_orig_mod.", "")


def _refuse_other_layouts(directory: str, names: list[str]) -> None:
    for pattern, what in _REFUSED:
        found = sorted(n for n in names if pattern.fullmatch(n))
        if found:
            saved_by = what.format(files=", ".join(found[:3]))
            raise ValueError(f"DeepSpeed checkpoint {directory!r} was saved by {saved_by}. Load it under DeepSpeed "
                             "and save the model's full weights (zero_to_fp32.py or "
                             "engine.save_16bit_model), then load those into the model before surge.initialize.")
    if os.path.isdir(os.path.join(directory, "offloaded_tensors")):
        raise ValueError(f"DeepSpeed checkpoint {directory!r} keeps its optimizer state in offloaded_tensors/ (NVMe "
                         "offload), which only DeepSpeed reads. Convert the weights with zero_to_fp32.py; the "
                         "optimizer state cannot be carried over.")


def open_checkpoint(directory: str | os.PathLike[str]) -> DeepSpeedCheckpoint:
    """Read the DeepSpeed checkpoint tag directory ``directory``: its model states and
    every rank's ZeRO files.

    Raises:
        ValueError: not a DeepSpeed checkpoint, a layout surge has no model for (MoE,
            pipeline, tensor parallelism, NVMe), missing ranks' files, or unreadable files.
    """
    directory = os.fspath(directory)
    names = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
    _refuse_other_layouts(directory, names)
    zero3 = ZERO3_MODEL_STATES.format(0) in names
    model_file = os.path.join(directory, ZERO3_MODEL_STATES.format(0) if zero3 else MODEL_STATES)
    if not os.path.isfile(model_file):
        raise ValueError(f"{directory!r} is not a DeepSpeed checkpoint: it has no {MODEL_STATES} (nor "
                         f"{ZERO3_MODEL_STATES.format(0)}).")
    states = load_file(model_file)
    if not isinstance(states, dict) or "module" not in states:
        raise ValueError(f"{model_file!r} is not DeepSpeed's model states file (no 'module').")
    prefixes = {m.group(1) or "" for m in map(_OPTIM_PATTERN.fullmatch, names) if m}
    if len(prefixes) > 1:
        raise ValueError(f"DeepSpeed checkpoint {directory!r} mixes optim states files of several kinds "
                         f"({', '.join(sorted(p + 'zero_pp_rank_*' for p in prefixes))}); keep one save per tag.")
    ckpt = DeepSpeedCheckpoint(directory, states, stage=3 if zero3 else 0,
                               world_size=int(states.get("dp_world_size") or 1))
    if prefixes:
        ckpt.zero = _read_zero_files(directory, names, prefixes.pop(), ckpt)
        stage = ckpt.zero[0].get("zero_stage")
        ckpt.stage = int(stage) if stage is not None else 0
        count = ckpt.zero[0].get("partition_count", ckpt.world_size)
        ckpt.world_size = max(count) if isinstance(count, (list, tuple)) else int(count)
    elif zero3:
        raise ValueError(f"DeepSpeed ZeRO-3 checkpoint {directory!r} has no zero_pp_rank_*_optim_states.pt files: the "
                         "weights live only there; the save did not finish.")
    if zero3:
        ckpt.frozen_fragments = [ckpt.model_states.get("frozen_param_fragments") or {}]
        for rank in range(1, ckpt.world_size):
            path = os.path.join(directory, ZERO3_MODEL_STATES.format(rank))
            if ckpt.model_states.get("frozen_param_shapes"):
                ckpt.frozen_fragments.append(load_file(path).get("frozen_param_fragments") or {})
    return ckpt


def _read_zero_files(directory: str, names: list[str], prefix: str, ckpt: DeepSpeedCheckpoint) -> list[dict[str, Any]]:
    files = {int(m.group(2)): n for n in names if (m := _OPTIM_PATTERN.fullmatch(n)) and (m.group(1) or "") == prefix}
    first = load_file(os.path.join(directory, files[min(files)])).get("optimizer_state_dict")
    if not isinstance(first, dict):
        raise ValueError(f"{os.path.join(directory, files[min(files)])!r} has no DeepSpeed optimizer_state_dict.")
    count = first.get("partition_count", ckpt.world_size)
    world = max(count) if isinstance(count, (list, tuple)) else int(count)
    if sorted(files) != list(range(world)):
        raise ValueError(f"DeepSpeed checkpoint {directory!r} was saved by {world} data-parallel ranks but holds the "
                         f"{prefix}zero_pp_rank_*_optim_states.pt files of ranks {sorted(files)}: a rank did not "
                         "finish saving, or files of another save were mixed in.")
    zero = [first]
    for rank in range(1, world):
        loaded = load_file(os.path.join(directory, files[rank])).get("optimizer_state_dict")
        if not isinstance(loaded, dict):
            raise ValueError(f"{os.path.join(directory, files[rank])!r} has no DeepSpeed optimizer_state_dict.")
        zero.append(loaded)
    return zero


# -- reassembling flat partitions ------------------------------------------------------------


def _flat(pieces: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in pieces]) if pieces else torch.empty(0)


def _unflatten(ckpt: DeepSpeedCheckpoint, pieces: list[torch.Tensor], shapes: Mapping[str, torch.Size],
               what: str) -> dict[str, torch.Tensor]:
    """Full tensors from each rank's piece of one flat group (see [Note: DeepSpeed
    checkpoints]): ranks hold consecutive slices (ZeRO-1/2, BF16_Optimizer) or a slice of
    every parameter (ZeRO-3)."""
    needed = sum(s.numel() for s in shapes.values())
    out: dict[str, torch.Tensor] = {}
    if ckpt.stage == 3:
        world = len(pieces)
        parts = {n: math.ceil(s.numel() / world) for n, s in shapes.items()}
        have = min((p.numel() for p in pieces), default=0)
        if have < sum(parts.values()):
            raise ValueError(_mismatch(ckpt, what, have * world, needed))
        offset = 0
        for name, shape in shapes.items():
            full = torch.cat([p.reshape(-1)[offset:offset + parts[name]] for p in pieces])
            out[name] = full[:shape.numel()].clone().view(shape)
            offset += parts[name]
        return out
    vector = _flat(pieces)
    if vector.numel() < needed:
        raise ValueError(_mismatch(ckpt, what, vector.numel(), needed))
    offset = 0
    for name, shape in shapes.items():
        out[name] = vector[offset:offset + shape.numel()].clone().view(shape)
        offset += shape.numel()
    return out


def _mismatch(ckpt: DeepSpeedCheckpoint, what: str, have: int, needed: int) -> str:
    return (f"DeepSpeed checkpoint {ckpt.directory!r}: the {what} hold {have} elements but its param_shapes need "
            f"{needed}; its files do not belong together (a rank's file from another save?), or DeepSpeed "
            f"{ckpt.version} wrote a layout surge does not know.")


def _count_mismatch(ckpt: DeepSpeedCheckpoint, what: str, have: int, needed: int) -> str:
    return (f"DeepSpeed checkpoint {ckpt.directory!r}: its optim states files hold {have} {what} but its param_shapes "
            f"{needed}; its files do not belong together, or DeepSpeed {ckpt.version} wrote a layout surge does not "
            "know.")


def _master_pieces(ckpt: DeepSpeedCheckpoint) -> list[list[torch.Tensor]]:
    """For each flat group (param_shapes' groups), each rank's fp32 piece."""
    if ckpt.stage == 3:
        # Sub groups may not follow param_shapes' grouping one to one: ZeRO-3 is
        # reassembled over all of a rank's sub groups at once (as zero_to_fp32.py does).
        return [[_flat(list(z["fp32_flat_groups"])) for z in ckpt.zero]]
    key = "single_partition_of_fp32_groups"
    groups = len(ckpt.zero[0][key])
    return [[z[key][i] for z in ckpt.zero] for i in range(groups)]


def _group_shapes(ckpt: DeepSpeedCheckpoint) -> list[dict[str, torch.Size]]:
    shapes = ckpt.param_shapes
    if ckpt.stage == 3:
        return [{n: s for group in shapes for n, s in group.items()}]
    return shapes


def master_weights(ckpt: DeepSpeedCheckpoint) -> dict[str, torch.Tensor]:
    """The fp32 master weights of every trainable parameter, from the ZeRO files."""
    shapes, pieces = _group_shapes(ckpt), _master_pieces(ckpt)
    if len(shapes) != len(pieces):
        raise ValueError(_count_mismatch(ckpt, "flat groups", len(pieces), len(shapes)))
    out: dict[str, torch.Tensor] = {}
    for group_shapes, group_pieces in zip(shapes, pieces, strict=True):
        out.update(_unflatten(ckpt, group_pieces, group_shapes, "fp32 master partitions"))
    return out


def model_weights(ckpt: DeepSpeedCheckpoint, *, masters: bool = True) -> dict[str, torch.Tensor]:
    """The model's full state dict: the module's weights and buffers, with the trainable
    parameters from the fp32 masters when ``masters`` and the checkpoint has them
    (ZeRO-3 always: its module holds placeholders), frozen ones from their fragments,
    and tied aliases.

    Raises:
        ValueError: the files do not fit together (named).
    """
    module = {_clean(k): v for k, v in ckpt.model_states["module"].items()}
    buffers = {_clean(n) for n in ckpt.model_states.get("buffer_names") or []}
    if ckpt.stage == 3:
        weights = {k: v for k, v in module.items() if k in buffers}
        for name, shape in (ckpt.model_states.get("frozen_param_shapes") or {}).items():
            pieces = [f[name] for f in ckpt.frozen_fragments]
            weights[_clean(name)] = _flat(pieces)[:torch.Size(shape).numel()].clone().view(torch.Size(shape))
    else:
        weights = dict(module)
    if ckpt.zero and (masters or ckpt.stage == 3):
        weights.update(master_weights(ckpt))
    for alias, source in (ckpt.model_states.get("shared_params") or {}).items():
        if _clean(source) in weights:
            weights[_clean(alias)] = weights[_clean(source)]
    return weights


# -- optimizer state ------------------------------------------------------------------------------


def _step_tensor(step: Any) -> torch.Tensor:
    """A step count as torch's optimizers keep it (a float32 scalar tensor, one per
    parameter: they increment it in place)."""
    value = float(step.item()) if isinstance(step, torch.Tensor) else float(step)
    return torch.tensor(value, dtype=torch.float32)


def _split_state(ckpt: DeepSpeedCheckpoint, flat_states: list[dict[str, Any]], shapes: Mapping[str, torch.Size],
                 step: Any) -> dict[str, dict[str, Any]]:
    """Each rank's state of one flat group -> the state of each parameter in it."""
    if not flat_states or not flat_states[0]:
        return {}
    per_name: dict[str, dict[str, Any]] = {name: {} for name in shapes}
    for key, value in flat_states[0].items():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            full = _unflatten(ckpt, [s[key] for s in flat_states], shapes, f"optimizer state '{key}' partitions")
            for name in shapes:
                per_name[name][key] = full[name].float() if full[name].is_floating_point() else full[name]
        elif key != "step":
            for name in shapes:
                per_name[name][key] = value
    saved_step = flat_states[0].get("step", step)
    if saved_step is not None:
        for name in shapes:
            per_name[name]["step"] = _step_tensor(saved_step)
    return per_name


def _hyperparameters(group: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in group.items() if k not in ("params", "param_names")}


def _zero_optimizer(ckpt: DeepSpeedCheckpoint) -> list[OptimizerGroup]:
    shapes = ckpt.param_shapes
    # ZeRO-1/2 and BF16_Optimizer: base_optimizer_state; ZeRO-3: optimizer_state_dict
    key = "optimizer_state_dict" if ckpt.stage == 3 else "base_optimizer_state"
    if any(z.get(key) is None for z in ckpt.zero):
        return [OptimizerGroup(list(s), None) for s in shapes]
    base: list[Any] = [z[key] for z in ckpt.zero]
    if isinstance(base[0], list):  # ZeRO-1/2's elastic_checkpoint: one unpadded state per group
        step = ckpt.zero[0].get("base_optimizer_state_step")
        return [OptimizerGroup(list(s), None, _split_state(ckpt, [b[i] for b in base], s, step))
                for i, s in enumerate(shapes)]
    groups = base[0]["param_groups"]
    if ckpt.stage != 3:
        if len(groups) != len(shapes):
            raise ValueError(_count_mismatch(ckpt, "optimizer param groups", len(groups), len(shapes)))
        return [OptimizerGroup(list(s), _hyperparameters(g),
                               _split_state(ckpt, [b["state"].get(g["params"][0], {}) for b in base], s,
                                            g.get("step")))
                for s, g in zip(shapes, groups, strict=True)]
    # ZeRO-3: sub group k is the optimizer's parameter k (its flat), listed in the param
    # group it came from. A rank's state of all sub groups is reassembled at once, then
    # the parameters go back to their groups.
    if sorted(k for g in groups for k in g["params"]) != list(range(len(shapes))):
        raise ValueError(_count_mismatch(ckpt, "optimizer sub groups", sum(len(g["params"]) for g in groups),
                                         len(shapes)))
    flat_states = []
    for b in base:
        subs = [b["state"].get(k, {}) for k in range(len(shapes))]
        flat_states.append({key: _flat([s[key] for s in subs]) if isinstance(v, torch.Tensor) and v.dim() > 0 else v
                            for key, v in (subs[0] if subs else {}).items()})
    merged = {n: s for group in shapes for n, s in group.items()}
    state = _split_state(ckpt, flat_states, merged, groups[0].get("step") if groups else None)
    named = []
    for g in groups:
        names = [n for k in g["params"] for n in shapes[k]]
        named.append(OptimizerGroup(names, _hyperparameters(g), {n: state[n] for n in names if n in state}))
    return named


def _stage0_optimizer(ckpt: DeepSpeedCheckpoint, positions: list[list[str]] | None) -> list[OptimizerGroup] | None:
    saved = ckpt.model_states.get("optimizer")
    if saved is None:
        return None
    if positions is None:
        raise ValueError(f"DeepSpeed checkpoint {ckpt.directory!r} (no ZeRO) keys its optimizer state by position; "
                         "name the positions with the optimizer it is loaded into.")
    inner = saved.get("optimizer_state_dict", saved)
    groups = inner["param_groups"]
    if [len(g) for g in positions] != [len(g["params"]) for g in groups] and "fp32_groups_flat" not in saved:
        raise ValueError(f"DeepSpeed checkpoint {ckpt.directory!r} holds optimizer state for param groups of "
                         f"{[len(g['params']) for g in groups]} parameters but the optimizer here has "
                         f"{[len(g) for g in positions]}; create it with the same parameters and groups, in the same "
                         "order, as the run that saved it.")
    if len(positions) != len(groups):
        raise ValueError(f"DeepSpeed checkpoint {ckpt.directory!r} holds {len(groups)} optimizer param groups but the "
                         f"optimizer here has {len(positions)}; create it with the same groups.")
    out: list[OptimizerGroup] = []
    for names, group in zip(positions, groups, strict=True):
        if "fp32_groups_flat" in saved:  # FP16_Optimizer (fused): one flat fp32 tensor per group
            shapes = _stage0_shapes(ckpt, names, saved["fp32_groups_flat"][len(out)])
            state = _split_state(ckpt, [inner["state"].get(group["params"][0], {})], shapes, group.get("step"))
        else:
            state = {n: {k: (_step_tensor(v) if k == "step" else v.clone() if isinstance(v, torch.Tensor) else v)
                         for k, v in inner["state"][i].items()}
                     for n, i in zip(names, group["params"], strict=True) if i in inner["state"]}
        out.append(OptimizerGroup(list(names), _hyperparameters(group), state))
    return out


def _stage0_shapes(ckpt: DeepSpeedCheckpoint, names: list[str], flat: torch.Tensor) -> dict[str, torch.Size]:
    """The shapes of one of FP16_Optimizer's flat groups (its parameters back to back, no
    padding), from the module's weights."""
    module = {_clean(k): v for k, v in ckpt.model_states["module"].items()}
    missing = [n for n in names if n not in module]
    if missing:
        raise ValueError(f"DeepSpeed checkpoint {ckpt.directory!r} has no weights for {missing[:3]}, which the "
                         "optimizer here holds; build the optimizer over the same parameters as the run that saved it.")
    shapes = {n: module[n].shape for n in names}
    if sum(s.numel() for s in shapes.values()) != flat.numel():
        raise ValueError(f"DeepSpeed checkpoint {ckpt.directory!r}: an fp16 optimizer group holds {flat.numel()} "
                         f"elements but the parameters of that group here ({len(names)}) have "
                         f"{sum(s.numel() for s in shapes.values())}; create the optimizer with the same parameters "
                         "and groups, in the same order, as the run that saved it.")
    return shapes


def stage0_masters(ckpt: DeepSpeedCheckpoint, positions: list[list[str]]) -> dict[str, torch.Tensor]:
    """fp16 without ZeRO: the fp32 masters ``FP16_Optimizer`` keeps (none otherwise)."""
    saved = ckpt.model_states.get("optimizer") or {}
    if "fp32_groups_flat" in saved:
        out: dict[str, torch.Tensor] = {}
        for names, flat in zip(positions, saved["fp32_groups_flat"], strict=True):
            out.update(_unflatten(ckpt, [flat], _stage0_shapes(ckpt, names, flat), "fp32_groups_flat"))
        return out
    if "fp32_groups" in saved:  # FP16_UnfusedOptimizer: one fp32 tensor per parameter
        return {n: t.detach().clone() for names, ts in zip(positions, saved["fp32_groups"], strict=True)
                for n, t in zip(names, ts, strict=True)}
    return {}


def optimizer_groups(ckpt: DeepSpeedCheckpoint, positions: list[list[str]] | None = None
                     ) -> list[OptimizerGroup] | None:
    """The optimizer state of the checkpoint by parameter name, one entry per DeepSpeed
    param group; None when it holds none. ``positions`` (the names of the optimizer's
    positions, per group) are needed only without ZeRO, whose state is keyed by position.

    Raises:
        ValueError: the files do not fit together, or the groups do not fit ``positions``.
    """
    if not ckpt.zero:
        return _stage0_optimizer(ckpt, positions)
    return _zero_optimizer(ckpt)


def loss_scale_state(ckpt: DeepSpeedCheckpoint) -> dict[str, Any] | None:
    """The fp16 loss scaler as saved (``cur_scale``, and for a dynamic one ``cur_iter``,
    ``last_overflow_iter``, ``cur_hysteresis``); None without fp16 loss scaling."""
    if ckpt.zero:
        scaler = ckpt.zero[0].get("loss_scaler")
        if isinstance(scaler, DynamicLossScaler):
            return dict(vars(scaler))
        if isinstance(scaler, LossScalerBase) and float(getattr(scaler, "cur_scale", 1.0)) != 1.0:
            return {"cur_scale": getattr(scaler, "cur_scale", 1.0)}
        return None
    saved = ckpt.model_states.get("optimizer") or {}
    if "cur_scale" not in saved:
        return None
    keys = ("cur_scale", "cur_iter", "last_overflow_iter") if saved.get("dynamic_loss_scale") else ("cur_scale",)
    return {k: saved[k] for k in keys if k in saved}
