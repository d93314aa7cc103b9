"""How a prepared model is placed, wrapped and synchronised (SPEC section 3)."""

from surge.strategies.base import Strategy, unwrap_module
from surge.strategies.ddp import DDP
from surge.strategies.registry import select_strategy
from surge.strategies.single import SingleDevice

__all__ = ["DDP", "SingleDevice", "Strategy", "select_strategy", "unwrap_module"]
