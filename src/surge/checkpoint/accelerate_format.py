"""Reading a checkpoint folder written by HF Accelerate's ``save_state``, so a run in
progress under Accelerate can continue under surge (``load_state`` detects the format).

[Note: Accelerate checkpoints]
Accelerate (1.x) writes, in one folder, without a manifest:

- ``model.safetensors``, ``model_<i>.safetensors`` (or ``pytorch_model.bin``,
  ``pytorch_model_<i>.bin`` with ``safe_serialization=False``; FSDP's
  ``FULL_STATE_DICT``: ``pytorch_model_fsdp.bin``, ``pytorch_model_fsdp_<i>.bin``): the
  i-th model's weights, as ``model.state_dict()`` of the *wrapped* model (DDP adds
  ``module.``, ``torch.compile`` ``_orig_mod.``; both are removed here);
- ``optimizer.bin``, ``optimizer_<i>.bin``: torch's ``optimizer.state_dict()``, keyed
  by position in the param groups. Accelerate loads it by position, and so does surge:
  the positions are named by the prepared optimizer's own (:func:`keys.named_positions`,
  the user's order), then loaded as surge's own name-keyed state, so it fits any
  strategy. FSDP's full optimizer state is already keyed by name;
- ``scheduler.bin``, ``scheduler_<i>.bin``: each scheduler's ``state_dict()``;
- ``scaler.pt``: the fp16 ``GradScaler``'s state;
- ``random_states_<rank>.pkl``: each process's RNG states (Python ``random``, NumPy's
  legacy state, torch CPU, CUDA, ...) and ``step`` (micro-steps in the epoch);
- ``custom_checkpoint_<i>.pkl``: ``state_dict()`` of each object given to
  ``register_for_checkpointing``;
- ``sampler.bin`` (the pickled sampler of an ``IterableDataset`` loader) and
  ``dl_state_dict.bin`` (``use_stateful_dataloader``): data position, which surge's
  loaders do not take from Accelerate (a warning says what to do instead). Without them
  Accelerate saves no data position at all: its scripts call ``skip_first_batches``,
  which works the same on surge's loaders, so loaders are left as they are.

Everything is read with ``torch.load(weights_only=True)``: unpickling runs no code. The
RNG files need a few NumPy types besides (the MT19937 key array); they are allowed
explicitly (:data:`surge.checkpoint.allowlist.NUMPY_RNG`) and nothing else is. DeepSpeed's folders and
FSDP's sharded / local layouts are refused with the way to convert them.
"""

from __future__ import annotations

import os
import re
import warnings
from typing import Any

import torch
from torch import nn

from surge.checkpoint.allowlist import NUMPY_RNG, importable, load_allowed
from surge.checkpoint.keys import by_name, inner_optimizer, load_named_state, named_positions, owner_index

# Accelerate's file names (``accelerate.utils`` exports them under these names, with these
# values; so does ``surge.utils``): what this reader looks for, see [Note: Accelerate checkpoints].
MODEL_NAME = "pytorch_model"
SAFE_MODEL_NAME = "model"
FSDP_MODEL_NAME = "pytorch_model_fsdp"
OPTIMIZER_NAME = "optimizer"
SCHEDULER_NAME = "scheduler"
SAMPLER_NAME = "sampler"
SCALER_NAME = "scaler.pt"
RNG_STATE_NAME = "random_states"
WEIGHTS_NAME = f"{MODEL_NAME}.bin"
WEIGHTS_PATTERN_NAME = MODEL_NAME + "{suffix}.bin"
WEIGHTS_INDEX_NAME = f"{WEIGHTS_NAME}.index.json"
SAFE_WEIGHTS_NAME = f"{SAFE_MODEL_NAME}.safetensors"
SAFE_WEIGHTS_PATTERN_NAME = SAFE_MODEL_NAME + "{suffix}.safetensors"
SAFE_WEIGHTS_INDEX_NAME = f"{SAFE_WEIGHTS_NAME}.index.json"

RNG_PREFIX = f"{RNG_STATE_NAME}_"
_WEIGHTS = (SAFE_MODEL_NAME + "{}.safetensors", MODEL_NAME + "{}.bin", FSDP_MODEL_NAME + "{}.bin")
_MARKERS = (SAFE_WEIGHTS_NAME, WEIGHTS_NAME, f"{FSDP_MODEL_NAME}.bin", f"{OPTIMIZER_NAME}.bin",
            f"{SCHEDULER_NAME}.bin", f"{RNG_PREFIX}0.pkl", MODEL_NAME, f"{FSDP_MODEL_NAME}_0")
_CONVERT = ("Convert it: load the checkpoint once under HF Accelerate and save_state with surge, or re-save that "
            "file with plain values (tensors, numbers, strings, lists, dicts) and load again.")


