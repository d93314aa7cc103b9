"""``dispatch_batches=True``: the main process reads, every process receives its share.

[Note: dispatched batches]
As in HF Accelerate's ``DataLoaderDispatcher``: only process 0 advances the user's
loader. Each step it takes ``num_processes`` batches (one with ``split_batches``),
concatenates them along the first dimension and broadcasts the result; every process
keeps its own contiguous slice. A last global batch that does not divide evenly is
completed with the first samples of the epoch (``drop_last=False``), and the padded
positions are counted so ``gather_for_metrics`` drops them (see [Note: padding is
counted per batch] in sampler.py). Two collectives per step: the batch's structure
(shapes, dtypes, non-tensor leaves) as an object, then its tensors, in place.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import torch

from surge import ops
from surge._tree import tree_leaves, tree_map
from surge.device import send_to_device


class _Leaf(NamedTuple):
    shape: tuple[int, ...]
    dtype: torch.dtype


def _is_tensor(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


def _concatenate(batches: list[Any]) -> Any:
    first = batches[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(batches, dim=0)
    if isinstance(first, (list, tuple)):
        parts = [_concatenate([b[i] for b in batches]) for i in range(len(first))]
        return type(first)(*parts) if hasattr(first, "_fields") else type(first)(parts)
    if isinstance(first, dict):
        return type(first)({k: _concatenate([b[k] for b in batches]) for k in first})
    raise TypeError(
        f"dispatch_batches=True sends tensors only; the DataLoader yields a {type(first).__name__}. Return tensors "
        "(in lists, tuples or dicts) from collate_fn, or use DataLoaderConfiguration(dispatch_batches=False) so "
        "each process reads its own batches."
    )


def _slice(batch: Any, start: int, stop: int) -> Any:
    return tree_map(lambda t: t[start:stop], batch, _is_tensor)


def _batch_size(batch: Any) -> int:
    leaves = tree_leaves(batch, _is_tensor)
    if not leaves or leaves[0].dim() == 0:
        raise TypeError("dispatch_batches=True needs batches holding tensors with a batch dimension; use "
                        "DataLoaderConfiguration(dispatch_batches=False).")
    return int(leaves[0].shape[0])


class Dispatcher:
    """Reads on process 0 and hands each process its slice (see [Note: dispatched batches])."""

    def __init__(self, *, num_processes: int, process_index: int, split_batches: bool, drop_last: bool,
                 device: torch.device) -> None:
        self.num_processes = num_processes
        self.process_index = process_index
        self.split_batches = split_batches
        self.drop_last = drop_last
        self.device = device

    def length(self, whole: int) -> int:
        """Batches per process for a loader of ``whole`` batches."""
        n = self.num_processes
        if self.split_batches:
            return whole
        return whole // n if self.drop_last else -(-whole // n)

    def _fetch(self, it: Iterator[Any] | None) -> Any:
        """The next global batch on every process, or None at the end (a collective)."""
        batch = None
        if self.process_index == 0:
            assert it is not None
            got: list[Any] = []
            for _ in range(1 if self.split_batches else self.num_processes):
                item = next(it, _END)
                if item is _END:
                    break
                got.append(item)
            complete = len(got) == (1 if self.split_batches else self.num_processes)
            if got and (complete or not self.drop_last):
                try:
                    batch = send_to_device(_concatenate(got), self.device)
                except RuntimeError as error:
                    raise RuntimeError(
                        "dispatch_batches=True concatenates the batches of all processes, and these differ in shape "
                        f"({error}). Use DataLoaderConfiguration(dispatch_batches=False), or split_batches=True."
                    ) from error
        skeleton = [tree_map(lambda t: _Leaf(tuple(t.shape), t.dtype), batch, _is_tensor)]
        ops.broadcast_object_list(skeleton, from_process=0)
        if skeleton[0] is None:
            return None
        if self.process_index != 0:
            batch = tree_map(lambda leaf: torch.empty(leaf.shape, dtype=leaf.dtype, device=self.device), skeleton[0],
                             lambda x: isinstance(x, _Leaf))
        return ops.broadcast(batch, from_process=0)

    def batches(self, it: Iterator[Any] | None) -> Iterator[tuple[Any, int, int]]:
        """This process's slices: ``(batch, real samples, samples)``."""
        n, me = self.num_processes, self.process_index
        first = None
        current = self._fetch(it)
        while current is not None:
            upcoming = self._fetch(it)
            size = _batch_size(current)
            if first is None and not self.drop_last:
                first = _slice(current, 0, n)
            per = size // n
            if upcoming is None and not self.drop_last and size % n:
                assert first is not None
                current = _concatenate([current, first])
                per += 1
            yield _slice(current, me * per, (me + 1) * per), max(0, min(per, size - me * per)), per
            current = upcoming


_END = object()
