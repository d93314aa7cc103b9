"""The prepared DataLoader: this process's shard, batches on the device.

[Note: the loader's randomness is Accelerate's]
A script moving over from HF Accelerate must draw the same samples and the same
random numbers, so the prepared loader uses randomness exactly as Accelerate's
``DataLoaderShard`` does:

- In one process it is the user's loader: same sampler, same generator, the same
  draws from the global RNG (DataLoader's worker base seed, then RandomSampler's seed)
  at every ``iter()``. Its order is the unprepared loader's.
- On several processes a sampler with a ``generator`` attribute and none set gets a
  ``torch.Generator`` seeded by one draw from the global RNG at ``prepare`` (a copy of
  the sampler holds it; the user's is not changed). That generator, or the user's own
  (``DataLoader(generator=g)``), is the *synchronized generator*: at the start of every
  iteration rank 0's state is broadcast to all ranks, so every rank draws the same
  permutation and the shards are disjoint. The base-seed draw still comes from the
  loader's ``generator`` or the global RNG, per rank.
- ``use_seedable_sampler=True`` replaces a RandomSampler by :class:`SeedableRandomSampler`
  (``data_seed + epoch``) and synchronizes nothing.
- Each iteration first calls ``set_epoch(loader.epoch)`` down the sampler chain (the
  batch sampler, its sampler, or else the dataset); ``loader.epoch`` advances when an
  iteration runs to its end. An abandoned iteration leaves it where it was.

For checkpoints the loader also records the random state its epoch started from (the
global RNG and the generators); a loader interrupted mid-epoch by ``save_state``
replays that epoch's draws on resume and skips the batches already handed out, then
gives the global RNG back the checkpoint's state (see :meth:`PreparedDataLoader.state_dict`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, IterableDataset, RandomSampler

from surge import ops
from surge._tree import tree_leaves, tree_map
from surge.accumulation import GradientState
from surge.data.dispatch import Dispatcher
from surge.data.sampler import Repeated, SeedableRandomSampler, ShardedBatchSampler, ShardedIterableDataset
from surge.device import send_to_device

# DataLoader arguments carried over from the user's loader unchanged.
_PASSTHROUGH = (
    "num_workers",
    "collate_fn",
    "pin_memory",
    "timeout",
    "worker_init_fn",
    "multiprocessing_context",
    "generator",
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
        sharded: ShardedBatchSampler | None = None,
        sampler_is_batch_sampler: bool = False,
        batch_size: int | None = None,
        drop_last: bool = False,
        synchronized_generator: torch.Generator | None = None,
        epoch_view: Any = None,
        dispatcher: Dispatcher | None = None,
        non_blocking: bool = False,
        sync_global_rng: bool = False,
        **loader_kwargs: Any,
    ) -> None:
        if sharded is not None and sampler_is_batch_sampler:
            super().__init__(dataset, sampler=sharded, batch_size=None, **loader_kwargs)
        elif sharded is not None:
            super().__init__(dataset, batch_sampler=sharded, **loader_kwargs)
        else:
            super().__init__(dataset, batch_size=batch_size, drop_last=drop_last, **loader_kwargs)
        self.device = device
        self.gradient_state = gradient_state
        self.synchronized_generator = synchronized_generator
        self._sync_global_rng = sync_global_rng
        self._sharded = sharded
        self._epoch_view: Any = epoch_view if epoch_view is not None else sharded
        self._dispatcher = dispatcher
        self._non_blocking = non_blocking or (bool(self.pin_memory) and device is not None and device.type == "cuda")
        self.iteration = 0
        """The epoch the next iteration runs (HF Accelerate's name); see :attr:`epoch`."""
        self._real_count: int | None = None
        self._skip_next = 0
        self._resume_rng: torch.Tensor | None = None
        # Progress, for checkpoints: whether an iteration is under way, the batches of it
        # handed out (skipped ones included), and the random state it started from.
        self._live = False
        self._batches_seen = 0
        self._epoch_rng: torch.Tensor | None = None
        self._epoch_generators: dict[str, torch.Tensor] = {}
        self.batch_transform: Callable[[Any], Any] | None = None
        """Applied to each batch after it reached the device (sequence parallelism cuts
        this rank's part of every sequence: see parallel/wiring.py)."""

    @property
    def epoch(self) -> int:
        """The epoch the next ``iter()`` runs: advanced when an iteration runs to its end,
        or set by :meth:`set_epoch`."""
        return self.iteration

    def _generators(self) -> dict[str, torch.Generator]:
        found = {"synchronized": self.synchronized_generator, "loader": self.generator}
        return {k: g for k, g in found.items() if isinstance(g, torch.Generator)}

    def set_epoch(self, epoch: int) -> None:
        """Run the next iteration as epoch ``epoch`` and tell the samplers (and the
        dataset) that have a ``set_epoch``, as Accelerate does."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"set_epoch(epoch={epoch!r}) needs a non-negative integer.")
        self.iteration = epoch
        view = self._epoch_view
        if hasattr(view, "set_epoch"):
            view.set_epoch(epoch)
        if hasattr(getattr(view, "sampler", None), "set_epoch"):
            view.sampler.set_epoch(epoch)
        inner = getattr(view, "batch_sampler", None)
        if hasattr(getattr(inner, "sampler", None), "set_epoch"):
            inner.sampler.set_epoch(epoch)  # type: ignore[union-attr]
        elif hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        """Where this loader is: the epoch that runs next (or is under way), whether an
        iteration is under way and how many of its batches were handed out, and the
        random state to replay it from (the generators' state now when none is)."""
        live = self._live
        gens = self._epoch_generators if live else {k: g.get_state() for k, g in self._generators().items()}
        return {"iteration": self.iteration, "in_progress": live, "batches_seen": self._batches_seen if live else 0,
                "generators": dict(gens), "rng": self._epoch_rng if live else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``: an iteration that was under way when it was saved runs
        again with the same draws and without the batches already handed out; otherwise
        the next iteration starts at the beginning of the saved epoch."""
        if "seed" in state:  # a checkpoint from surge < 0.2: position only
            finished = bool(state["finished"])
            self.iteration = max(0, int(state["epoch"]) + (1 if finished else 0))
            self._skip_next = 0 if finished else int(state["batches_seen"])
            return
        self.iteration = int(state["iteration"])
        saved = state["generators"]
        for name, generator in self._generators().items():
            if name in saved:  # absent when saved with another number of processes
                generator.set_state(saved[name])
        in_progress = bool(state["in_progress"])
        self._skip_next = int(state["batches_seen"]) if in_progress else 0
        self._resume_rng = state["rng"] if in_progress else None

    @property
    def resume_batches(self) -> int:
        """Batches of the next epoch already consumed before a checkpoint was loaded
        (0 when none was under way); the next iteration skips them."""
        return self._skip_next

    def skip_first_batches(self, num_batches: int) -> SkipFirstBatches:
        """An iterable over this loader that skips the next epoch's first ``num_batches``
        batches (see :class:`SkipFirstBatches`)."""
        return SkipFirstBatches(self, num_batches)

    def __len__(self) -> int:
        whole = super().__len__()
        return whole if self._dispatcher is None else self._dispatcher.length(whole)

    def _start(self) -> Callable[[], None]:
        """Synchronize, set the epoch, and fix the random state this iteration starts
        from; returns what gives the global RNG back once the sampler has drawn."""
        sync = self.synchronized_generator
        if sync is not None:  # rank 0's state on every rank (a no-op in one process)
            sync.set_state(ops.broadcast_object_list([sync.get_state()], from_process=0)[0])
        if self._sync_global_rng:  # rng_types=["torch"]: rank 0's global RNG everywhere
            torch.set_rng_state(ops.broadcast_object_list([torch.get_rng_state()], from_process=0)[0])
        self.set_epoch(self.iteration)
        resume, self._resume_rng = self._resume_rng, None
        if resume is None:
            self._epoch_rng = torch.get_rng_state()
            self._epoch_generators = {k: g.get_state() for k, g in self._generators().items()}
            return lambda: None
        checkpoint = torch.get_rng_state()
        torch.set_rng_state(resume)
        self._epoch_rng = resume
        self._epoch_generators = {k: g.get_state() for k, g in self._generators().items()}
        done: list[bool] = []

        def give_back() -> None:
            if not done:
                done.append(True)
                torch.set_rng_state(checkpoint)

        return give_back

    # A generator rather than torch's _BaseDataLoaderIter: callers only iterate it.
    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        give_back = self._start()
        skip, self._skip_next = self._skip_next, 0
        self._live, self._batches_seen = True, skip
        sampler = self._sharded
        if sampler is not None:
            if self._dispatcher is None:
                sampler.skip = skip  # dropped as indices: the skipped samples are never loaded
            sampler.on_start = give_back
        gs = self.gradient_state
        # An inner loop over another prepared loader (evaluation inside a training step)
        # must hand the outer loop's batch state back when it ends or is abandoned.
        outer = (gs.end_of_dataloader, gs.batch_real_count, gs.batch_size)
        it: Iterator[Any] = super().__iter__()
        try:
            if self._dispatcher is not None:
                it = (CountedBatch(*b) for b in self._dispatcher.batches(it))
            if sampler is None or self._dispatcher is not None:
                for _ in range(skip):  # an iterable dataset can only skip by reading
                    if next(it, _END) is _END:
                        break
            current = next(it, _END)
            give_back()
            samples = real_samples = 0
            device = self.device
            move = device is not None and self._dispatcher is None and not self._already_there(current)
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
                    out = prefetch.ready(staged)
                elif move and device is not None:
                    out = send_to_device(current, device, self._non_blocking)
                else:
                    out = current
                yield out if self.batch_transform is None else self.batch_transform(out)
                current, staged = upcoming, staged_next
            gs.epoch_samples, gs.epoch_padding = samples, samples - real_samples
            self.iteration += 1
        finally:
            give_back()
            self._live = False
            if sampler is not None:
                sampler.on_start = None
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




def _with_sampler(batch_sampler: Any, sampler: Any) -> Any:
    """``batch_sampler`` drawing from ``sampler`` instead: a new BatchSampler, or a copy
    of a custom one (the user's objects are not changed)."""
    if type(batch_sampler) is BatchSampler:
        return BatchSampler(sampler, batch_sampler.batch_size, batch_sampler.drop_last)
    batch_sampler = copy.copy(batch_sampler)
    batch_sampler.sampler = sampler
    return batch_sampler


def shard_dataloader(
    loader: DataLoader[Any],
    *,
    num_shards: int,
    shard_index: int,
    device: torch.device | None,
    gradient_state: GradientState,
    split_batches: bool = False,
    even_batches: bool = True,
    dispatch_batches: bool | None = None,
    use_seedable_sampler: bool = False,
    data_seed: int | None = None,
    non_blocking: bool = False,
    rng_types: tuple[str, ...] = ("generator",),
) -> PreparedDataLoader:
    """Rebuild ``loader`` over shard ``shard_index`` of ``num_shards``, keeping its
    sampler, batch sampler, collate_fn, drop_last, generator, workers and pinning (see
    [Note: the loader's randomness is Accelerate's] and [Note: batches dealt as
    Accelerate deals them] in sampler.py).

    ``dispatch_batches`` (None: True for an iterable dataset when batches go to a
    device) reads on process 0 only (see [Note: dispatched batches] in dispatch.py).
    ``rng_types`` names what every iteration synchronizes from rank 0: "generator" (the
    sampler's generator) and/or "torch" (the global RNG).

    Raises:
        ValueError: ``split_batches=True`` with a batch size not divisible by
            ``num_shards``; ``dispatch_batches=True`` without a device.
    """
    kwargs = {name: getattr(loader, name) for name in _PASSTHROUGH if hasattr(loader, name)}
    if kwargs.get("num_workers", 0) == 0:
        # DataLoader refuses these without workers.
        kwargs.pop("prefetch_factor", None)
        kwargs.pop("persistent_workers", None)
    dataset: Any = loader.dataset
    iterable = isinstance(dataset, IterableDataset)
    if dispatch_batches is None:
        dispatch_batches = device is not None and iterable
    if dispatch_batches and device is None:
        raise ValueError("dispatch_batches=True sends the batches to a device; it needs device placement (a "
                         "device / put_on_device=True, or Accelerator(device_placement=True)).")
    if split_batches and num_shards > 1:
        size = loader.batch_size if loader.batch_size is not None else getattr(
            loader.sampler if isinstance(loader.sampler, BatchSampler) else loader.batch_sampler, "batch_size", None)
        if not isinstance(size, int) or (size > 1 and size % num_shards):
            raise ValueError(
                f"split_batches=True needs a batch size divisible by the number of processes; got batch_size={size} "
                f"for {num_shards} processes. Use a batch size that is a multiple of {num_shards}, or "
                "split_batches=False (each process then loads whole batches)."
            )
    unknown = [r for r in rng_types if r not in ("generator", "torch")]
    if unknown:
        raise ValueError(f"rng_types={list(rng_types)!r}: surge synchronizes 'generator' and 'torch'; remove "
                         f"{unknown}.")
    common: dict[str, Any] = {"device": device, "gradient_state": gradient_state, "non_blocking": non_blocking,
              "sync_global_rng": "torch" in rng_types}
    sampler_is_bs = isinstance(loader.sampler, BatchSampler)
    batch_sampler: Any = loader.sampler if sampler_is_bs else loader.batch_sampler
    sampler: Any = getattr(batch_sampler, "sampler", None) if not iterable else None
    if isinstance(sampler, RandomSampler) and use_seedable_sampler:
        sampler = SeedableRandomSampler(sampler.data_source, replacement=sampler.replacement,
                                        num_samples=sampler._num_samples, generator=sampler.generator,
                                        data_seed=data_seed)
        batch_sampler = _with_sampler(batch_sampler, sampler)
    if dispatch_batches and num_shards > 1:
        kwargs.pop("generator", None)  # as Accelerate: the base seed comes from the global RNG
        dispatcher = Dispatcher(num_processes=num_shards, process_index=shard_index, split_batches=split_batches,
                                drop_last=loader.drop_last, device=device)  # type: ignore[arg-type]
        if iterable or batch_sampler is None:
            return PreparedDataLoader(dataset, **common, dispatcher=dispatcher, batch_size=loader.batch_size,
                                      drop_last=loader.drop_last, sampler=loader.sampler if not iterable else None,
                                      **kwargs)
        own = ShardedBatchSampler(batch_sampler)
        return PreparedDataLoader(dataset, **common, dispatcher=dispatcher, sharded=own,
                                  sampler_is_batch_sampler=sampler_is_bs, epoch_view=batch_sampler, **kwargs)
    if iterable:
        if num_shards > 1:
            if loader.batch_size is None:
                raise ValueError(
                    "an iterable dataset is prepared with batch_size=None (the dataset makes its own batches); "
                    "surge cannot shard such batches evenly. Let the DataLoader batch (batch_size=N)."
                )
            if not loader.drop_last:
                kwargs["collate_fn"] = _CountingCollate(loader.collate_fn)
            stream_generator = getattr(dataset, "generator", None)  # a stream that shuffles with it
            if isinstance(stream_generator, torch.Generator) and "generator" in rng_types:
                common["synchronized_generator"] = stream_generator
            dataset = ShardedIterableDataset(dataset, batch_size=loader.batch_size, num_shards=num_shards,
                                             shard_index=shard_index, split_batches=split_batches,
                                             drop_last=loader.drop_last)
        batch_size = dataset.batch_size if isinstance(dataset, ShardedIterableDataset) else loader.batch_size
        return PreparedDataLoader(dataset, **common, batch_size=batch_size, drop_last=loader.drop_last, **kwargs)

    if batch_sampler is None:
        # batch_size=None over a plain sampler: the loader yields single samples; shard
        # them one by one and hand the collate function the sample itself.
        batch_sampler = BatchSampler(loader.sampler, batch_size=1, drop_last=False)
        kwargs["collate_fn"] = _Unbatched(loader.collate_fn)
        sampler_is_bs = False
    synchronized = None
    if isinstance(sampler, DistributedSampler):
        num_shards, shard_index = 1, 0  # the user sharded already (DistributedSampler pads and splits by rank)
    elif num_shards > 1 and not use_seedable_sampler and hasattr(sampler, "generator"):
        if sampler.generator is None:
            generator = torch.Generator()
            generator.manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
            sampler = copy.copy(sampler)
            sampler.generator = generator
            batch_sampler = _with_sampler(batch_sampler, sampler)
        synchronized = sampler.generator if "generator" in rng_types else None
    sharded = ShardedBatchSampler(batch_sampler, num_shards=num_shards, shard_index=shard_index,
                                  split_batches=split_batches, even_batches=even_batches)
    return PreparedDataLoader(dataset, **common, sharded=sharded, sampler_is_batch_sampler=sampler_is_bs,
                              synchronized_generator=synchronized,
                              epoch_view=batch_sampler if num_shards == 1 else sharded, **kwargs)
