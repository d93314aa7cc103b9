"""Choosing the strategy for a topology and config."""

from __future__ import annotations

from surge.config.accelerator import AcceleratorConfig
from surge.config.plugins import DeepSpeedPlugin, FullyShardedDataParallelPlugin, unsupported_reason
from surge.precision.base import Precision
from surge.state import DistributedType, Topology
from surge.strategies.base import Strategy
from surge.strategies.ddp import DDP
from surge.strategies.fsdp import FSDP
from surge.strategies.single import SingleDevice
from surge.strategies.zero1 import Zero1


def select_strategy(
    topology: Topology,
    config: AcceleratorConfig,
    precision: Precision,
    deepspeed_plugin: DeepSpeedPlugin | None = None,
    fsdp_plugin: FullyShardedDataParallelPlugin | None = None,
) -> Strategy:
    """The strategy that runs ``config`` on ``topology`` (see SPEC section 3).

    Raises:
        ValueError: both plugins, or a sharding feature this version cannot run yet.
    """
    if deepspeed_plugin is not None and fsdp_plugin is not None:
        raise ValueError("pass either deepspeed_plugin or fsdp_plugin, not both.")
    shard: bool | None = None  # None: no sharding; else reshard_after_forward
    layer_classes = None
    offload = checkpointing = False
    kind = DistributedType.FSDP
    reason = unsupported_reason(deepspeed_plugin, fsdp_plugin)
    if reason:
        raise ValueError(reason)
    if deepspeed_plugin is not None:
        kind = DistributedType.DEEPSPEED
        shard = {0: None, 1: None, 2: False, 3: True}[deepspeed_plugin.zero_stage]
        offload = deepspeed_plugin.offload_param_device == "cpu"
        checkpointing = deepspeed_plugin.activation_checkpointing
    elif fsdp_plugin is not None:
        shard = {"FULL_SHARD": True, "SHARD_GRAD_OP": False, "NO_SHARD": None}[fsdp_plugin.sharding_strategy]
        layer_classes = fsdp_plugin.transformer_layer_cls_to_wrap
        if fsdp_plugin.auto_wrap_policy == "NO_WRAP":
            layer_classes = []
        offload, checkpointing = fsdp_plugin.cpu_offload, fsdp_plugin.activation_checkpointing
    if topology.is_distributed and deepspeed_plugin is not None and deepspeed_plugin.zero_stage == 1:
        return Zero1(topology, config, precision)
    if shard is not None and topology.is_distributed:
        return FSDP(topology, config, precision, reshard_after_forward=shard, layer_classes=layer_classes,
                    distributed_type=kind, offload_params=offload, activation_checkpointing=checkpointing)
    if topology.is_distributed:
        return DDP(topology, config, precision)
    return SingleDevice(topology, config, precision)
