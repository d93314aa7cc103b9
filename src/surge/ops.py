"""Collectives on tensors and nested lists/tuples/dicts of tensors.

Every function works with one process too (it then returns its input, reshaped the
way the distributed result would be), so the same script runs on a laptop and on a
cluster. All of them are collectives: every rank must call them, in the same order.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import torch

from surge._tree import tree_leaves, tree_map
from surge.process_group import process_group_active


def _is_tensor(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


def _dist() -> Any:
    import torch.distributed as dist

    return dist


def _all_gather_single(out: torch.Tensor, tensor: torch.Tensor) -> None:
    """All-gather into one flat output tensor (``all_gather_single`` from torch 2.13 on,
    ``all_gather_into_tensor`` before)."""
    dist = _dist()
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    fn(out, tensor)


def _check_tensors(data: Any, op: str) -> None:
    if not tree_leaves(data, _is_tensor):
        raise TypeError(
            f"{op} expects a tensor or a nested list/tuple/dict of tensors; got {type(data).__name__}. "
            "Use gather_object for arbitrary picklable objects."
        )


def gather(tensor: Any) -> Any:
    """Concatenate each tensor across processes along dim 0, in rank order.

    0-dim tensors become 1-D (one entry per process). Ranks may hold different sizes
    along dim 0 (e.g. the last evaluation batch); all other dimensions must agree.
    This costs one small extra collective that exchanges shapes (and a host sync on
    GPU) - the price of accepting uneven sizes and of a clear error, where a bare
    all_gather would hang or return garbage.

    Raises:
        ValueError: shapes beyond dim 0 or dtypes differ between ranks; names the ranks.
    """
    _check_tensors(tensor, "gather")
    if not process_group_active():
        return tree_map(lambda t: t.unsqueeze(0) if t.dim() == 0 else t, tensor, _is_tensor)
    dist = _dist()
    leaves = tree_leaves(tensor, _is_tensor)
    local_meta = [(tuple(t.shape) if t.dim() else (1,), str(t.dtype)) for t in leaves]
    all_meta: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(all_meta, local_meta)
    for rank, meta in enumerate(all_meta):
        if len(meta) != len(local_meta):
            raise ValueError(
                f"gather: rank {dist.get_rank()} passed {len(local_meta)} tensor(s) but rank {rank} passed "
                f"{len(meta)}; every rank must gather the same structure."
            )
    for i, (shape, dtype) in enumerate(local_meta):
        for rank, meta in enumerate(all_meta):
            other_shape, other_dtype = meta[i]
            if other_shape[1:] != shape[1:] or other_dtype != dtype:
                raise ValueError(
                    f"gather: tensor #{i} has shape {list(shape)} / {dtype} on rank {dist.get_rank()} but "
                    f"{list(other_shape)} / {other_dtype} on rank {rank}; only the first dimension may differ. "
                    "Reshape or cast before gathering."
                )
    counter = iter(range(len(leaves)))

    def gather_one(t: torch.Tensor) -> torch.Tensor:
        i = next(counter)
        t = t.detach()  # collectives are not differentiable; results carry no graph
        t = t.unsqueeze(0) if t.dim() == 0 else t
        sizes = [meta[i][0][0] for meta in all_meta]
        longest = max(sizes)
        if longest != t.shape[0]:
            pad = t.new_zeros((longest - t.shape[0], *t.shape[1:]))
            t = torch.cat([t, pad])
        out = t.new_empty((longest * len(sizes), *t.shape[1:]))
        _all_gather_single(out, t.contiguous())
        if all(s == longest for s in sizes):
            return out
        return torch.cat([out[r * longest : r * longest + s] for r, s in enumerate(sizes)])

    return tree_map(gather_one, tensor, _is_tensor)


def gather_object(obj: Any) -> list[Any]:
    """Collect a picklable object from every process.

    A list or tuple is concatenated across processes in rank order (HF Accelerate's
    behaviour); any other object comes back as a list with one entry per process.
    """
    if not process_group_active():
        return list(obj) if isinstance(obj, (list, tuple)) else [obj]
    dist = _dist()
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    if isinstance(obj, (list, tuple)):
        return [item for part in out for item in part]
    return out


Reduction = Literal["sum", "mean", "max", "min", "none"]
REDUCTIONS: tuple[str, ...] = ("sum", "mean", "max", "min", "none")


def reduce(tensor: Any, reduction: Reduction = "sum", scale: float = 1.0) -> Any:
    """Reduce each tensor across processes, element-wise; the inputs are not modified.

    ``"sum"``, ``"mean"``, ``"max"`` or ``"min"`` over the processes; ``"mean"`` of an
    integer tensor returns a floating-point tensor; ``"none"`` returns a copy of the local
    tensor without communicating. The result is multiplied by ``scale``.

    Raises:
        ValueError: ``reduction`` is not one of those.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is not supported; choose one of "
                         f"{', '.join(map(repr, REDUCTIONS))}.")
    _check_tensors(tensor, "reduce")
    active = process_group_active() and reduction != "none"
    dist = _dist()
    world = dist.get_world_size() if active else 1
    op = {"max": "MAX", "min": "MIN"}.get(reduction, "SUM")

    def reduce_one(t: torch.Tensor) -> torch.Tensor:
        out = t.detach().clone()
        if active:
            dist.all_reduce(out, op=getattr(dist.ReduceOp, op))
        if reduction == "mean":
            out = out / world if out.is_floating_point() or out.is_complex() else out.double() / world
        return out * scale if scale != 1.0 else out

    return tree_map(reduce_one, tensor, _is_tensor)


