"""Model parallelism beyond data parallelism: Ulysses sequence parallelism.

Names load on first use (PEP 562, through surge._lazy), so ``import surge.parallel``
imports neither torch nor transformers.

Example:
    >>> from surge.parallel import UlyssesAttention, apply_ulysses, sequence_parallel_loss, shard_sequence
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from surge._lazy import lazy_names

_ULYSSES = "surge.parallel.ulysses"
_LAZY = {
    "ULYSSES_ATTENTION": _ULYSSES,
    "UlyssesAttention": _ULYSSES,
    "apply_ulysses": _ULYSSES,
    "sequence_parallel_loss": _ULYSSES,
    "shard_sequence": _ULYSSES,
    "shard_sequence_for_rank": _ULYSSES,
}

__all__ = [
    "ULYSSES_ATTENTION",
    "UlyssesAttention",
    "apply_ulysses",
    "sequence_parallel_loss",
    "shard_sequence",
    "shard_sequence_for_rank",
]

if TYPE_CHECKING:
    from surge.parallel.ulysses import (
        ULYSSES_ATTENTION,
        UlyssesAttention,
        apply_ulysses,
        sequence_parallel_loss,
        shard_sequence,
        shard_sequence_for_rank,
    )


__getattr__, __dir__ = lazy_names("surge.parallel", _LAZY, globals())
