"""The prepared DataLoader (shards simulated in one process): worker-splitting
datasets, nested loaders, randomness as the unprepared loader's and Accelerate's."""

import pytest
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    IterableDataset,
    RandomSampler,
    TensorDataset,
    WeightedRandomSampler,
    get_worker_info,
)

from surge import Accelerator
from surge.accumulation import GradientState
from surge.data.loader import PreparedDataLoader, shard_dataloader
from surge.data.sampler import ShardedIterableDataset


def dataset(n=12):
    return TensorDataset(torch.arange(n), torch.arange(n) * 10)


def prepared(loader, shard, shards=2, **kw):
    return shard_dataloader(loader, num_shards=shards, shard_index=shard, device=torch.device("cpu"),
                            gradient_state=GradientState(), **kw)


def epoch_ids(loader):
    return [x.tolist() for x, _ in loader]


def test_is_a_dataloader_and_len_is_per_process():
    p = prepared(DataLoader(dataset(10), batch_size=4), 1)
    assert isinstance(p, DataLoader) and isinstance(p, PreparedDataLoader)
    assert len(p) == 2 and len(list(p)) == 2


def test_shuffle_same_permutation_on_every_rank_new_each_epoch():
    loaders = []
    for i in range(2):  # each simulated rank ran set_seed(0) before prepare
        torch.manual_seed(0)
        loaders.append(prepared(DataLoader(dataset(), batch_size=3, shuffle=True), i))
    e0 = [epoch_ids(l) for l in loaders]
    e1 = [epoch_ids(l) for l in loaders]
    for epoch in (e0, e1):
        flat = sorted(sum(epoch[0], []) + sum(epoch[1], []))
        assert flat == list(range(12))  # disjoint shards covering the dataset
    assert e0 != e1  # a new permutation each epoch
    assert [l.epoch for l in loaders] == [2, 2]


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
                         gradient_state=gs)
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


class SelfSplitting(IterableDataset):
    """PyTorch's documented pattern: the dataset splits its range by worker itself."""

    def __init__(self, n):
        self.n = n

    def __iter__(self):
        info = get_worker_info()
        if info is None:
            return iter(range(self.n))
        return iter(range(info.id, self.n, info.num_workers))

    def __len__(self):
        return self.n


def worker_shards(dataset, n_shards=2, workers=0, drop_last=False, **kw):
    out = []
    for i in range(n_shards):
        loader = DataLoader(dataset, batch_size=4, num_workers=workers, drop_last=drop_last)
        out.append(shard_dataloader(loader, num_shards=n_shards, shard_index=i, device=None,
                                   gradient_state=GradientState(), **kw))
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_dataset_that_splits_by_worker_loses_nothing(workers):
    loaders = worker_shards(SelfSplitting(16), workers=workers)  # 16 = two full rounds: nothing repeated
    seen = sorted(i for l in loaders for b in l for i in b.tolist())
    assert seen == list(range(16))


def test_iterable_drop_last_and_len():
    loaders = worker_shards(SelfSplitting(10), drop_last=True)
    batches = [[b.tolist() for b in l] for l in loaders]
    assert batches == [[[0, 1, 2, 3]], [[4, 5, 6, 7]]]  # the incomplete last batch is dropped
    assert [len(l) for l in loaders] == [1, 1]
    even = worker_shards(SelfSplitting(10))
    assert [len(l) for l in even] == [2, 2] and [len(list(l)) for l in even] == [2, 2]
    for n, k, drop_last in [(10, 2, False), (13, 3, False), (13, 3, True), (3, 2, False)]:
        for i in range(k):
            ds = ShardedIterableDataset(SelfSplitting(n), batch_size=4, num_shards=k, shard_index=i,
                                        drop_last=drop_last)
            assert len(ds) == len(list(ds)), (n, k, i, drop_last)


def test_iterable_batch_size_none_on_one_process():
    acc = Accelerator()
    loader = acc.prepare(DataLoader(SelfSplitting(3), batch_size=None))
    assert [int(x) for x in loader] == [0, 1, 2]


def test_nested_loop_keeps_the_outer_loop_state():
    acc = Accelerator(gradient_accumulation_steps=4)
    train = acc.prepare(DataLoader(TensorDataset(torch.arange(6)), batch_size=1))
    evaluation = acc.prepare(DataLoader(TensorDataset(torch.arange(3)), batch_size=1))
    syncs = []
    for _ in train:
        for _ in evaluation:  # an evaluation pass inside each training step
            pass
        with acc.accumulate():
            syncs.append(acc.sync_gradients)
    assert syncs == [False, False, False, True, False, True]  # the last batch still closes the cycle


def _draws(make_loader, prepare):
    """Two epochs of batches, then what the global RNG and the loader's generator give next."""
    torch.manual_seed(3)
    loader = make_loader()
    if prepare:
        loader = Accelerator().prepare(loader)
    epochs = [[x.tolist() for (x,) in loader] for _ in range(2)]
    after = torch.rand(3).tolist()
    g = loader.generator
    return epochs, after, torch.rand(2, generator=g).tolist() if g is not None else None


