"""Seeding every random number generator a training run uses."""

from __future__ import annotations

import random
from typing import Any, TypedDict

import torch


class RNGState(TypedDict, total=False):
    """The random streams of one process, as :func:`rng_state` captures them."""

    python: list[Any]
    """``random.getstate()`` as ``[version, internal state (a list), gauss]``."""
    torch: torch.Tensor
    """torch's CPU generator state."""
    numpy: list[Any]
    """``[kind, keys (int64 tensor), pos, has_gauss, cached_gaussian]``: NumPy's legacy state."""
    cuda: list[torch.Tensor]
    """Every CUDA device's generator state."""


def set_seed(seed: int, device_specific: bool = False, deterministic: bool = False) -> int:
    """Seed Python's ``random``, NumPy (when installed), torch and every CUDA device.

    Args:
        seed: The seed; the same on every process gives identical initial weights.
        device_specific: Add the process index to the seed, so each process draws
            different random numbers (e.g. for data augmentation).
        deterministic: Also ask PyTorch for deterministic algorithms (slower; some
            operations then raise because they have no deterministic version).

    Returns:
        The seed actually used on this process.

    Example:
        >>> from surge.utils import set_seed
        >>> set_seed(42)
        42
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed={seed!r} must be an integer.")
    if device_specific:
        from surge.config.environment import current_launch_environment

        seed += current_launch_environment().rank
    random.seed(seed)
    try:
        import numpy as np
    except ImportError:
        pass
    else:
        np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device (lazily if CUDA is not yet initialised)
    if deterministic:
        torch.use_deterministic_algorithms(True)
    return seed


def rng_state() -> RNGState:
    """Every random stream this process draws from (Python, NumPy when installed, torch
    CPU, every CUDA device), as plain values and tensors (``weights_only``-loadable)."""
    version, internal, gauss = random.getstate()
    state: RNGState = {"python": [version, list(internal), gauss], "torch": torch.get_rng_state()}
    try:
        import numpy as np
    except ImportError:
        pass
    else:
        legacy = np.random.get_state(legacy=True)  # the default; named so the stubs pick the right overload
        assert isinstance(legacy, tuple)  # the global generator is always MT19937, so the legacy form is a tuple
        kind, keys, pos, has_gauss, cached = legacy
        state["numpy"] = [kind, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(cached)]
    # torch.cuda.is_initialized has no annotations in torch.
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: RNGState) -> None:
    """Restore what :func:`rng_state` captured (streams it lacks are left alone)."""
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "numpy" in state:
        try:
            import numpy as np
        except ImportError:
            pass
        else:
            kind, keys, pos, has_gauss, cached = state["numpy"]
            np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        states = state["cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


def synchronize_rng_state(rng_type: Any = None, generator: torch.Generator | None = None) -> None:
    """Give every process rank 0's state of one random generator: "torch" (CPU), "cuda"
    (this process's device) or "generator" (``generator``). A collective; nothing to do
    for one process.

    Raises:
        ValueError: an unknown type, or "generator" without ``generator``.
        UnsupportedError: a device surge does not run on ("xla", "npu", ...).
    """
    from surge.config.enums import RNGType
    from surge.ops import broadcast
    from surge.process_group import process_group_active

    kind = RNGType(rng_type.value if isinstance(rng_type, RNGType) else rng_type) if rng_type is not None else None
    if kind is None:
        return  # Accelerate's default argument synchronises nothing either
    if kind not in (RNGType.TORCH, RNGType.CUDA, RNGType.GENERATOR):
        from surge.unsupported import unsupported

        unsupported(f"synchronize_rng_state({kind.value!r})", f"a {kind.value.upper()} device")
    if kind is RNGType.GENERATOR and generator is None:
        raise ValueError("synchronize_rng_state('generator') needs the generator: pass generator=<torch.Generator>.")
    if kind is RNGType.CUDA and not torch.cuda.is_available():
        return  # no CUDA generator to synchronise (Accelerate fails here; the CPU run goes on)
    if not process_group_active():
        return
    import torch.distributed as dist

    state = (torch.get_rng_state() if kind is RNGType.TORCH else torch.cuda.get_rng_state() if kind is RNGType.CUDA
             else generator.get_state())  # type: ignore[union-attr]  # checked above
    on_device = dist.get_backend() == "nccl"
    moved = broadcast(state.cuda() if on_device else state, from_process=0)
    state = moved.cpu() if on_device else moved
    if kind is RNGType.TORCH:
        torch.set_rng_state(state)
    elif kind is RNGType.CUDA:
        torch.cuda.set_rng_state(state)
    else:
        generator.set_state(state)  # type: ignore[union-attr]


def synchronize_rng_states(rng_types: list[Any], generator: torch.Generator | None = None) -> None:
    """:func:`synchronize_rng_state` for each of ``rng_types`` (e.g. ``["torch", "cuda"]``)."""
    for rng_type in rng_types:
        synchronize_rng_state(rng_type, generator=generator)
