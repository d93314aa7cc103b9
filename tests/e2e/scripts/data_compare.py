"""The same data loops under surge or HF Accelerate (``--lib``): prints, on the main
process, as JSON, the sample indices every rank gets in each of two epochs for each
loader setting, and random draws made after the loops (how much of the global RNG and
of the loader's generator the loader consumed). tests/e2e/test_accelerate_data.py
launches it both ways on 2 processes and compares."""

import argparse
import json

import torch
import torch.distributed as dist
from compare_exit import leave
from torch.utils.data import BatchSampler, DataLoader, IterableDataset, RandomSampler, TensorDataset

parser = argparse.ArgumentParser()
parser.add_argument("--lib", choices=("surge", "accelerate"), required=True)
args = parser.parse_args()
if args.lib == "surge":
    from surge import Accelerator, DataLoaderConfiguration
    from surge.utils import set_seed
else:
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.utils import set_seed


class Stream(IterableDataset):
    def __init__(self, n):
        self.n = n

    def __iter__(self):
        return iter(range(self.n))


class EpochBatches:
    """A custom batch sampler whose order depends on the epoch it is told."""

    def __init__(self, n, size):
        self.n, self.size, self.epoch = n, size, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator()
        g.manual_seed(100 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        return iter([order[i : i + self.size] for i in range(0, self.n, self.size)])

    def __len__(self):
        return (self.n + self.size - 1) // self.size


def generator(seed):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def data(n):
    return TensorDataset(torch.arange(n))


CASES = {
    # name: (loader factory, DataLoaderConfiguration arguments, seed per rank?)
    "shuffle": (lambda: DataLoader(data(22), batch_size=4, shuffle=True), {}, False),
    "shuffle_unseeded": (lambda: DataLoader(data(22), batch_size=4, shuffle=True), {}, True),
    "generator": (lambda: DataLoader(data(22), batch_size=4, shuffle=True, generator=generator(7)), {}, True),
    "batch_sampler_as_sampler": (lambda: DataLoader(
        data(22), batch_size=None, sampler=BatchSampler(RandomSampler(data(22)), 4, drop_last=False)), {}, True),
    "custom_batch_sampler": (lambda: DataLoader(data(22), batch_sampler=EpochBatches(22, 4)), {}, False),
    "split_batches": (lambda: DataLoader(data(22), batch_size=4, shuffle=True), {"split_batches": True}, False),
    "even_batches": (lambda: DataLoader(data(10), batch_size=4), {}, False),
    "uneven_batches": (lambda: DataLoader(data(10), batch_size=4), {"even_batches": False}, False),
    "drop_last": (lambda: DataLoader(data(22), batch_size=4, shuffle=True, drop_last=True), {}, False),
    "iterable": (lambda: DataLoader(Stream(10), batch_size=4), {}, False),
    "iterable_split": (lambda: DataLoader(Stream(11), batch_size=4), {"split_batches": True}, False),
    "iterable_sharded": (lambda: DataLoader(Stream(10), batch_size=4), {"dispatch_batches": False}, False),
    "dispatch": (lambda: DataLoader(data(11), batch_size=4, shuffle=True), {"dispatch_batches": True}, False),
    "seedable": (lambda: DataLoader(data(22), batch_size=4, shuffle=True),
                 {"use_seedable_sampler": True, "data_seed": 3}, True),
}


def indices(batch):
    x = batch[0] if isinstance(batch, (list, tuple)) else batch
    return x.tolist()


def everyone(value):
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


results = {}
main = False
for name, (make, config, per_rank_seed) in CASES.items():
    acc = Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(**config))
    main = acc.is_main_process
    set_seed(42 + (acc.process_index if per_rank_seed else 0))
    loader = acc.prepare(make())
    epochs = [[indices(b) for b in loader] for _ in range(2)]
    g = loader.generator if isinstance(getattr(loader, "generator", None), torch.Generator) else None
    draws = {"global": torch.rand(2).tolist(), "generator": torch.rand(2, generator=g).tolist() if g else None}
    results[name] = {"epochs": everyone(epochs), "draws": everyone(draws)}
    del loader, acc
if main:
    print("RESULT " + json.dumps(results), flush=True)
leave()  # compare_exit.py: why the script ends this way
