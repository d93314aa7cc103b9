"""Choosing the strategy for a topology and config."""

from __future__ import annotations

from surge.config.accelerator import AcceleratorConfig
from surge.precision.base import Precision
from surge.state import Topology
from surge.strategies.base import Strategy
from surge.strategies.ddp import DDP
from surge.strategies.single import SingleDevice


def select_strategy(topology: Topology, config: AcceleratorConfig, precision: Precision) -> Strategy:
    """The strategy that runs ``config`` on ``topology`` (see SPEC section 3)."""
    if topology.is_distributed:
        return DDP(topology, config, precision)
    return SingleDevice(topology, config, precision)