def test_one_process_order_and_random_draws_are_the_unprepared_loaders():
    """In one process a prepared loader yields the unprepared loader's batches and draws
    from the global RNG and its generator exactly as it does (so later draws match)."""
    data = TensorDataset(torch.arange(10))

    def generator():
        g = torch.Generator()
        g.manual_seed(11)
        return g

    cases = {
        "shuffle": lambda: DataLoader(data, batch_size=3, shuffle=True),
        "generator": lambda: DataLoader(data, batch_size=3, shuffle=True, generator=generator()),
        "weighted": lambda: DataLoader(data, batch_size=2, sampler=WeightedRandomSampler([1.0] * 10, 10)),
        "batch_sampler_as_sampler": lambda: DataLoader(
            data, batch_size=None, sampler=BatchSampler(RandomSampler(data), 4, drop_last=False)),
        "drop_last": lambda: DataLoader(data, batch_size=4, shuffle=True, drop_last=True),
    }
    for name, make in cases.items():
        assert _draws(make, True) == _draws(make, False), name


def test_abandoned_iteration_starts_from_the_beginning_after_load_state(tmp_path):
    """An evaluation loop that breaks early leaves nothing to resume: after load_state its
    loader starts at the beginning, as in the live run; the training loader interrupted by
    the checkpoint continues mid-epoch."""

    def setup():
        torch.manual_seed(0)
        acc = Accelerator()
        train = DataLoader(TensorDataset(torch.arange(12)), batch_size=2, shuffle=True)
        evaluation = DataLoader(TensorDataset(torch.arange(100, 108)), batch_size=2)
        return acc, *acc.prepare(train, evaluation)

    acc, train, evaluation = setup()
    it = iter(train)
    for _ in range(2):
        next(it)
    for i, _ in enumerate(evaluation):
        if i == 1:
            break  # abandoned after 2 batches
    acc.save_state(str(tmp_path / "ckpt"))
    live_eval = [x.tolist() for (x,) in evaluation]
    live_train = [x.tolist() for (x,) in it]

    acc2, train2, evaluation2 = setup()
    acc2.load_state(str(tmp_path / "ckpt"))
    assert [x.tolist() for (x,) in evaluation2] == live_eval == [[100, 101], [102, 103], [104, 105], [106, 107]]
    assert [x.tolist() for (x,) in train2] == live_train and len(live_train) == 4


def test_dataloader_configuration_names_and_precedence():
    import surge
    import surge.utils
    from surge import DataLoaderConfiguration

    assert surge.utils.DataLoaderConfiguration is DataLoaderConfiguration
    acc = Accelerator(dataloader_config=DataLoaderConfiguration(split_batches=True, even_batches=False,
                                                                non_blocking=True, data_seed=4))
    assert (acc.split_batches, acc.even_batches, acc.non_blocking) == (True, False, True)
    assert acc.dataloader_config.data_seed == 4 and acc.dispatch_batches is None
    assert Accelerator(split_batches=True).dataloader_config.split_batches  # the plain arguments still work
    assert not Accelerator(even_batches=False).dataloader_config.even_batches
    with pytest.raises(ValueError, match=r"contradicts dataloader_config\.split_batches"):
        Accelerator(split_batches=False, dataloader_config=DataLoaderConfiguration(split_batches=True))
    with pytest.raises(TypeError, match="dispatch_batches='yes'"):
        DataLoaderConfiguration(dispatch_batches="yes")
    with pytest.raises(TypeError, match="must be a DataLoaderConfiguration"):
        Accelerator(dataloader_config={"split_batches": True})
    import importlib.util

    if importlib.util.find_spec("torchdata") is None:
        with pytest.raises(ImportError, match="pip install 'torchdata"):
            DataLoaderConfiguration(use_stateful_dataloader=True)
    loader = Accelerator(dataloader_config=DataLoaderConfiguration(non_blocking=True)).prepare(
        DataLoader(dataset(4), batch_size=2))
    assert loader._non_blocking  # handed to every device copy


def test_top_level_prepare_data_loader_and_skip_first_batches():
    import surge
    import surge.data_loader

    assert surge.prepare_data_loader is surge.data_loader.prepare_data_loader
    assert surge.skip_first_batches is surge.data_loader.skip_first_batches
    plain = DataLoader(dataset(10), batch_size=4)
    shard = surge.prepare_data_loader(plain, num_processes=2, process_index=1)
    assert epoch_ids(shard) == [[4, 5, 6, 7], [2, 3, 4, 5]]  # Accelerate's shard, padded from the start
    assert epoch_ids(surge.prepare_data_loader(plain)) == epoch_ids(plain)  # one process: the loader itself
    assert [x.tolist() for x, _ in surge.skip_first_batches(plain, 2)] == [[8, 9]]
    with pytest.raises(ValueError, match="put_on_device=True"):
        surge.prepare_data_loader(plain, dispatch_batches=True)


def test_custom_batch_sampler_set_epoch_each_epoch_in_one_process():
    class Epochs:
        def __init__(self):
            self.calls = []

        def set_epoch(self, epoch):
            self.calls.append(epoch)

        def __iter__(self):
            return iter([[0, 1], [2, 3]])

        def __len__(self):
            return 2

    sampler = Epochs()
    loader = Accelerator().prepare(DataLoader(dataset(4), batch_sampler=sampler))
    for _ in range(3):
        list(loader)
    assert sampler.calls == [0, 1, 2]  # as Accelerate's DataLoaderShard
