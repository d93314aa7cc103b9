"""The prepared DataLoader: this process's shard, batches on the device, a private RNG.

[Note: the loader owns its randomness]
A plain DataLoader draws from the *global* torch RNG at every ``iter()`` (its worker
base seed, and RandomSampler's permutation seed). That makes the training run's
dropout masks depend on how many times a loader was iterated, and different ranks
shuffle differently unless their global RNGs agree. The prepared loader instead owns
a ``torch.Generator`` seeded with a seed shared by all ranks (rank 0's, broadcast once
at ``prepare``) plus the epoch: every rank gets the same permutation in an epoch, a
new one each epoch, and iterating never touches the global RNG.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, IterableDataset

from surge._tree import tree_leaves, tree_map
from surge.accumulation import GradientState
from surge.data.sampler import Repeated, ShardedBatchSampler, ShardedIterableDataset
from surge.device import send_to_device

# DataLoader arguments carried over from the user's loader unchanged.
_PASSTHROUGH = (
    "num_workers",
    "collate_fn",
    "pin_memory",
    "timeout",
    "worker_init_fn",
    "multiprocessing_context",
    "prefetch_factor",
    "persistent_workers",
    "pin_memory_device",
    "in_order",
)


class PreparedDataLoader(DataLoader[Any]):
    """A DataLoader over this process's shard that yields batches on ``device``.

    ``len()`` is the number of batches *this process* yields per epoch. It is still a
    ``torch.utils.data.DataLoader``.
    """

    def __init__(
        self,
        dataset: Any,
        *,
        device: torch.device | None,
        gradient_state: GradientState,
        seed: int,
        batch_sampler: ShardedBatchSampler | None = None,
        batch_size: int | None = None,
        drop_last: bool = False,
        shuffle_generator: torch.Generator | None = None,
        **loader_kwargs: Any,
    ) -> None:
        self._generator = torch.Generator()
        self._generator.manual_seed(seed)
        if batch_sampler is not None:
            super().__init__(dataset, batch_sampler=batch_sampler, generator=self._generator, **loader_kwargs)
        else:
            super().__init__(
                dataset, batch_size=batch_size, drop_last=drop_last, generator=self._generator, **loader_kwargs
            )
        self.device = device
        self.gradient_state = gradient_state
        self.seed = seed
        self._shuffle_generator = shuffle_generator
        self._epoch = 0
        self._non_blocking = bool(self.pin_memory) and device is not None and device.type == "cuda"
        self._real_count: int | None = None
        self._skip_next = 0
        # Progress, for checkpoints: the epoch last started, batches of it handed out
        # (skipped ones included), and whether it ran to the end.
        self._progress_epoch = -1
        self._batches_seen = 0
        self._epoch_done = True

    @property
    def epoch(self) -> int:
        """The epoch the next ``iter()`` will run (advanced by each iteration, or set)."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch`` for the next iteration's shuffle (DistributedSampler's method)."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"set_epoch(epoch={epoch!r}) needs a non-negative integer.")
        self._epoch = epoch

    def state_dict(self) -> dict[str, Any]:
        """Where this loader is: the epoch in progress (or last finished), the batches of
        it already handed out, and the shuffle seed. Plain values (JSON-safe)."""
        return {"epoch": self._progress_epoch, "batches_seen": self._batches_seen,
                "finished": self._epoch_done, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``: the next iteration runs the saved epoch again (same
        shuffle) without the ``resume_batches`` batches already handed out if it was in
        progress, else the following epoch from its start."""
        self.seed = int(state["seed"])
        epoch, finished = int(state["epoch"]), bool(state["finished"])
        self._epoch = max(0, epoch + 1 if finished else epoch)
        self._progress_epoch = epoch
        self._batches_seen = 0 if finished else int(state["batches_seen"])
        self._epoch_done = finished
        self._skip_next = self.resume_batches

    @property
    def resume_batches(self) -> int:
        """Batches of the next epoch already consumed before a checkpoint was loaded
        (0 when the last epoch had finished); the next iteration skips them."""
        return 0 if self._epoch_done or self._progress_epoch != self._epoch else self._batches_seen

    def _begin_epoch(self) -> None:
        epoch = self._epoch
        self._generator.manual_seed(self.seed + epoch)
        if self._shuffle_generator is not None:
            self._shuffle_generator.manual_seed(self.seed + epoch)
        for obj in (self.batch_sampler, getattr(self.batch_sampler, "batch_sampler", None), self.dataset):
            sampler = getattr(obj, "sampler", None)
            if sampler is not None and hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        self._epoch = epoch + 1

    def skip_first_batches(self, num_batches: int) -> SkipFirstBatches:
        """An iterable over this loader that skips the next epoch's first ``num_batches``
        batches (see :class:`SkipFirstBatches`)."""
        return SkipFirstBatches(self, num_batches)

    # A generator rather than torch's _BaseDataLoaderIter: callers only iterate it.
    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        self._begin_epoch()
        skip, self._skip_next = self._skip_next, 0
        self._progress_epoch, self._batches_seen, self._epoch_done = self._epoch - 1, skip, False
        sampler = self.batch_sampler if isinstance(self.batch_sampler, ShardedBatchSampler) else None
        if sampler is not None:
            sampler.skip = skip  # dropped as indices: the skipped samples are never loaded
        gs = self.gradient_state
        # An inner loop over another prepared loader (evaluation inside a training step)
        # must hand the outer loop's batch state back when it ends or is abandoned.
        outer = (gs.end_of_dataloader, gs.batch_real_count, gs.batch_size)
        it = super().__iter__()
        try:
            if sampler is None:
                for _ in range(skip):  # an iterable dataset can only skip by reading
                    if next(it, _END) is _END:
                        return
            current = next(it, _END)
            samples = real_samples = 0
            device = self.device
            move = device is not None and not self._already_there(current)
            # On CUDA the next batch is copied on a side stream while this one computes.
            prefetch = _DevicePrefetch(device) if device is not None and move and device.type == "cuda" else None
            staged = prefetch.start(current) if prefetch is not None and current is not _END else None
            # One batch of look-ahead tells us which batch is the last without an extra
            # blocking step after it (the next batch is already being loaded anyway).
            while current is not _END:
                upcoming = next(it, _END)
                last = upcoming is _END
                staged_next = prefetch.start(upcoming) if prefetch is not None and not last else None
                real = total = None
                if isinstance(current, CountedBatch):
                    current, real, total = current
                elif sampler is not None and sampler.real_counts:
                    real, total = sampler.real_counts.popleft()
                if real is not None and total is not None:  # both known, or neither
                    samples += total
                    real_samples += real
                self._real_count = real
                gs.batch_real_count, gs.batch_size = real, total
                gs.end_of_dataloader = last
                self._batches_seen += 1
                if prefetch is not None:
                    yield prefetch.ready(staged)
                elif move and device is not None:
                    yield send_to_device(current, device, self._non_blocking)
                else:
                    yield current
                current, staged = upcoming, staged_next
            gs.epoch_samples, gs.epoch_padding = samples, samples - real_samples
            self._epoch_done = True
        finally:
            gs.end_of_dataloader, gs.batch_real_count, gs.batch_size = outer

    def _already_there(self, batch: Any) -> bool:
        # Batches collated on the CPU for a CPU run need no move; deciding it once per
        # epoch from the first batch keeps the per-batch cost at zero.
        if self.device is None or self.device.type != "cpu" or batch is _END:
            return False
        if isinstance(batch, CountedBatch):
            batch = batch.batch
        return all(t.device.type == "cpu" for t in tree_leaves(batch, _is_tensor))

    @property
    def batch_real_count(self) -> int | None:
        """How many samples of the batch just yielded are real (the rest repeat earlier
        samples to even out the last batches); None when unknown."""
        return self._real_count


class _Unbatched:
    """Collate for a loader built with ``batch_size=None``: undo the batch of one."""

    def __init__(self, collate_fn: Any) -> None:
        self.collate_fn = collate_fn

    def __call__(self, items: list[Any]) -> Any:
        return self.collate_fn(items[0])


_END = object()


def _is_tensor(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


class _DevicePrefetch:
    """Copies batches to a CUDA device on a side stream, one batch ahead, so the copy of
    batch i+1 overlaps the computation on batch i. CPU tensors are pinned first (a
    non-blocking copy from pageable memory would make the host wait); the consumer's
    stream waits for the copy before using a batch, and the batch's memory is marked
    as used by that stream so the caching allocator does not reuse it early."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]  # Stream() is unannotated in torch

    def start(self, item: Any) -> Any:
        """Begin copying ``item`` (a batch, or a CountedBatch around one)."""
        batch = item.batch if isinstance(item, CountedBatch) else item
        with torch.cuda.stream(self.stream):
            pinned = tree_map(_pinned, batch, _is_tensor)
            return send_to_device(pinned, self.device, non_blocking=True)

    def ready(self, batch: Any) -> Any:
        """``batch`` (from :meth:`start`), safe to use on the current stream."""
        current = torch.cuda.current_stream(self.device)
        current.wait_stream(self.stream)
        for tensor in tree_leaves(batch, _is_tensor):
            if tensor.device.type == "cuda":
                tensor.record_stream(current)
        return batch


def _pinned(t: torch.Tensor) -> torch.Tensor:
    return t.pin_memory() if t.device.type == "cpu" and not t.is_pinned() else t


class CountedBatch(NamedTuple):
    """A batch, how many of its samples are real and how many it has, as produced in a
    worker by :class:`_CountingCollate` (a namedtuple, so pinning and worker transport
    keep it)."""

    batch: Any
    real: int
    total: int


class _CountingCollate:
    """Collate for a sharded iterable dataset: unwrap :class:`Repeated` padding items and
    count the real ones, so ``gather_for_metrics`` can drop the repeats."""

    def __init__(self, collate_fn: Any) -> None:
        self.collate_fn = collate_fn

    def __call__(self, items: list[Any]) -> CountedBatch:
        real = sum(not isinstance(i, Repeated) for i in items)
        plain = [i.item if isinstance(i, Repeated) else i for i in items]
        return CountedBatch(self.collate_fn(plain), real, len(items))


class SkipFirstBatches:
    """Iterates a loader once, without its first ``num_batches`` batches.

    Used to resume in the middle of an epoch: it runs the loader's *current* epoch
    (same shuffle) and advances the loader's epoch counter like a normal iteration, so
    the loop can go back to the loader itself for the next epoch. With a map-style
    dataset the skipped batches are never loaded.
    """

    def __init__(self, loader: DataLoader[Any], num_batches: int) -> None:
        if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 0:
            raise ValueError(f"num_batches={num_batches!r} must be a non-negative integer.")
        self.loader = loader
        self.num_batches = num_batches

    def __iter__(self) -> Iterator[Any]:
        if isinstance(self.loader, PreparedDataLoader):
            self.loader._skip_next = self.num_batches
            yield from self.loader
        else:
            it = iter(self.loader)
            for _ in range(self.num_batches):
                if next(it, _END) is _END:
                    return
            yield from it

    def __len__(self) -> int:
        return max(0, len(self.loader) - self.num_batches)

    def __getattr__(self, name: str) -> Any:
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)


