"""Seeding every random number generator a training run uses."""

from __future__ import annotations

import random

import torch


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
