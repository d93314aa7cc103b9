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
