"""Sharding batches across processes (pure: shards are simulated in one process)."""

import itertools

import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, IterableDataset, SequentialSampler

from surge.data.sampler import Repeated, ShardedBatchSampler, ShardedIterableDataset


def shards(n, bs, num_shards, *, drop_last=False, split=False, even=True):
    out = []
    for i in range(num_shards):
        base = BatchSampler(SequentialSampler(range(n)), bs, drop_last)
        s = ShardedBatchSampler(base, num_shards, i, split_batches=split, even_batches=even)
        batches = list(s)
        assert len(batches) == len(s), (n, bs, num_shards, drop_last, split, even, i)
        assert [t for _, t in s.real_counts] == [len(b) for b in batches]
        out.append((batches, [r for r, _ in s.real_counts]))
    return out


def test_ten_samples_batch_four_two_processes():
    (b0, r0), (b1, r1) = shards(10, 4, 2)
    # As Accelerate: the short last batch is filled to full size from the start of the data.
    assert b0 == [[0, 1, 2, 3], [8, 9, 0, 1]] and r0 == [4, 2]
    assert b1 == [[4, 5, 6, 7], [2, 3, 4, 5]] and r1 == [4, 0]
    (b0, _), (b1, _) = shards(10, 4, 2, even=False)
    assert b0 == [[0, 1, 2, 3], [8, 9]] and b1 == [[4, 5, 6, 7]]


def test_split_batches():
    (b0, r0), (b1, r1) = shards(10, 4, 2, split=True)
    assert b0 == [[0, 1], [4, 5], [8, 9]] and b1 == [[2, 3], [6, 7], [0, 1]]
    assert r0 == [2, 2, 2] and r1 == [2, 2, 0]
    (b0, r0), (b1, r1) = shards(9, 4, 2, split=True)
    assert b0[-1] == [8, 0] and b1[-1] == [1, 2] and r0[-1] == 1 and r1[-1] == 0
    (b0, _), (b1, _) = shards(9, 4, 2, split=True, even=False)
    assert len(b0) == 3 and len(b1) == 2


def test_split_batches_needs_divisible_batch_size():
    with pytest.raises(ValueError, match="batch_size=5 for 2 processes"):
        ShardedBatchSampler(BatchSampler(SequentialSampler(range(10)), 5, False), 2, 0, split_batches=True)


