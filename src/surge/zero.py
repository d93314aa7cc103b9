"""``deepspeed.zero`` under surge's name: ``surge.zero.GatheredParameters``, ``surge.zero.Init``, ...

They live in :mod:`surge.deepspeed.partitioning`, whose module note says what a ZeRO-3
parameter is under surge (an FSDP2 ``DTensor`` shard) and what each name does with it.
"""

from surge.deepspeed.partitioning import (
    GatheredParameters,
    Init,
    ZeroParamStatus,
    ZeroParamType,
    register_external_parameter,
    unregister_external_parameter,
)

__all__ = [
    "GatheredParameters",
    "Init",
    "ZeroParamStatus",
    "ZeroParamType",
    "register_external_parameter",
    "unregister_external_parameter",
]
