"""Continuing a DeepSpeed run under surge: a checkpoint DeepSpeed wrote (read by
checkpoint/deepspeed_files.py, see [Note: DeepSpeed checkpoints] there) loaded into the
prepared model, optimizer, LR scheduler and loss scaler of a surge engine, whatever
strategy and world size that engine runs with. ``Engine.load_checkpoint`` calls it when
the tag directory is DeepSpeed's.

What is loaded follows DeepSpeed's ``load_checkpoint`` (runtime/engine.py):

- weights: the trainable parameters from the fp32 master partitions when optimizer
  states are loaded (or under ZeRO-3, whose module file holds placeholders), otherwise
  from the module's own (16-bit under fp16/bf16) weights, as DeepSpeed refreshes its
  masters from them; buffers and frozen parameters from the module;
- the optimizer state by parameter name (Adam's moments, the step), and each param
  group's hyperparameters (``lr``, ``betas``, ...) where they were saved; unlike
  DeepSpeed, at any world size and stage;
- the scheduler: DeepSpeed's schedules save ``{"last_batch_iteration": i}``, which surge's
  (closed-form) schedules take as ``last_epoch = i + 1`` (deepspeed/schedulers.py: the
  same timing as DeepSpeed's): the next steps get DeepSpeed's
  learning rates; a torch scheduler's state loads as is;
- the fp16 loss scale (and the dynamic scaler's iteration, last overflow and hysteresis);
- ``global_steps``, ``global_samples``, ``skipped_steps``; and the client state as
  DeepSpeed returns it: every top-level key of the model states file that is not its own.
"""

from __future__ import annotations

import warnings
from typing import Any

from torch import nn

from surge.checkpoint.deepspeed_files import (
    DeepSpeedCheckpoint,
    OptimizerGroup,
    loss_scale_state,
    model_weights,
    open_checkpoint,
    optimizer_groups,
    stage0_masters,
)
from surge.checkpoint.keys import inner_optimizer, load_named_state, named_positions

# What DeepSpeed's load_checkpoint keeps out of the client state it returns (engine.py
# ``_load_checkpoint``'s ``deepspeed_states``).
_ENGINE_KEYS = ("module", "sparse_tensor_module_names", "skipped_steps", "global_steps", "dp_world_size",
                "mp_world_size", "data_sampler", "random_ltd")


def load_deepspeed_checkpoint(directory: str, *, model: nn.Module, optimizer: Any, scheduler: Any, precision: Any,
                              strict: bool = True, load_optimizer_states: bool = True,
                              load_lr_scheduler_states: bool = True, load_module_only: bool = False,
                              train_batch_size: int | None = None) -> tuple[dict[str, Any], dict[str, int]]:
    """Load the DeepSpeed checkpoint tag directory ``directory`` into a surge engine's
    prepared objects (see the module docstring). Every process calls it and reads every
    file itself.

    Args:
        model: The prepared (wrapped) model.
        optimizer / scheduler: The prepared ones, or None.
        precision: The engine's precision plugin (its loss scaler takes the saved scale).

    Returns:
        ``(client_state, counters)``: DeepSpeed's client state, and the engine counters
        to restore (empty with ``load_module_only``).

    Raises:
        ValueError: an unreadable or refused file, or a checkpoint whose parameters,
            groups or shapes do not fit the engine (named, with the fix).
    """
    ckpt = open_checkpoint(directory)
    inner = inner_optimizer(optimizer) if optimizer is not None else None
    positions = _positions(model, inner) if inner is not None else None
    masters = load_optimizer_states and not load_module_only
    weights = model_weights(ckpt, masters=masters)
    fp32 = stage0_masters(ckpt, positions) if masters and not ckpt.zero and positions is not None else {}
    weights.update(fp32)
    _load_weights(model, weights, strict, ckpt, preferred=set(fp32))
    with_optimizer = inner is not None and load_optimizer_states and not load_module_only
    groups = optimizer_groups(ckpt, positions) if with_optimizer else None
    if with_optimizer and groups is not None:
        assert inner is not None and positions is not None
        load_named_state(inner, model, _named_state(groups, model, inner, positions, ckpt))
    if scheduler is not None and load_lr_scheduler_states and not load_module_only:
        restored_lr = with_optimizer and groups is not None and all(g.hyperparameters is not None for g in groups)
        _load_scheduler(scheduler, ckpt, restored_lr)
    if not load_module_only:
        _load_loss_scale(precision, ckpt)
    return _client_state(ckpt, load_optimizer_states, load_lr_scheduler_states, load_module_only), \
        ({} if load_module_only else _counters(ckpt, train_batch_size))


