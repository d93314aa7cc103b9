"""Which device a process computes on, and moving nested batches there."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from surge._tree import tree_map


def choose_device(
    *,
    local_rank: int,
    local_world_size: int,
    cpu: bool,
    cuda_device_count: int,
    mps_available: bool = False,
    local_world_size_known: bool = True,
) -> str:
    """Pick this process's device as a string ("cuda:1", "mps", "cpu"). Pure.

    - ``cpu=True`` or no accelerator: "cpu".
    - CUDA with at least as many visible GPUs as local processes: ``cuda:<local_rank>``.
    - CUDA with exactly one visible GPU per process (a scheduler that binds one GPU per
      task through CUDA_VISIBLE_DEVICES): ``cuda:0``.
    - Apple MPS for a single process only (MPS has no collective backend).

    When the launcher did not give the local process count (``local_world_size_known``
    is False) only the local rank is checked against the visible GPUs.

    Raises:
        ValueError: more local processes than visible GPUs (two ranks on one GPU deadlock
            NCCL); the message says how to fix the launch.
    """
    if cpu:
        return "cpu"
    if cuda_device_count > 0:
        if cuda_device_count == 1:
            return "cuda:0"
        if not local_world_size_known:
            if local_rank >= cuda_device_count:
                raise ValueError(
                    f"LOCAL_RANK={local_rank} but only {cuda_device_count} GPUs are visible on this machine; use at "
                    "most one process per GPU, or pass cpu=True to train on the CPU."
                )
            return f"cuda:{local_rank}"
        if local_world_size > cuda_device_count:
            raise ValueError(
                f"{local_world_size} processes on this machine but only {cuda_device_count} GPUs are visible; "
                "use at most one process per GPU (e.g. --num_processes "
                f"{cuda_device_count}), or pass cpu=True to train on the CPU."
            )
        return f"cuda:{local_rank}"
    if mps_available and local_world_size == 1:
        return "mps"
    return "cpu"


def _movable(obj: Any) -> bool:
    return isinstance(obj, torch.Tensor)


def send_to_device(
    data: Any, device: torch.device | str, non_blocking: bool = False, skip_keys: Iterable[str] | str | None = None
) -> Any:
    """Move every tensor in a nested structure to ``device``; other leaves are kept.

    ``skip_keys`` names mapping keys whose values stay where they are. Objects that are
    not containers but have a ``.to(device)`` method (e.g. transformers' BatchEncoding
    subclasses) are moved with it.

    Example:
        >>> batch = send_to_device({"x": torch.ones(2), "ids": [torch.zeros(1)]}, "cpu")
    """
    if isinstance(skip_keys, str):
        skip_keys = [skip_keys]
    skip = frozenset(skip_keys or ())

    def move(t: torch.Tensor) -> torch.Tensor:
        return t.to(device, non_blocking=non_blocking)

    if skip and isinstance(data, dict):
        return type(data)(
            {k: (v if k in skip else send_to_device(v, device, non_blocking, skip)) for k, v in data.items()}
        )
    if isinstance(data, torch.Tensor):
        return move(data)
    out = tree_map(move, data, _movable)
    if out is data and hasattr(data, "to") and not isinstance(data, torch.nn.Module):
        try:
            return data.to(device, non_blocking=non_blocking)
        except TypeError:
            return data.to(device)
    return out