def _own_randomness(batch_sampler: Any) -> tuple[Any, torch.Generator | None]:
    """Give a sampler that would draw from the global RNG a generator of its own (see
    [Note: the loader owns its randomness]). The user's sampler is copied, not changed."""
    sampler = getattr(batch_sampler, "sampler", None)
    if sampler is None or not hasattr(sampler, "generator") or sampler.generator is not None:
        return batch_sampler, None
    generator = torch.Generator()
    sampler = copy.copy(sampler)
    sampler.generator = generator
    if type(batch_sampler) is BatchSampler:
        batch_sampler = BatchSampler(sampler, batch_sampler.batch_size, batch_sampler.drop_last)
    else:  # a custom batch sampler: copy it and point the copy at the new sampler
        batch_sampler = copy.copy(batch_sampler)
        batch_sampler.sampler = sampler
    return batch_sampler, generator


def shard_dataloader(
    loader: DataLoader[Any],
    *,
    num_shards: int,
    shard_index: int,
    device: torch.device | None,
    gradient_state: GradientState,
    seed: int,
    split_batches: bool = False,
    even_batches: bool = True,
) -> PreparedDataLoader:
    """Rebuild ``loader`` over shard ``shard_index`` of ``num_shards``, keeping its
    sampler, batch sampler, collate_fn, drop_last, workers and pinning.

    Raises:
        ValueError: ``split_batches=True`` with a batch size not divisible by
            ``num_shards``.
    """
    kwargs = {name: getattr(loader, name) for name in _PASSTHROUGH if hasattr(loader, name)}
    if kwargs.get("num_workers", 0) == 0:
        # DataLoader refuses these without workers.
        kwargs.pop("prefetch_factor", None)
        kwargs.pop("persistent_workers", None)
    dataset = loader.dataset
    if isinstance(dataset, IterableDataset):
        if num_shards > 1:
            if loader.batch_size is None:
                raise ValueError(
                    "an iterable dataset is prepared with batch_size=None (the dataset makes its own batches); "
                    "surge cannot shard such batches evenly. Let the DataLoader batch (batch_size=N)."
                )
            if even_batches:
                kwargs["collate_fn"] = _CountingCollate(loader.collate_fn)
            dataset = ShardedIterableDataset(
                dataset,
                batch_size=loader.batch_size,
                num_shards=num_shards,
                shard_index=shard_index,
                even_batches=even_batches,
                split_batches=split_batches,
                drop_last=loader.drop_last,
            )
        batch_size = dataset.batch_size if isinstance(dataset, ShardedIterableDataset) else loader.batch_size
        return PreparedDataLoader(
            dataset,
            device=device,
            gradient_state=gradient_state,
            seed=seed,
            batch_size=batch_size,
            drop_last=loader.drop_last,
            **kwargs,
        )

    batch_sampler = loader.batch_sampler
    if batch_sampler is None:
        # batch_size=None: the loader yields single samples; shard them one by one and
        # hand the collate function the sample itself, not a list of one.
        batch_sampler = BatchSampler(loader.sampler, batch_size=1, drop_last=False)
        kwargs["collate_fn"] = _Unbatched(loader.collate_fn)
    batch_sampler, shuffle_generator = _own_randomness(batch_sampler)
    if isinstance(getattr(batch_sampler, "sampler", None), DistributedSampler):
        # The user sharded already (DistributedSampler pads and splits by rank itself).
        num_shards, shard_index = 1, 0
    sharded = ShardedBatchSampler(
        batch_sampler,
        num_shards=num_shards,
        shard_index=shard_index,
        split_batches=split_batches,
        even_batches=even_batches,
    )
    return PreparedDataLoader(
        dataset,
        device=device,
        gradient_state=gradient_state,
        seed=seed,
        batch_sampler=sharded,
        shuffle_generator=shuffle_generator,
        **kwargs,
    )