def is_accelerate_checkpoint(directory: str | os.PathLike[str]) -> bool:
    """True when ``directory`` looks like what Accelerate's ``save_state`` wrote (and is
    not a surge checkpoint)."""
    from surge.checkpoint.training import MANIFEST

    directory = os.fspath(directory)
    if not os.path.isdir(directory) or os.path.exists(os.path.join(directory, MANIFEST)):
        return False
    return any(os.path.exists(os.path.join(directory, name)) for name in _MARKERS)


def accelerate_save_finished(directory: str | os.PathLike[str]) -> bool:
    """True for an Accelerate checkpoint whose save got past its weights, optimizers and
    schedulers: every process writes its RNG file after them (Accelerate has no
    manifest; this is the best sign it gives)."""
    return is_accelerate_checkpoint(directory) and os.path.exists(os.path.join(directory, f"{RNG_PREFIX}0.pkl"))


def load_pickle(path: str) -> Any:
    """``torch.load(path, weights_only=True)`` allowing NumPy's RNG state types, nothing
    else (see checkpoint/allowlist.py).

    Raises:
        ValueError: the file is missing or corrupted, or holds another type (named, with
            how to convert the checkpoint).
    """
    return load_allowed(path, importable(NUMPY_RNG), kind="Accelerate checkpoint file",
                        allowed_text="NumPy's RNG state", convert=_CONVERT)


def _suffix(i: int) -> str:
    return f"_{i}" if i > 0 else ""


def _check_supported(directory: str) -> None:
    """Refuse the layouts this reader does not take, naming how to convert them."""
    names = set(os.listdir(directory))
    if "pytorch_model" in names and os.path.isdir(os.path.join(directory, "pytorch_model")):
        raise ValueError(f"{directory!r} is an Accelerate checkpoint of a DeepSpeed run (pytorch_model/ holds "
                         "DeepSpeed's own layout), which load_state does not read. Merge its weights with `surge "
                         f"merge-weights {os.path.join(directory, 'pytorch_model')} <output_dir>` (or DeepSpeed's "
                         "zero_to_fp32.py) and load them into the model before prepare(), or resume the whole run "
                         f"with surge's DeepSpeed engine: engine.load_checkpoint({directory!r}, tag='pytorch_model').")
    sharded = sorted(n for n in names if re.fullmatch(r"(pytorch_model_fsdp_\d+|optimizer_\d+)", n)
                     and os.path.isdir(os.path.join(directory, n)))
    local = sorted(n for n in names if re.fullmatch(r"(pytorch_model_fsdp|optimizer)(_\d+)?_rank\d+\.bin", n))
    if sharded or local:
        raise ValueError(f"{directory!r} holds FSDP's {'sharded' if sharded else 'local'} state_dict layout "
                         f"({', '.join((sharded or local)[:3])}), which load_state does not read from Accelerate. "
                         "Save it under Accelerate with fsdp_state_dict_type=FULL_STATE_DICT, or merge the model "
                         "with `accelerate merge-weights` and load the weights before prepare().")


def _strip_wrappers(weights: dict[str, Any]) -> dict[str, Any]:
    """Keys as in the user's module: without DDP's leading ``module.`` and compile's
    ``_orig_mod.`` (Accelerate saves the wrapped model's state dict)."""
    if weights and all(k.startswith("module.") for k in weights):
        weights = {k[len("module."):]: v for k, v in weights.items()}
    return {k.replace("_orig_mod.", ""): v for k, v in weights.items()}


def _load_weights(directory: str, model: nn.Module, i: int) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    from surge.checkpoint.full import load_safetensors

    paths = [os.path.join(directory, pattern.format(_suffix(i))) for pattern in _WEIGHTS]
    path = next((p for p in paths if os.path.exists(p)), None)
    if path is None:
        raise ValueError(f"Accelerate checkpoint {directory!r} has no weights for model {i} (looked for "
                         f"{', '.join(os.path.basename(p) for p in paths)}); prepare the same models as the run that "
                         "saved it (a save-state pre-hook may have saved them elsewhere: register the matching "
                         "load-state pre-hook).")
    loaded: dict[str, Any] = load_safetensors(path) if path.endswith(".safetensors") else load_pickle(path)
    weights = _strip_wrappers(loaded)
    # safetensors keeps one name of tied weights: the others are the same parameter.
    names = {id(p): n for n, p in model.named_parameters()}
    for full_name, p in model.named_parameters(remove_duplicate=False):
        name, first = full_name.removeprefix("module."), names[id(p)].removeprefix("module.")
        if name not in weights and first in weights:
            weights[name] = weights[first]
    try:
        set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, strict=True))
    except RuntimeError as exc:
        raise ValueError(f"the weights in {path!r} do not fit model {i}: {str(exc).strip().splitlines()[0]}") from None


