"""Sharded data loading (pure samplers and the prepared DataLoader)."""

from surge.data.loader import PreparedDataLoader, shard_dataloader
from surge.data.sampler import ShardedBatchSampler, ShardedIterableDataset

__all__ = ["PreparedDataLoader", "ShardedBatchSampler", "ShardedIterableDataset", "shard_dataloader"]
