"""The prepared DataLoader (shards simulated in one process)."""

import torch
from torch.utils.data import DataLoader, TensorDataset

from surge.accumulation import GradientState
from surge.data.loader import PreparedDataLoader, shard_dataloader


def dataset(n=12):
    return TensorDataset(torch.arange(n), torch.arange(n) * 10)


def prepared(loader, shard, shards=2, seed=7, **kw):
    return shard_dataloader(loader, num_shards=shards, shard_index=shard, device=torch.device("cpu"),
                            gradient_state=GradientState(), seed=seed, **kw)


def epoch_ids(loader):
    return [x.tolist() for x, _ in loader]


def test_is_a_dataloader_and_len_is_per_process():
    p = prepared(DataLoader(dataset(10), batch_size=4), 1)
    assert isinstance(p, DataLoader) and isinstance(p, PreparedDataLoader)
    assert len(p) == 2 and len(list(p)) == 2


def test_shuffle_same_permutation_on_every_rank_new_each_epoch():
    loaders = [prepared(DataLoader(dataset(), batch_size=3, shuffle=True), i) for i in range(2)]
    e0 = [epoch_ids(l) for l in loaders]
    e1 = [epoch_ids(l) for l in loaders]
    for epoch in (e0, e1):
        flat = sorted(sum(epoch[0], []) + sum(epoch[1], []))
        assert flat == list(range(12))  # disjoint shards covering the dataset
    assert e0 != e1  # a new permutation each epoch
    for l in loaders:
        l.set_epoch(0)
    assert [epoch_ids(l) for l in loaders] == e0  # set_epoch replays an epoch


def test_iterating_does_not_touch_the_global_rng():
    loader = prepared(DataLoader(dataset(), batch_size=3, shuffle=True), 0)
    state = torch.get_rng_state()
    for _ in range(2):
        list(loader)
    assert torch.equal(state, torch.get_rng_state())


def test_user_sampler_collate_and_drop_last_are_kept():
    calls = []

    def collate(items):
        calls.append(len(items))
        return torch.stack([x for x, _ in items])

    loader = DataLoader(dataset(10), batch_size=4, drop_last=True, collate_fn=collate,
                        sampler=list(reversed(range(10))))
    p = prepared(loader, 0)
    assert [b.tolist() for b in p] == [[9, 8, 7, 6]]
    assert calls == [4]


def test_end_of_dataloader_is_known_on_the_last_batch():
    gs = GradientState()
    p = shard_dataloader(DataLoader(dataset(10), batch_size=2), num_shards=1, shard_index=0, device=None,
                         gradient_state=gs, seed=0)
    flags = [gs.end_of_dataloader for _ in p]
    assert flags == [False, False, False, False, True]
    assert gs.end_of_dataloader is False


def test_batch_size_none_yields_samples():
    p = prepared(DataLoader(dataset(4), batch_size=None), 1)
    got = [(x.item(), y.item()) for x, y in p]
    assert got == [(1, 10), (3, 30)]


def test_real_count_of_padded_batches():
    p = prepared(DataLoader(dataset(10), batch_size=4), 1)
    counts = []
    for _ in p:
        counts.append(p.batch_real_count)
    assert counts == [4, 0]
