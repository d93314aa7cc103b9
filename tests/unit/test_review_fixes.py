"""Regression tests for behaviours found in review: worker-splitting datasets, nested
loaders, sampler randomness, several fp16 optimizers, short-cycle rescaling."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset, WeightedRandomSampler, get_worker_info

from surge import Accelerator
from surge.accumulation import GradientState
from surge.data.loader import shard_dataloader
from surge.data.sampler import ShardedIterableDataset
from surge.utils import GradScalerKwargs


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


def shards(dataset, n_shards=2, workers=0, drop_last=False, **kw):
    out = []
    for i in range(n_shards):
        loader = DataLoader(dataset, batch_size=4, num_workers=workers, drop_last=drop_last)
        out.append(shard_dataloader(loader, num_shards=n_shards, shard_index=i, device=None,
                                   gradient_state=GradientState(), seed=0, **kw))
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_dataset_that_splits_by_worker_loses_nothing(workers):
    loaders = shards(SelfSplitting(16), workers=workers, even_batches=False)
    seen = sorted(i for l in loaders for b in l for i in b.tolist())
    assert seen == list(range(16))


def test_iterable_drop_last_and_len():
    loaders = shards(SelfSplitting(10), drop_last=True)
    batches = [[b.tolist() for b in l] for l in loaders]
    assert batches == [[[0, 1, 2, 3]], [[4, 5, 6, 7]]]  # the incomplete last batch is dropped
    assert [len(l) for l in loaders] == [1, 1]
    even = shards(SelfSplitting(10))
    assert [len(l) for l in even] == [2, 2] and [len(list(l)) for l in even] == [2, 2]
    for n, k, even_batches in [(10, 2, False), (13, 3, False), (13, 3, True), (3, 2, True)]:
        for i in range(k):
            ds = ShardedIterableDataset(SelfSplitting(n), batch_size=4, num_shards=k, shard_index=i,
                                        even_batches=even_batches)
            assert len(ds) == len(list(ds)), (n, k, i, even_batches)


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


def test_any_sampler_gets_its_own_generator():
    acc = Accelerator()
    sampler = WeightedRandomSampler([1.0] * 8, num_samples=8)
    loader = acc.prepare(DataLoader(TensorDataset(torch.arange(8)), batch_size=2, sampler=sampler))
    state = torch.get_rng_state()
    first = [x.tolist() for (x,) in loader]
    assert torch.equal(state, torch.get_rng_state())
    assert sampler.generator is None  # the user's sampler is not modified
    loader.set_epoch(0)
    assert [x.tolist() for (x,) in loader] == first


def test_fp16_several_optimizers_update_the_scale_once():
    acc = Accelerator(mixed_precision="fp16", kwargs_handlers=[GradScalerKwargs(init_scale=1024, growth_interval=1)])
    a, b = nn.Linear(2, 1), nn.Linear(2, 1)
    a, b, opt_a, opt_b = acc.prepare(
        a, b, torch.optim.SGD(a.parameters(), lr=0.1), torch.optim.SGD(b.parameters(), lr=0.1)
    )
    ref_b = [p.detach().clone() for p in b.parameters()]
    x = torch.ones(1, 2)
    acc.backward(a(x).sum() + b(x).sum())
    grads_b = [p.grad.clone() / 1024 for p in b.parameters()]
    opt_a.step()
    opt_b.step()
    assert acc.scaler.get_scale() == 2048  # grew once, after both optimizers stepped
    for p, r, g in zip(b.parameters(), ref_b, grads_b, strict=True):
        assert torch.allclose(p, r - 0.1 * g)  # the second optimizer used the right scale


def test_fp16_alternating_optimizers_clip_unscaled_gradients():
    acc = Accelerator(mixed_precision="fp16", kwargs_handlers=[GradScalerKwargs(init_scale=1024)])
    d, g = nn.Linear(3, 1), nn.Linear(3, 1)
    d, g, opt_d, opt_g = acc.prepare(
        d, g, torch.optim.SGD(d.parameters(), lr=0.0), torch.optim.SGD(g.parameters(), lr=0.0)
    )
    x = torch.ones(1, 3)
    for step in range(3):
        acc.backward(d(x).sum())
        norm = acc.clip_grad_norm_(d.parameters(), 1e9)
        assert norm.item() == pytest.approx(2.0, rel=1e-3)  # |(1,1,1,1)|: weight grads 1 and bias grad 1
        opt_d.step()
        opt_d.zero_grad()
        if step % 2:
            acc.backward(g(x).sum())
            opt_g.step()
            opt_g.zero_grad()


def test_short_cycle_rescales_optimizer_only_parameters():
    temperature = nn.Parameter(torch.tensor(1.0))
    ref = temperature.detach().clone().requires_grad_(True)
    # 3 micro-batches with K=2: the last cycle holds 1 micro-batch and is its own mean.
    (ref * 2.0).backward()
    acc = Accelerator(gradient_accumulation_steps=2)
    model = acc.prepare(nn.Linear(1, 1))
    opt = acc.prepare(torch.optim.SGD([temperature, *model.parameters()], lr=0.0))
    loader = acc.prepare(DataLoader(TensorDataset(torch.ones(3, 1)), batch_size=1))
    for i, (x,) in enumerate(loader):
        with acc.accumulate(model):
            acc.backward(temperature * 2.0 + model(x).sum() * 0)
            opt.step()
            if i < 2:
                opt.zero_grad()
    assert temperature.grad.item() == pytest.approx(ref.grad.item())


def test_closure_result_and_reduce_none():
    acc = Accelerator()
    model = nn.Linear(1, 1)
    opt = acc.prepare(torch.optim.SGD(model.parameters(), lr=0.1))

    def closure():
        opt.zero_grad()
        loss = model(torch.ones(1, 1)).sum()
        loss.backward()
        return loss

    assert isinstance(opt.step(closure), torch.Tensor)
    x = torch.tensor([1.0, 2.0])
    assert torch.equal(acc.reduce(x, "none", scale=2.0), x * 2)