@pytest.mark.parametrize(
    "n, bs, k, drop_last, split, even",
    [c for c in itertools.product([0, 1, 5, 8, 10, 13], [1, 2, 4], [1, 2, 3],
                                  [False, True], [False, True], [False, True])
     if not (c[4] and c[1] % c[2])],
)
def test_every_sample_is_seen_once_as_real(n, bs, k, drop_last, split, even):
    result = shards(n, bs, k, drop_last=drop_last, split=split, even=even)
    real = []
    for batches, counts in result:
        assert len(counts) == len(batches)
        for batch, count in zip(batches, counts, strict=True):
            real.extend(batch[:count])
    batches = list(BatchSampler(SequentialSampler(range(n)), bs, drop_last))
    if drop_last and not split and k > 1:  # as Accelerate: an incomplete last round is dropped too
        batches = batches[: len(batches) // k * k]
    assert sorted(real) == [i for b in batches for i in b]
    if even:
        assert len({len(b) for b, _ in result}) == 1


def plain_items(items):
    return [x.item if isinstance(x, Repeated) else x for x in items]


class Stream(IterableDataset):
    def __init__(self, n):
        self.n = n

    def __iter__(self):
        return iter(range(self.n))


@pytest.mark.parametrize("workers", [0, 2])
def test_iterable_dataset_shards_without_duplicates(workers):
    seen = []
    for i in range(2):
        ds = ShardedIterableDataset(Stream(22), batch_size=4, num_shards=2, shard_index=i)
        loader = DataLoader(ds, batch_size=4, num_workers=workers, collate_fn=plain_items)
        seen.append([list(b) for b in loader])
    # Chunk c of 4 items goes to shard c % 2, in stream order, whatever the worker count;
    # the last round is completed from the first one.
    assert seen[0] == [[0, 1, 2, 3], [8, 9, 10, 11], [16, 17, 18, 19]]
    assert seen[1] == [[4, 5, 6, 7], [12, 13, 14, 15], [20, 21, 0, 1]]


def test_iterable_dataset_even_batches_pads_from_the_start():
    out = [list(ShardedIterableDataset(Stream(10), batch_size=4, num_shards=2, shard_index=i)) for i in range(2)]
    plain = [[x.item if isinstance(x, Repeated) else x for x in o] for o in out]
    assert plain[0] == [0, 1, 2, 3, 8, 9, 0, 1]
    assert plain[1] == [4, 5, 6, 7, 2, 3, 4, 5]
    # The repeats are marked, so metrics can drop them.
    assert [isinstance(x, Repeated) for x in out[0]] == [False] * 6 + [True] * 2
    assert all(isinstance(x, Repeated) for x in out[1][4:])


def test_iterable_split_batches():
    out = [list(ShardedIterableDataset(Stream(8), batch_size=4, num_shards=2, shard_index=i, split_batches=True))
           for i in range(2)]
    assert out == [[0, 1, 4, 5], [2, 3, 6, 7]]
    with pytest.raises(ValueError, match="batch_size=3 for 2"):
        ShardedIterableDataset(Stream(8), batch_size=3, num_shards=2, split_batches=True)


def test_bad_shard_index():
    with pytest.raises(ValueError, match="shard_index=2"):
        ShardedBatchSampler(BatchSampler(SequentialSampler(range(4)), 2, False), 2, 2)


def test_tensor_batches_round_trip():
    base = BatchSampler(SequentialSampler(range(6)), 3, False)
    assert list(ShardedBatchSampler(base, 1, 0)) == [[0, 1, 2], [3, 4, 5]]
    assert torch.equal(torch.tensor(next(iter(ShardedBatchSampler(base, 2, 1)))), torch.tensor([3, 4, 5]))


class Varying:
    """A batch sampler with batches of any size (no batch_size attribute)."""

    def __init__(self, sizes):
        self.sizes = sizes

    def __iter__(self):
        start = 0
        for size in self.sizes:
            yield list(range(start, start + size))
            start += size

    def __len__(self):
        return len(self.sizes)


def test_same_shards_as_accelerate():
    """Every rank's batches equal HF Accelerate's BatchSamplerShard / IterableDatasetShard."""
    pytest.importorskip("accelerate")
    from accelerate.data_loader import BatchSamplerShard, IterableDatasetShard

    for n, bs, k, drop_last, split, even in itertools.product([0, 3, 10, 13], [1, 4], [2, 3], [False, True],
                                                             [False, True], [False, True]):
        if split and bs % k:
            continue
        for i in range(k):
            base = BatchSampler(SequentialSampler(range(n)), bs, drop_last)
            ours = ShardedBatchSampler(base, k, i, split_batches=split, even_batches=even)
            theirs = list(BatchSamplerShard(base, k, i, split_batches=split, even_batches=even))
            assert list(ours) == theirs and len(ours) == len(theirs), (n, bs, k, drop_last, split, even, i)
            items = list(ShardedIterableDataset(range(n), bs, k, i, split_batches=split, drop_last=drop_last))
            assert plain_items(items) == list(IterableDatasetShard(list(range(n)), bs, drop_last, k, i, split))
    for sizes, k, even in itertools.product([[3, 1, 2], [2, 2, 2, 1], [4, 3, 2, 1, 5]], [2, 3], [False, True]):
        for i in range(k):
            theirs = list(BatchSamplerShard(Varying(sizes), k, i, even_batches=even))
            assert list(ShardedBatchSampler(Varying(sizes), k, i, even_batches=even)) == theirs, (sizes, k, even, i)
