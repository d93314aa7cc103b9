"""Choosing the strategy for a topology and a settled :class:`~surge.config.resolve.StrategySpec`."""

from __future__ import annotations

from surge.config.accelerator_config import AcceleratorConfig
from surge.config.resolve import StrategySpec
from surge.precision.base import Precision
from surge.strategies.base import Strategy
from surge.strategies.ddp import DDP
from surge.strategies.fsdp import FSDP
from surge.strategies.single import SingleDevice
from surge.strategies.tensor_parallel import TensorParallel
from surge.strategies.zero1 import Zero1
from surge.topology import Topology


def select_strategy(topology: Topology, config: AcceleratorConfig, precision: Precision,
                    spec: StrategySpec | None = None) -> Strategy:
    """The strategy that runs ``spec`` on ``topology`` (see SPEC section 3): one process
    runs as it is; shard degree 0 is DDP, 1 is ZeRO-1 (DDP + a sharded optimizer),
    2 and 3 are FSDP2 (parameters kept gathered after forward, or freed); tensor
    parallelism over every process without sharding is :class:`TensorParallel`."""
    spec = spec if spec is not None else StrategySpec()
    if not topology.is_distributed:
        return SingleDevice(topology, config, precision, spec)
    if spec.shard_degree == 1:
        return Zero1(topology, config, precision, spec)
    if spec.shard_degree >= 2:
        return FSDP(topology, config, precision, spec)
    if spec.mesh.tp > 1:  # tp alone: no data-parallel dimension to wrap in DDP
        return TensorParallel(topology, config, precision, spec)
    return DDP(topology, config, precision, spec)