def broadcast(tensor: Any, from_process: int = 0) -> Any:
    """Copy each tensor from ``from_process`` to every process, in place; returns it."""
    _check_tensors(tensor, "broadcast")
    if not process_group_active():
        return tensor
    dist = _dist()
    _check_source(from_process, dist.get_world_size())

    def broadcast_one(t: torch.Tensor) -> torch.Tensor:
        dist.broadcast(t, src=from_process)
        return t

    return tree_map(broadcast_one, tensor, _is_tensor)


def broadcast_object_list(object_list: list[Any], from_process: int = 0) -> list[Any]:
    """Replace the items of ``object_list`` with ``from_process``'s items, in place."""
    if not isinstance(object_list, list):
        raise TypeError(f"broadcast_object_list expects a list; got {type(object_list).__name__}.")
    if process_group_active():
        dist = _dist()
        _check_source(from_process, dist.get_world_size())
        dist.broadcast_object_list(object_list, src=from_process)
    return object_list


def _check_source(from_process: int, world: int) -> None:
    if isinstance(from_process, bool) or not isinstance(from_process, int) or not 0 <= from_process < world:
        raise ValueError(f"from_process={from_process!r} must be a rank from 0 to {world - 1}.")


class CannotPadNestedTensorWarning(UserWarning):
    """:func:`pad_across_processes` was given a nested tensor, which it returns unpadded."""


def pad_across_processes(tensor: Any, dim: int = 0, pad_index: int = 0, pad_first: bool = False) -> Any:
    """Pad each tensor along ``dim`` to the largest size any process holds.

    Raises:
        ValueError: ``dim`` is out of range for a tensor.
    """
    _check_tensors(tensor, "pad_across_processes")
    active = process_group_active()
    dist = _dist()

    def pad_one(t: torch.Tensor) -> torch.Tensor:
        if t.is_nested:
            warnings.warn("pad_across_processes cannot pad a nested tensor (its rows have different shapes); it is "
                          "returned unpadded. Pad its rows to one shape first.", CannotPadNestedTensorWarning,
                          stacklevel=4)
            return t
        if t.dim() == 0:
            return t
        if not -t.dim() <= dim < t.dim():
            raise ValueError(f"pad_across_processes: dim={dim} is out of range for a tensor of shape {list(t.shape)}.")
        d = dim % t.dim()
        if not active:
            return t
        size = torch.tensor([t.shape[d]], device=t.device, dtype=torch.int64)
        sizes = size.new_empty(dist.get_world_size())
        _all_gather_single(sizes, size)
        longest = int(sizes.max())
        if longest == t.shape[d]:
            return t
        shape = list(t.shape)
        shape[d] = longest
        out = t.new_full(shape, pad_index)
        index = [slice(None)] * t.dim()
        index[d] = slice(longest - t.shape[d], longest) if pad_first else slice(0, t.shape[d])
        out[tuple(index)] = t
        return out

    return tree_map(pad_one, tensor, _is_tensor)
