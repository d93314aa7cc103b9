"""HF Accelerate's ``accelerate.parallelism_config`` module path: ``ParallelismConfig``
(defined in surge/config/parallelism.py; also ``surge.ParallelismConfig``).

Example:
    >>> from surge.parallelism_config import ParallelismConfig   # was: from accelerate.parallelism_config import ...
    >>> ParallelismConfig(dp_shard_size=2, cp_size=2).total_size
    4
"""

from __future__ import annotations

from surge.config.parallelism import ParallelismConfig

__all__ = ["ParallelismConfig"]
