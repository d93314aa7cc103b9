"""``deepspeed.zero`` under surge's name: ``surge.zero.GatheredParameters``, ``surge.zero.Init``, ...

They live in :mod:`surge.deepspeed.partitioning`, whose module note says what a ZeRO-3
parameter is under surge (an FSDP2 ``DTensor`` shard) and what each name does with it.
"""

from surge.deepspeed import partitioning as _implementation
from surge.deepspeed.partitioning import *  # noqa: F403  (the names are listed once, in the implementation)

__all__ = list(_implementation.__all__)
