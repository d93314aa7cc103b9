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
from collections.abc import Iterable, Iterator, Sized
from typing import Any

from torch.utils.data import BatchSampler, IterableDataset, Sampler


def _check_shards(num_shards: int, shard_index: int) -> None:
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index={shard_index} must be from 0 to num_shards-1 (num_shards={num_shards}).")


class ShardedBatchSampler(Sampler[list[int]]):
    """The batches of ``batch_sampler`` that belong to shard ``shard_index``.

    - ``split_batches=False``: whole batches are dealt round-robin; global batch ``k``
      goes to shard ``k % num_shards``. One optimizer step over all shards sees
      ``num_shards`` consecutive batches, i.e. the same samples as a single process
      with a ``num_shards`` times larger batch.
    - ``split_batches=True``: every batch is cut into ``num_shards`` contiguous parts
      (the batch size is the global one).

    ``even_batches=True`` gives every shard the same number of batches by repeating
    samples from the start of the epoch; ``real_counts`` says how many samples of each
    handed-out batch are real (see [Note: padding is counted per batch]).
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
        batch_size = getattr(batch_sampler, "batch_size", None)
        if split_batches and isinstance(batch_size, int) and batch_size % num_shards:
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
        if self.split_batches:
            if self.even_batches or total == 0:
                return total
            last = self._last_batch_size()
            return total - (1 if last is not None and last <= self.shard_index else 0)
        if self.even_batches:
            return (total + self.num_shards - 1) // self.num_shards
        return max(0, -(-(total - self.shard_index) // self.num_shards))

    def _last_batch_size(self) -> int | None:
        bs = self.batch_sampler
        if isinstance(bs, BatchSampler) and isinstance(bs.sampler, Sized):
            n, size = len(bs.sampler), bs.batch_size
            return size if bs.drop_last or n % size == 0 else n % size
        return None

    def __iter__(self) -> Iterator[list[int]]:
        self.real_counts.clear()
        skip, self.skip = self.skip, 0
        batches = self._iter_split() if self.split_batches else self._iter_whole()
        for i, (batch, real) in enumerate(batches):
            if i >= skip:
                self.real_counts.append((real, len(batch)))
                yield batch

    def _iter_whole(self) -> Iterator[tuple[list[int], int]]:
        n, me = self.num_shards, self.shard_index
        first: list[list[int]] = []  # the first round, kept to fill an incomplete last round
        k = -1
        for k, indices in enumerate(self.batch_sampler):
            batch = list(indices)
            if k < n:
                first.append(batch)
            if k % n == me:
                yield (batch, len(batch))
        total = k + 1
        if not self.even_batches or total % n == 0 or total == 0:
            return
        # The last round is incomplete: shards past its end get a repeated batch.
        if me >= total % n:
            filler = first[(me - total % n) % len(first)]
            yield (filler, 0)

    def _iter_split(self) -> Iterator[tuple[list[int], int]]:
        n, me = self.num_shards, self.shard_index
        head: list[int] = []  # the epoch's first samples, to pad a short last batch
        for indices in self.batch_sampler:
            batch = list(indices)
            if len(head) < n:
                head.extend(batch[: n - len(head)])
            per, extra = divmod(len(batch), n)
            if extra == 0:
                yield (batch[me * per : (me + 1) * per], per)
                continue
            # A short last batch: the first `extra` shards get per+1 samples.
            start = me * per + min(me, extra)
            size = per + (1 if me < extra else 0)
            part = batch[start : start + size]
            if not self.even_batches:
                if part:
                    yield (part, len(part))
                continue
            missing = per + 1 - size
            pool = batch + head
            yield (part + [pool[i % len(pool)] for i in range(missing)], len(part))


class Repeated:
    """An item repeated to even out the last batches (see [Note: padding is counted per
    batch]); the prepared loader unwraps it and counts it as padding."""

    __slots__ = ("item",)

    def __init__(self, item: Any) -> None:
        self.item = item


class ShardedIterableDataset(IterableDataset[Any]):
    """An iterable dataset cut into ``num_shards`` interleaved shares.

    Items are grouped in chunks of ``batch_size``; chunk ``c`` belongs to shard ``c %
    num_shards``, so the shards' batches together equal a single process's batches
    with a ``num_shards`` times larger batch. Inside a shard, DataLoader worker ``w``
    of ``W`` keeps the shard's chunks ``m`` with ``m % W == w``: the DataLoader reads
    its workers round-robin, so batches come out in the original order and no worker
    repeats another's data.

    With ``even_batches=True`` an incomplete last round is filled with items repeated
    from the start of the stream, each shard ending with a full chunk; the repeats come
    wrapped in :class:`Repeated`.
    """

    def __init__(
        self,
        dataset: Iterable[Any],
        batch_size: int = 1,
        num_shards: int = 1,
        shard_index: int = 0,
        even_batches: bool = True,
        split_batches: bool = False,
        drop_last: bool = False,
    ) -> None:
        _check_shards(num_shards, shard_index)
        if split_batches:
            if batch_size % num_shards:
                raise ValueError(
                    f"split_batches=True needs a batch size divisible by the number of processes; got "
                    f"batch_size={batch_size} for {num_shards} processes."
                )
            batch_size //= num_shards
        self.dataset = dataset
        self.batch_size = batch_size
        self.num_shards = num_shards
        self.shard_index = shard_index
        self.even_batches = even_batches
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        """Items this shard yields per epoch (needs ``len()`` of the wrapped dataset)."""
        n = len(self.dataset)  # type: ignore[arg-type]
        size, shards = self.batch_size, self.num_shards
        chunks = n // size if self.drop_last else -(-n // size)
        if self.even_batches:
            return -(-chunks // shards) * size if chunks else 0
        mine = range(self.shard_index, chunks, shards)
        return sum(min(size, n - c * size) for c in mine)

    def __iter__(self) -> Iterator[Any]:
        from torch.utils.data import get_worker_info
        from torch.utils.data._utils import worker as worker_module

        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        # [Note: the wrapped dataset sees one stream]
        # surge splits the stream across workers itself. A dataset that also splits by
        # get_worker_info() (PyTorch's documented pattern, HF datasets) would then drop
        # data, so inside a worker the wrapped dataset is shown no worker info and yields
        # the whole stream; each worker keeps its own chunks of it.
        saved_info = worker_module._worker_info
        worker_module._worker_info = None
        try:
            yield from self._iter_shard(workers, worker)
        finally:
            worker_module._worker_info = saved_info

    def _iter_shard(self, workers: int, worker: int) -> Iterator[Any]:
        n, me, size = self.num_shards, self.shard_index, self.batch_size
        head: list[Any] = []
        chunk: list[Any] = []
        c = 0  # global chunk index
        for item in self.dataset:
            if len(head) < n * size:
                head.append(item)
            chunk.append(item)
            if len(chunk) == size:
                if c % n == me and (c // n) % workers == worker:
                    yield from chunk
                chunk = []
                c += 1
        if self.drop_last:
            chunk = []  # an incomplete last batch is dropped, as a single process would
        if not self.even_batches:
            if chunk and c % n == me and (c // n) % workers == worker:
                yield from chunk
            return
        if not chunk and c % n == 0:
            return
        # Complete the last round: every shard ends with a full chunk, padded from the head.
        pool = chunk + head
        if not pool:
            return
        start = c
        while c % n != 0 or c == start:
            if c % n == me and (c // n) % workers == worker:
                offset = (c - start) * size
                for i in range(size):
                    j = offset + i
                    yield chunk[j] if j < len(chunk) else Repeated(pool[j % len(pool)])
            c += 1
