"""Model parallelism that is not data parallelism: Ulysses sequence parallelism.

Names load lazily (PEP 562) so that ``import surge.parallel`` imports neither
torch.distributed nor transformers.

Example:
    >>> from surge.parallel import UlyssesAttention, apply_ulysses, shard_sequence
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from surge.parallel.ulysses import (
        ULYSSES_ATTENTION,
        UlyssesAttention,
        apply_ulysses,
        sequence_parallel_loss,
        shard_sequence,
        shard_sequence_for_rank,
    )

__all__ = [
    "ULYSSES_ATTENTION",
    "UlyssesAttention",
    "apply_ulysses",
    "sequence_parallel_loss",
    "shard_sequence",
    "shard_sequence_for_rank",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("surge.parallel.ulysses"), name)
    raise AttributeError(f"module 'surge.parallel' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
