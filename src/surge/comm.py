"""``deepspeed.comm`` under surge's name: ``import surge.comm as dist`` / ``from surge import comm``.

The functions live in :mod:`surge.deepspeed.communication` (DeepSpeed's signatures on
torch.distributed; see there for what differs).
"""

from surge.deepspeed import communication as _implementation
from surge.deepspeed.communication import *  # noqa: F403  (the names are listed once, in the implementation)

__all__ = list(_implementation.__all__)
