"""Sharded data loading (pure samplers, the prepared DataLoader, dispatching)."""

from surge.data.loader import PreparedDataLoader, shard_dataloader
from surge.data.sampler import SeedableRandomSampler, ShardedBatchSampler, ShardedIterableDataset

__all__ = ["PreparedDataLoader", "SeedableRandomSampler", "ShardedBatchSampler", "ShardedIterableDataset",
           "shard_dataloader"]
