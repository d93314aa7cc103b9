"""DeepSpeed's activation checkpointing API (``deepspeed.checkpointing``) on torch.utils.checkpoint.

DeepSpeed checkpoints no activations on its own. A model (Megatron-style) wraps its
blocks in ``deepspeed.checkpointing.checkpoint(block, *args)``, after
``deepspeed.checkpointing.configure(mpu, deepspeed_config=...)`` has read the config's
``activation_checkpointing`` section. The same calls work here as ``surge.checkpointing``
(``import surge as deepspeed``); surge's own per-block checkpointing (the FSDP plugin's
``activation_checkpointing=True``) is a different switch and is unchanged.

Example:
    >>> import surge as deepspeed
    >>> deepspeed.checkpointing.configure(None, deepspeed_config="ds.json")
    >>> hidden = deepspeed.checkpointing.checkpoint(layer, hidden, mask)

[Note: DeepSpeed's checkpoint]
- Torch's non-reentrant checkpoint: the region runs without saving its activations, only
  its inputs are kept, and backward runs it again to rebuild them (DeepSpeed's
  CheckpointFunction is reentrant; the numbers are the same). Non-reentrant keeps the
  region's parameters in the autograd graph, so DDP's unused-parameter detection (ZeRO-0/1
  under a DeepSpeed config) works with it, and the parameters inside a region whose inputs
  need no gradient still get theirs (DeepSpeed silently leaves them without: a plain
  error, not reproduced).
- The recomputation sees the forward's random numbers: torch restores the CPU and device
  generators, and the states of the model-parallel RNG tracker are restored here too
  (``get_cuda_rng_tracker().fork()`` inside a region, as Megatron's dropout does).
- ``cpu_checkpointing``: the kept inputs are copies in CPU memory (pinned on CUDA), copied
  back to their device when backward recomputes the region; the device tensors are not
  held for backward.
- ``partition_activations`` splits checkpoints across model-parallel ranks and
  ``contiguous_memory_optimization`` copies them into one buffer: surge has no model
  parallelism and no such buffer, so both are accepted and change nothing.
- ``synchronize_checkpoint_boundary`` synchronizes the device where each region's forward
  and backward start and end; ``profile`` logs their times (logger ``surge.checkpointing``).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from surge.deepspeed.ds_config import ActivationCheckpointingSettings, parse_deepspeed_config

_log = logging.getLogger("surge.checkpointing")
_MODEL_PARALLEL_RNG = "model-parallel-rng"


@dataclasses.dataclass
class _State:
    """The process-wide configuration (DeepSpeed's module globals): ``configure`` sets it."""

    settings: ActivationCheckpointingSettings = dataclasses.field(default_factory=ActivationCheckpointingSettings)
    configured: bool = False
    mpu: Any = None


_STATE = _State()


def _device_rng() -> bool:
    return torch.cuda.is_available()


def _get_rng_state() -> torch.Tensor:
    return torch.cuda.get_rng_state() if _device_rng() else torch.get_rng_state()


def _set_rng_state(state: torch.Tensor) -> None:
    if _device_rng():
        torch.cuda.set_rng_state(state)
    else:
        torch.set_rng_state(state)


def _manual_seed(seed: int) -> None:
    if _device_rng():
        torch.cuda.manual_seed(seed)
    else:
        torch.manual_seed(seed)


class CudaRNGStatesTracker:
    """Named RNG states (DeepSpeed's and Megatron's tracker): ``fork(name)`` runs a block on
    that state and keeps its advance, leaving the default generator as it was. The states
    are the CUDA generator's, or the CPU generator's on a machine without CUDA."""

    def __init__(self) -> None:
        self.states_: dict[str, torch.Tensor] = {}
        self.seeds_: set[int] = set()

    def reset(self) -> None:
        """Forget every state."""
        self.states_ = {}
        self.seeds_ = set()

    def get_states(self) -> dict[str, torch.Tensor]:
        """A copy of the name -> state mapping."""
        return copy.copy(self.states_)

    def set_states(self, states: dict[str, torch.Tensor]) -> None:
        """Replace the states (from :meth:`get_states`)."""
        self.states_ = states

    def add(self, name: str, seed: int) -> None:
        """Track a new state ``name`` seeded with ``seed``.

        Raises:
            ValueError: the seed or the name is already tracked.
        """
        if seed in self.seeds_:
            raise ValueError(f"RNG tracker seed {seed} is already used; give each state its own seed.")
        if name in self.states_:
            raise ValueError(f"RNG tracker state {name!r} already exists; reset() the tracker first.")
        self.seeds_.add(seed)
        original = _get_rng_state()
        _manual_seed(seed)
        self.states_[name] = _get_rng_state()
        _set_rng_state(original)

    @contextlib.contextmanager
    def fork(self, name: str = _MODEL_PARALLEL_RNG) -> Iterator[None]:
        """Run the block on the state ``name``.

        Raises:
            ValueError: no state of that name (see :meth:`add`).
        """
        if name not in self.states_:
            raise ValueError(f"RNG tracker state {name!r} was never added; call model_parallel_cuda_manual_seed(seed) "
                             "or get_cuda_rng_tracker().add(name, seed) first.")
        original = _get_rng_state()
        _set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = _get_rng_state()
            _set_rng_state(original)


_RNG_TRACKER = CudaRNGStatesTracker()


def get_cuda_rng_tracker() -> CudaRNGStatesTracker:
    """The process's RNG tracker (DeepSpeed's name)."""
    return _RNG_TRACKER


def _tensor_parallel_rank() -> int:
    mpu = _STATE.mpu
    for name in ("get_tensor_model_parallel_rank", "get_model_parallel_rank"):
        if mpu is not None and hasattr(mpu, name):
            return int(getattr(mpu, name)())
    return 0


def model_parallel_cuda_manual_seed(seed: int) -> None:
    """Seed the default generator with ``seed`` and the tracker's model-parallel state with
    ``seed + 2718 + tensor-parallel rank`` (DeepSpeed's and Megatron's rule; the rank comes
    from the ``mpu`` given to :func:`configure`, else 0)."""
    _RNG_TRACKER.reset()
    _manual_seed(seed)
    _RNG_TRACKER.add(_MODEL_PARALLEL_RNG, seed + 2718 + _tensor_parallel_rank())


def model_parallel_reconfigure_tp_seed(seed: int) -> None:
    """Reseed the tracker's model-parallel state (DeepSpeed's helper)."""
    with _RNG_TRACKER.fork():
        _manual_seed(seed + 2718 + _tensor_parallel_rank())


def configure(mpu_: Any, deepspeed_config: dict[str, Any] | str | os.PathLike[str] | None = None,
              partition_activations: bool | None = None, contiguous_checkpointing: bool | None = None,
              num_checkpoints: int | None = None, checkpoint_in_cpu: bool | None = None,
              synchronize: bool | None = None, profile: bool | None = None) -> None:
    """Configure activation checkpointing, DeepSpeed's way: defaults, then the
    ``activation_checkpointing`` section of ``deepspeed_config`` (a dict or JSON path),
    then each argument given. ``mpu_`` (Megatron's model-parallel unit, or None) gives the
    tensor-parallel rank for :func:`model_parallel_cuda_manual_seed`.

    Raises:
        ValueError: a bad config; ``contiguous_checkpointing`` without
            ``partition_activations`` or without ``num_checkpoints`` (DeepSpeed refuses both).
    """
    settings = ActivationCheckpointingSettings()
    if deepspeed_config is not None:
        settings = parse_deepspeed_config(deepspeed_config).activation_checkpointing or settings
    given: dict[str, Any] = {
        "partition_activations": partition_activations, "contiguous_memory_optimization": contiguous_checkpointing,
        "number_checkpoints": num_checkpoints, "cpu_checkpointing": checkpoint_in_cpu,
        "synchronize_checkpoint_boundary": synchronize, "profile": profile}
    settings = dataclasses.replace(settings, **{k: v for k, v in given.items() if v is not None})
    if settings.contiguous_memory_optimization and not settings.partition_activations:
        raise ValueError("activation checkpointing: contiguous_memory_optimization needs partition_activations "
                         "(DeepSpeed refuses it alone too); set both, or neither.")
    if settings.contiguous_memory_optimization and settings.number_checkpoints is None:
        raise ValueError("activation checkpointing: contiguous_memory_optimization needs number_checkpoints (the "
                         "number of checkpointed layers); DeepSpeed refuses it without too.")
    _STATE.settings = settings
    _STATE.configured = True
    if mpu_ is not None:
        _STATE.mpu = mpu_


def is_configured() -> bool:
    """True once :func:`configure` has been called (DeepSpeed's query)."""
    return _STATE.configured


def reset() -> None:
    """DeepSpeed frees its contiguous checkpoint buffers here; surge keeps none, so there is
    nothing to free (kept so scripts that call it between evaluations run unchanged)."""


def set_num_layers(nlayers: int) -> None:
    """Set ``number_checkpoints`` (DeepSpeed's helper)."""
    _STATE.settings = dataclasses.replace(_STATE.settings, number_checkpoints=nlayers)


def partition_activations_in_checkpoint(partition_activation: bool) -> None:
    """Set ``partition_activations`` (DeepSpeed's helper; no effect without model parallelism)."""
    _STATE.settings = dataclasses.replace(_STATE.settings, partition_activations=partition_activation)


def _synchronize() -> None:
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and accelerator.is_available():
        accelerator.synchronize()


def _pack_on_cpu(tensor: torch.Tensor) -> tuple[torch.device, torch.Tensor]:
    """cpu_checkpointing's saved-tensor hook: keep a region's input in CPU memory (pinned
    when CUDA is there, so the copy back can overlap); CPU tensors are kept as they are."""
    if tensor.device.type == "cpu":
        return tensor.device, tensor
    kept = torch.empty(tensor.size(), dtype=tensor.dtype, layout=tensor.layout,
                       pin_memory=torch.cuda.is_available() and not tensor.is_sparse)
    kept.copy_(tensor)
    return tensor.device, kept


def _unpack_from_cpu(packed: tuple[torch.device, torch.Tensor]) -> torch.Tensor:
    device, kept = packed
    return kept.to(device, non_blocking=kept.is_pinned())


def _first_grad_fn(outputs: Any) -> Any:
    for out in outputs if isinstance(outputs, (tuple, list)) else (outputs,):
        if isinstance(out, torch.Tensor) and out.grad_fn is not None:
            return out.grad_fn
    return None


def checkpoint(function: Callable[..., Any], *args: Any) -> Any:
    """Run ``function(*args)`` keeping only ``args`` for backward, which runs it again
    (DeepSpeed's ``deepspeed.checkpointing.checkpoint``; see [Note: DeepSpeed's checkpoint]).

    Returns:
        What ``function`` returns. Without autograd (``torch.no_grad()``), it is simply called.
    """
    from torch.utils.checkpoint import checkpoint as torch_checkpoint

    if not torch.is_grad_enabled():
        return function(*args)
    settings = _STATE.settings
    tracker_states = _RNG_TRACKER.get_states()
    timing = {"calls": 0, "backward": 0.0}

    # The region's inputs for the recomputation: the tensors themselves, or (cpu_checkpointing)
    # copies in CPU memory; torch's checkpoint is handed none of them, so nothing else keeps
    # the device copies alive.
    on_cpu = [settings.cpu_checkpointing and isinstance(a, torch.Tensor) for a in args]
    kept: list[Any] = [(*_pack_on_cpu(a.detach()), a.requires_grad) if cpu else a
                       for a, cpu in zip(args, on_cpu, strict=True)]
    first = {"args": args}

    def restored() -> list[Any]:
        out: list[Any] = []
        for item, cpu in zip(kept, on_cpu, strict=True):
            if cpu:
                tensor = _unpack_from_cpu((item[0], item[1]))
                out.append(tensor.requires_grad_(item[2]) if tensor.is_floating_point() else tensor)
            else:
                out.append(item)
        return out

    def run(_anchor: torch.Tensor) -> Any:
        timing["calls"] += 1
        if timing["calls"] == 1:
            return function(*first.pop("args"))
        if settings.synchronize_checkpoint_boundary:  # the start of this region's backward
            _synchronize()
        timing["backward"] = time.perf_counter()
        current = _RNG_TRACKER.get_states()
        _RNG_TRACKER.set_states(copy.copy(tracker_states))
        try:
            return function(*restored())
        finally:
            _RNG_TRACKER.set_states(current)

    if settings.synchronize_checkpoint_boundary:
        _synchronize()
    started = time.perf_counter()
    anchor = torch.empty(0, requires_grad=True)
    outputs = torch_checkpoint(run, anchor, use_reentrant=False, preserve_rng_state=True)
    if settings.synchronize_checkpoint_boundary:
        _synchronize()
    if settings.profile:
        _log.info("checkpointed forward: %.3f ms", (time.perf_counter() - started) * 1e3)
    node = _first_grad_fn(outputs)
    if node is not None and (settings.synchronize_checkpoint_boundary or settings.profile):

        def after_backward(*_: Any) -> None:
            if settings.synchronize_checkpoint_boundary:
                _synchronize()
            if settings.profile:
                _log.info("checkpointed backward: %.3f ms", (time.perf_counter() - timing["backward"]) * 1e3)

        node.register_hook(after_backward)
    return outputs


def non_reentrant_checkpoint(function: Callable[..., Any], *args: Any) -> Any:
    """DeepSpeed's variant for regions whose inputs need no gradient: :func:`checkpoint`
    already gives their parameters gradients, so it is the same function here."""
    return checkpoint(function, *args)


__all__ = [
    "CudaRNGStatesTracker",
    "checkpoint",
    "configure",
    "get_cuda_rng_tracker",
    "is_configured",
    "model_parallel_cuda_manual_seed",
    "model_parallel_reconfigure_tp_seed",
    "non_reentrant_checkpoint",
    "partition_activations_in_checkpoint",
    "reset",
    "set_num_layers",
]