def _named_optimizer_state(state: Any, optimizer: Any, names: list[str], path: str) -> dict[str, Any]:
    """Accelerate's (torch's) index-keyed optimizer state keyed by the parameter names of
    the prepared optimizer's positions."""
    if not (isinstance(state, dict) and isinstance(state.get("param_groups"), list)
            and isinstance(state.get("state"), dict)):
        raise ValueError(f"{path!r} is not an optimizer state dict (no 'state' and 'param_groups').")
    if all(isinstance(k, str) for k in state["state"]) and all(
            isinstance(p, str) for g in state["param_groups"] for p in g["params"]):
        return state  # FSDP's full optimizer state: keyed by name already
    saved = [len(g["params"]) for g in state["param_groups"]]
    mine = [len(g["params"]) for g in optimizer.param_groups]
    if saved != mine:
        raise ValueError(f"{path!r} holds optimizer state for param groups of {saved} parameters but the prepared "
                         f"optimizer's groups have {mine}; create the optimizer with the same parameters and groups, "
                         "in the same order, as the run that saved it.")
    return by_name(state, names)


def load_accelerate_checkpoint(directory: str, *, process_index: int, weighted: list[nn.Module],
                               models: list[nn.Module], optimizers: list[Any], schedulers: list[Any],
                               dataloaders: list[Any], custom_objects: list[Any],
                               load_precision_state: Any) -> int | None:
    """Load an Accelerate checkpoint folder (see [Note: Accelerate checkpoints]) into
    the prepared objects, in Accelerate's order; ``weighted`` are the models whose
    weights are loaded (the load-state pre-hooks' list), by position. Returns
    Accelerate's ``step`` from this process's RNG file (None without it).

    Raises:
        ValueError: a missing, unreadable or refused file, or objects that do not fit
            (named, with the fix).
    """
    _check_supported(directory)
    for i, model in enumerate(weighted):
        _load_weights(directory, model, i)
    for i, opt in enumerate(optimizers):
        path = os.path.join(directory, f"{OPTIMIZER_NAME}{_suffix(i)}.bin")
        inner = inner_optimizer(opt)
        model = models[owner_index(models, inner)]
        load_named_state(inner, model, _named_optimizer_state(load_pickle(path), inner, named_positions(model, inner),
                                                                path))
    for i, scheduler in enumerate(schedulers):
        scheduler.load_state_dict(load_pickle(os.path.join(directory, f"{SCHEDULER_NAME}{_suffix(i)}.bin")))
    _warn_data_position(directory, len(dataloaders))
    scaler = os.path.join(directory, SCALER_NAME)
    if os.path.exists(scaler):
        load_precision_state({"scaler": load_pickle(scaler)})
    step = _load_rng(directory, process_index)
    found = sorted(n for n in os.listdir(directory) if re.fullmatch(r"custom_checkpoint_\d+\.pkl", n))
    if len(found) != len(custom_objects):
        raise ValueError(f"Accelerate checkpoint {directory!r} holds {len(found)} custom_checkpoint_<i>.pkl files but "
                         f"{len(custom_objects)} objects are registered for checkpointing; register the same ones as "
                         "the run that saved it.")
    for i, obj in enumerate(custom_objects):
        obj.load_state_dict(load_pickle(os.path.join(directory, f"custom_checkpoint_{i}.pkl")))
    return step


def _warn_data_position(directory: str, loaders: int) -> None:
    for i in range(loaders):
        for name, what in ((f"dl_state_dict{_suffix(i)}.bin", "a StatefulDataLoader's position"),
                           (f"{SAMPLER_NAME}{_suffix(i)}.bin", "the pickled sampler of an IterableDataset loader")):
            if os.path.exists(os.path.join(directory, name)):
                warnings.warn(f"{os.path.join(directory, name)!r} ({what}) is not read: surge's prepared loader {i} "
                              "starts its epoch from the beginning. Skip the batches already trained on with "
                              "accelerator.skip_first_batches(loader, n).", stacklevel=4)


def _load_rng(directory: str, process_index: int) -> int | None:
    """Restore this process's random streams from ``random_states_<rank>.pkl``; returns
    its ``step``."""
    from surge.utils.random import RNGState, set_rng_state

    path = os.path.join(directory, f"{RNG_PREFIX}{process_index}.pkl")
    if not os.path.exists(path):
        warnings.warn(f"Accelerate checkpoint {directory!r} has no {os.path.basename(path)}: this process's random "
                      "streams continue unrestored.", stacklevel=3)
        return None
    states = load_pickle(path)
    try:
        version, internal, gauss = states["random_state"]
        rng: RNGState = {"python": [version, list(internal), gauss], "torch": states["torch_manual_seed"]}
        if "numpy_random_seed" in states:
            kind, keys, pos, has_gauss, cached = states["numpy_random_seed"]
            rng["numpy"] = [kind, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(cached)]
        if "torch_cuda_manual_seed" in states:
            rng["cuda"] = list(states["torch_cuda_manual_seed"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"{path!r} is not Accelerate's RNG state file ({type(exc).__name__}: {exc}).") from None
    set_rng_state(rng)
    step = states.get("step")
    return int(step) if step is not None else None
