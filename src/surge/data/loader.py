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

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, IterableDataset, RandomSampler

from surge.accumulation import GradientState
from surge.data.sampler import ShardedBatchSampler, ShardedIterableDataset
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


class PreparedDataLoader(DataLoader):
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

    @property
    def epoch(self) -> int:
        """The epoch the next ``iter()`` will run (advanced by each iteration, or set)."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch`` for the next iteration's shuffle (DistributedSampler's method)."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"set_epoch(epoch={epoch!r}) needs a non-negative integer.")
        self._epoch = epoch

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

    def __iter__(self) -> Iterator[Any]:
        self._begin_epoch()
        counts = getattr(self.batch_sampler, "real_counts", None)
        gs = self.gradient_state
        it = super().__iter__()
        try:
            current = next(it)
        except StopIteration:
            return
        # One batch of look-ahead tells us which batch is the last without an extra
        # blocking step after it (the next batch is already being loaded anyway).
        while True:
            try:
                upcoming = next(it)
                last = False
            except StopIteration:
                upcoming, last = None, True
            if counts is not None and counts:
                self._real_count = counts.popleft()
            gs.end_of_dataloader = last
            yield send_to_device(current, self.device, self._non_blocking) if self.device is not None else current
            if last:
                gs.end_of_dataloader = False
                return
            current = upcoming

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


def shard_dataloader(
    loader: DataLoader,
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
        if loader.batch_size is None:
            raise ValueError(
                "an iterable dataset is prepared with batch_size=None (the dataset makes its own batches); "
                "surge cannot shard such batches evenly. Let the DataLoader batch (batch_size=N)."
            )
        if num_shards > 1:
            dataset = ShardedIterableDataset(
                dataset,
                batch_size=loader.batch_size,
                num_shards=num_shards,
                shard_index=shard_index,
                even_batches=even_batches,
                split_batches=split_batches,
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
    shuffle_generator = None
    sampler = getattr(batch_sampler, "sampler", None)
    if isinstance(sampler, RandomSampler) and sampler.generator is None:
        # See [Note: the loader owns its randomness].
        shuffle_generator = torch.Generator()
        sampler.generator = shuffle_generator
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