def _positions(model: nn.Module, optimizer: Any) -> list[list[str]]:
    """The parameter names of the optimizer's positions, per param group."""
    flat = iter(named_positions(model, optimizer))
    return [[next(flat) for _ in group["params"]] for group in optimizer.param_groups]


def _aliases(model: nn.Module) -> list[list[str]]:
    """Every name of each parameter (several for tied weights), as in the user's module."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(_user_name(name))
    return list(names.values())


def _load_weights(model: nn.Module, weights: dict[str, Any], strict: bool, ckpt: DeepSpeedCheckpoint, *,
                  preferred: set[str]) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    # Every name of a tied parameter gets one value: an fp32 master's (``preferred``) over a
    # 16-bit module copy, which would otherwise overwrite it depending on the load order.
    for names in _aliases(model):
        source = next((n for n in names if n in preferred), next((n for n in names if n in weights), None))
        if source is not None:
            value = weights[source]
            weights.update(dict.fromkeys(names, value))
    try:
        set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, strict=strict))
    except (RuntimeError, KeyError) as exc:
        raise ValueError(f"the weights of DeepSpeed checkpoint {ckpt.directory!r} do not fit the model: "
                         f"{str(exc).strip().splitlines()[0]} (load_checkpoint(..., load_module_strict=False) "
                         "tolerates missing or extra keys).") from None


def _user_name(name: str) -> str:
    """A prepared model's parameter name as in the user's module (DDP's ``module.`` and
    compile's ``_orig_mod.`` removed)."""
    return name.removeprefix("module.").replace("_orig_mod.", "")


def _named_state(groups: list[OptimizerGroup], model: nn.Module, optimizer: Any, positions: list[list[str]],
                 ckpt: DeepSpeedCheckpoint) -> dict[str, Any]:
    """surge's name-keyed optimizer state (checkpoint/keys.py) from DeepSpeed's groups:
    each of the optimizer's groups keeps its keys and takes the saved values of the
    DeepSpeed group its parameters came from."""
    owner = {name: j for j, names in enumerate(positions) for name in names}
    # DeepSpeed names a tied parameter by its first name, the positions may use another.
    rename = {alias: name for names in _aliases(model) for name in names if name in owner for alias in names}
    groups = [OptimizerGroup([rename.get(n, n) for n in g.names], g.hyperparameters,
                             {rename.get(n, n): v for n, v in g.state.items()}) for g in groups]
    saved: dict[int, dict[str, Any]] = {}
    state: dict[str, Any] = {}
    for i, group in enumerate(groups):
        missing = [n for n in group.names if n not in owner]
        if missing:
            raise ValueError(f"DeepSpeed checkpoint {ckpt.directory!r} holds optimizer state for {missing[:3]}, which "
                             "the optimizer here does not hold; build the optimizer over the same parameters as the "
                             "run that saved it.")
        targets = sorted({owner[n] for n in group.names})
        if len(targets) > 1 or (targets and group.hyperparameters is not None and targets[0] in saved):
            raise ValueError(f"DeepSpeed checkpoint {ckpt.directory!r}: its param group {i} does not map onto one "
                             f"param group of the optimizer here (its parameters are in groups {targets}); create the "
                             "optimizer with the same param groups as the run that saved it.")
        if targets and group.hyperparameters is not None:
            saved[targets[0]] = group.hyperparameters
        state.update(group.state)
    param_groups = []
    for j, (group, names) in enumerate(zip(optimizer.param_groups, positions, strict=True)):
        values = saved.get(j, {})
        param_groups.append({**{k: values.get(k, v) for k, v in group.items() if k != "params"}, "params": names})
    return {"state": state, "param_groups": param_groups}


def _load_scheduler(scheduler: Any, ckpt: DeepSpeedCheckpoint, restored_lr: bool) -> None:
    from torch.optim.lr_scheduler import LRScheduler

    saved = ckpt.model_states.get("lr_scheduler")
    if saved is None:
        warnings.warn(f"DeepSpeed checkpoint {ckpt.directory!r} has no lr_scheduler state (the run had no scheduler): "
                      "the scheduler here starts from its beginning.", stacklevel=4)
        return
    inner = getattr(scheduler, "scheduler", scheduler)
    if isinstance(saved, dict) and set(saved) == {"last_batch_iteration"} and isinstance(inner, LRScheduler):
        # DeepSpeed's last_batch_iteration i is surge's schedule at last_epoch i + 1 (see
        # deepspeed/schedulers.py); -1 (never stepped) is the schedule's start.
        last = max(int(saved["last_batch_iteration"]) + 1, 0)
        state = inner.state_dict()
        state.update(last_epoch=last, _step_count=last + 1)
        inner.load_state_dict(state)
        if not restored_lr:  # DeepSpeed's groups hold the schedule's lr at that point
            for group, lr in zip(inner.optimizer.param_groups, inner.get_lr(), strict=True):
                group["lr"] = lr
        inner._last_lr = [group["lr"] for group in inner.optimizer.param_groups]
        return
    try:
        scheduler.load_state_dict(saved)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"the lr_scheduler state in DeepSpeed checkpoint {ckpt.directory!r} ({sorted(saved)}) does "
                         f"not fit the scheduler here ({type(inner).__name__}: {exc}); use the same scheduler as the "
                         "run that saved it, or load_checkpoint(..., load_lr_scheduler_states=False).") from None


