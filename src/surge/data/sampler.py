"""Sharding batches across processes. Pure: no process group, only ``num_shards`` and
``shard_index``, so every case is unit-testable.

[Note: padding is counted per batch]
With ``even_batches=True`` some ranks receive samples repeated from the start of the
epoch so that every rank sees the same number of batches (a rank that runs out early
would otherwise hang the others in their next collective). The sampler records, for
every batch it hands out, how many of its samples are real; the prepared loader reads
that count for the batch it yields, and ``gather_for_metrics`` drops the repeats on
each rank before gathering. No global arithmetic about remainders is needed, and it
stays right for any batch sampler, including ones with batches of varying size.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sized
from typing import Any

import torch
from torch.utils.data import BatchSampler, IterableDataset, RandomSampler, Sampler


def _check_shards(num_shards: int, shard_index: int) -> None:
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index={shard_index} must be from 0 to num_shards-1 (num_shards={num_shards}).")


class ShardedBatchSampler(Sampler[list[int]]):
    """The batches of ``batch_sampler`` that belong to shard ``shard_index``, dealt as HF
    Accelerate's ``BatchSamplerShard`` deals them (see [Note: batches dealt as Accelerate
    deals them]); with one shard it hands every batch on unchanged.

    - ``split_batches=False``: whole batches are dealt round-robin; global batch ``k``
      goes to shard ``k % num_shards``. One optimizer step over all shards sees
      ``num_shards`` consecutive batches, i.e. the same samples as a single process
      with a ``num_shards`` times larger batch.
    - ``split_batches=True``: every batch is cut into ``num_shards`` equal contiguous
      parts (the batch size is the global one).

    ``real_counts`` says how many samples of each handed-out batch are real (see
    [Note: padding is counted per batch]).
    """

    def __init__(
        self,
        batch_sampler: Iterable[list[int]],
        num_shards: int = 1,
        shard_index: int = 0,
        split_batches: bool = False,
        even_batches: bool = True,
    ) -> None:
        _check_shards(num_shards, shard_index)
        self.batch_sampler = batch_sampler
        self.num_shards = num_shards
        self.shard_index = shard_index
        self.split_batches = split_batches
        self.even_batches = even_batches
        self.real_counts: deque[tuple[int, int]] = deque()
        """(real samples, all samples) of each batch handed out and not yet yielded."""
        self.skip = 0
        """Batches to drop (without loading them) at the start of the next iteration only."""
        self.on_start: Callable[[], None] | None = None
        """Called (once, then cleared) right after the wrapped sampler drew its first batch:
        the prepared loader hands back its random streams there when it resumes."""
        batch_size = getattr(batch_sampler, "batch_size", None)
        if split_batches and num_shards > 1 and not (isinstance(batch_size, int) and batch_size % num_shards == 0):
            raise ValueError(
                f"split_batches=True needs a batch size divisible by the number of processes; got batch_size="
                f"{batch_size} for {num_shards} processes. Use a batch size that is a multiple of {num_shards}, "
                "or split_batches=False (each process then loads whole batches)."
            )

    @property
    def batch_size(self) -> int | None:
        size: int | None = getattr(self.batch_sampler, "batch_size", None)
        if size is None or not self.split_batches:
            return size
        return size // self.num_shards

    @property
    def drop_last(self) -> bool:
        return bool(getattr(self.batch_sampler, "drop_last", False))

    def __len__(self) -> int:
        total = len(self.batch_sampler)  # type: ignore[arg-type]
        n = self.num_shards
        if n == 1:
            return total
        if self.split_batches:
            if self.even_batches or self.drop_last:
                return total
            last, size = self._last_batch_size(), self._global_batch_size()
            short = last is not None and last < size and last <= size // n * self.shard_index
            return total - (1 if short else 0)
        if total % n == 0 or self.drop_last:
            return total // n
        if self.even_batches:
            return total // n + 1
        return total // n + (1 if self.shard_index < total % n else 0)

    def _global_batch_size(self) -> int:
        return int(getattr(self.batch_sampler, "batch_size", 0) or 0)

    def _last_batch_size(self) -> int | None:
        bs = self.batch_sampler
        if isinstance(bs, BatchSampler) and isinstance(bs.sampler, Sized):
            n, size = len(bs.sampler), bs.batch_size
            return size if bs.drop_last or n % size == 0 else n % size
        return None

    def __iter__(self) -> Iterator[list[int]]:
        self.real_counts.clear()
        skip, self.skip = self.skip, 0
        on_start, self.on_start = self.on_start, None
        inner = _Started(iter(self.batch_sampler), on_start)
        if self.num_shards == 1:
            batches: Iterator[tuple[list[int], int]] = ((b, len(b)) for b in map(list, inner))
        elif self.split_batches:
            batches = self._iter_split(inner)
        else:
            batches = self._iter_whole(inner)
        for i, (batch, real) in enumerate(batches):
            if i >= skip:
                self.real_counts.append((real, len(batch)))
                yield batch
        if on_start is not None and not inner.started:
            on_start()  # an empty sampler still hands the streams back

    # [Note: batches dealt as Accelerate deals them]
    # HF Accelerate's BatchSamplerShard decides which process gets which samples, and
    # scripts moving over must see the same ones. Its rules, written out:
    # - whole batches: a round of num_shards batches is handed out only once its last
    #   batch is full; a short last batch goes to its shard after the loop. With
    #   even_batches, an incomplete last round is completed from the start of the epoch
    #   (the first round's samples, repeated as needed): the short batch is filled up to
    #   full size, then every missing shard gets a full batch of repeats. A batch
    #   sampler with drop_last=True ends at its last complete round.
    # - split batches: each full batch is cut into equal parts; a short last batch is
    #   filled up from the first batch (even_batches) or cut as far as it goes.
    # tests/unit/test_sampler.py compares every case with Accelerate's own class.

    def _iter_whole(self, inner: Iterator[Any]) -> Iterator[tuple[list[int], int]]:
        n, me = self.num_shards, self.shard_index
        size: int | None = getattr(self.batch_sampler, "batch_size", None)
        drop_last = self.drop_last
        head: list[list[int]] = []  # the first round: the samples padding repeats
        mine: list[int] | None = None
        batch: list[int] = []
        k = -1
        for k, indices in enumerate(inner):
            batch = list(indices)
            if not drop_last and k < n:
                head.append(batch)
            if k % n == me:
                mine = batch
            if k % n == n - 1 and (size is None or len(batch) == size):
                assert mine is not None
                yield mine, len(mine)
                mine = None
        if drop_last or not head:
            return
        if not self.even_batches:
            if mine:
                yield mine, len(mine)
            return
        if mine and (size is None or len(mine) == size):
            yield mine, len(mine)
        if size is None:  # batches of any size: whole batches of the first round are repeated
            cycle = 0
            k += 1
            while k % n:
                if k % n == me:
                    yield list(head[cycle % len(head)]), 0
                cycle += 1
                k += 1
            return
        pool = [i for b in head for i in b]
        while len(pool) < n * size:
            pool = pool + pool
        if len(batch) == size:
            current: list[int] = []
            k += 1
        else:
            current = batch
        start = 0
        while k % n or current:
            end = start + size - len(current)
            if k % n == me:
                yield current + pool[start:end], len(current)
            start, current = end, []
            k += 1

    def _iter_split(self, inner: Iterator[Any]) -> Iterator[tuple[list[int], int]]:
        n, me = self.num_shards, self.shard_index
        size = self._global_batch_size()
        per = size // n
        first: list[int] = []
        batch: list[int] = []
        for k, indices in enumerate(inner):
            batch = list(indices)
            if k == 0:
                first = batch
            if len(batch) == size:
                yield batch[me * per : (me + 1) * per], per
        if self.drop_last or not first or len(batch) >= size:
            return
        if not self.even_batches:
            if len(batch) > per * me:
                part = batch[me * per : (me + 1) * per]
                yield part, len(part)
            return
        pool = list(first)
        while len(pool) < size:
            pool = pool + pool
        filled = batch + pool
        yield filled[me * per : (me + 1) * per], max(0, min(per, len(batch) - me * per))


class _Started(Iterator[Any]):
    """An iterator that calls ``on_start`` once, right after its first item was drawn."""

    def __init__(self, it: Iterator[Any], on_start: Callable[[], None] | None) -> None:
        self.it = it
        self.on_start = on_start
        self.started = False

    def __next__(self) -> Any:
        try:
            return next(self.it)
        finally:
            if not self.started:
                self.started = True
                if self.on_start is not None:
                    self.on_start()


class SeedableRandomSampler(RandomSampler):
    """A ``RandomSampler`` whose permutation depends only on a seed and the epoch: epoch
    ``e`` shuffles with ``seed + e``, the same on every process (HF Accelerate's
    ``use_seedable_sampler``).

    Args:
        data_seed: The seed; None uses ``torch.initial_seed()`` (what ``set_seed`` set).
        *args, **kwargs: As for ``torch.utils.data.RandomSampler``.

    Example:
        >>> sampler = SeedableRandomSampler(range(10), data_seed=3)
        >>> sampler.set_epoch(1)
    """

    def __init__(self, *args: Any, data_seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.initial_seed = data_seed if data_seed is not None else torch.initial_seed()
        self.epoch = 0

    def __iter__(self) -> Iterator[int]:
        if self.generator is None:
            self.generator = torch.Generator()
        self.generator.manual_seed(self.initial_seed + self.epoch)
        yield from super().__iter__()
        self.set_epoch(self.epoch + 1)

    def set_epoch(self, epoch: int) -> None:
        """Shuffle the next iteration with ``data_seed + epoch``."""
        self.epoch = epoch


class Repeated:
    """An item repeated to even out the last batches (see [Note: padding is counted per
    batch]); the prepared loader unwraps it and counts it as padding."""

    __slots__ = ("item",)

    def __init__(self, item: Any) -> None:
        self.item = item


class ShardedIterableDataset(IterableDataset[Any]):
    """An iterable dataset cut into ``num_shards`` interleaved shares, as HF Accelerate's
    ``IterableDatasetShard`` cuts it.

    Items are grouped in rounds of one global batch (``batch_size x num_shards`` items,
    or ``batch_size`` with ``split_batches``); shard ``i`` gets the ``i``-th slice of
    every round, so the shards' batches together equal a single process's batches of
    the global size. Inside a shard, DataLoader worker ``w`` of ``W`` keeps rounds ``m``
    with ``m % W == w``: the DataLoader reads its workers round-robin, so batches come
    out in the original order and no worker repeats another's data.

    An incomplete last round is completed with items repeated from the first round
    (wrapped in :class:`Repeated`), or dropped with ``drop_last``. As in Accelerate,
    ``even_batches`` does not apply to iterable datasets.
    """

    def __init__(
        self,
        dataset: Iterable[Any],
        batch_size: int = 1,
        num_shards: int = 1,
        shard_index: int = 0,
        split_batches: bool = False,
        drop_last: bool = False,
    ) -> None:
        _check_shards(num_shards, shard_index)
        if split_batches and batch_size % num_shards:
            raise ValueError(
                f"split_batches=True needs a batch size divisible by the number of processes; got "
                f"batch_size={batch_size} for {num_shards} processes."
            )
        self.dataset = dataset
        self.round_size = batch_size if split_batches else batch_size * num_shards
        self.batch_size = batch_size // num_shards if split_batches else batch_size
        """Items of this shard per round: the shard's batch size."""
        self.num_shards = num_shards
        self.shard_index = shard_index
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        """Items this shard yields per epoch (needs ``len()`` of the wrapped dataset)."""
        n = len(self.dataset)  # type: ignore[arg-type]
        rounds = n // self.round_size if self.drop_last else -(-n // self.round_size)
        return rounds * self.batch_size

    def __iter__(self) -> Iterator[Any]:
        from torch.utils.data import get_worker_info
        from torch.utils.data._utils import worker as worker_module

        generator = getattr(self.dataset, "generator", None)
        if isinstance(generator, torch.Generator) and not hasattr(self.dataset, "set_epoch"):
            generator.manual_seed(self.epoch)  # as Accelerate: a stream shuffling with a generator, by epoch
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        # [Note: the wrapped dataset sees one stream]
        # surge splits the stream across workers itself. A dataset that also splits by
        # get_worker_info() (PyTorch's documented pattern, HF datasets) would then drop
        # data, so inside a worker the wrapped dataset is shown no worker info and yields
        # the whole stream; each worker keeps its own rounds of it.
        saved_info = worker_module._worker_info
        worker_module._worker_info = None
        try:
            yield from self._iter_shard(workers, worker)
        finally:
            worker_module._worker_info = saved_info

    def _iter_shard(self, workers: int, worker: int) -> Iterator[Any]:
        size, part = self.round_size, self.batch_size
        mine = range(self.shard_index * part, (self.shard_index + 1) * part)
        first: list[Any] | None = None
        current: list[Any] = []
        m = 0  # round index
        for item in self.dataset:
            current.append(item)
            if len(current) == size:
                if m % workers == worker:
                    yield from (current[i] for i in mine)
                if first is None:
                    first = current
                current = []
                m += 1
        if self.drop_last or not current or m % workers != worker:
            return
        real = len(current)
        pool = first if first is not None else list(current)
        filled = list(current)
        while len(filled) < size:
            filled += pool
        for i in mine:
            yield filled[i] if i < real else Repeated(filled[i])