def _load_loss_scale(precision: Any, ckpt: DeepSpeedCheckpoint) -> None:
    saved = loss_scale_state(ckpt)
    if saved is None or not precision.has_loss_scaler:
        return
    state = precision.state_dict()
    scaler = dict(state.get("scaler") or {})
    if not scaler:
        return
    scaler["scale"] = float(saved["cur_scale"])
    extra = scaler.get("deepspeed")
    if extra is not None and "cur_iter" in saved:  # DeepSpeed's dynamic rule (precision/fp16.py)
        scaler["deepspeed"] = {"hysteresis_left": int(saved.get("cur_hysteresis", extra["hysteresis_left"])),
                               "iteration": int(saved["cur_iter"]),
                               "last_overflow": int(saved.get("last_overflow_iter", -1))}
    precision.load_state_dict({**state, "scaler": scaler})


def _counters(ckpt: DeepSpeedCheckpoint, train_batch_size: int | None) -> dict[str, int]:
    states = ckpt.model_states
    steps = int(states.get("global_steps", 0))
    samples = states.get("global_samples")
    if samples is None:
        samples = steps * (train_batch_size or 0)
    return {"global_steps": steps, "global_samples": int(samples), "skipped_steps": int(states.get("skipped_steps", 0))}


def _client_state(ckpt: DeepSpeedCheckpoint, load_optimizer_states: bool, load_lr_scheduler_states: bool,
                  load_module_only: bool) -> dict[str, Any]:
    """What DeepSpeed's load_checkpoint returns as the client state (engine.py)."""
    own = ["module"] if load_module_only else list(_ENGINE_KEYS)
    if load_lr_scheduler_states:
        own.append("lr_scheduler")
    if load_optimizer_states:
        own.append("optimizer")
    client = {k: v for k, v in ckpt.model_states.items() if k not in own}
    if (not load_module_only and load_optimizer_states and not ckpt.zero
            and ckpt.model_states.get("optimizer") is not None):
        client["optimizer"] = ckpt.model_states["optimizer"]  # DeepSpeed hands it back there too
    return client
