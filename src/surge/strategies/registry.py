"""Choosing the strategy for a topology and config."""

from __future__ import annotations

from surge.config.accelerator import AcceleratorConfig
from surge.config.plugins import DeepSpeedPlugin, FullyShardedDataParallelPlugin
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
        ValueError: both plugins.
    """
    if deepspeed_plugin is not None and fsdp_plugin is not None:
        raise ValueError("pass either deepspeed_plugin or fsdp_plugin, not both.")
    shard: bool | None = None  # None: no sharding; else reshard_after_forward
    layer_classes = min_num_params = None
    offload = offload_optimizer = checkpointing = hybrid = False
    kind = DistributedType.FSDP
    if deepspeed_plugin is not None:
        kind = DistributedType.DEEPSPEED
        offload = deepspeed_plugin.offload_param_device == "cpu"
        offload_optimizer = deepspeed_plugin.offload_optimizer_device == "cpu"
        # ZeRO-1 with its optimizer offloaded runs as ZeRO-2 (as in DeepSpeed, one
        # optimizer serves both stages): once the state is on the CPU, sharding the
        # gradients too only saves more device memory.
        shard = {0: None, 1: False if offload_optimizer else None, 2: False, 3: True}[deepspeed_plugin.zero_stage]
        checkpointing = deepspeed_plugin.activation_checkpointing
    elif fsdp_plugin is not None:
        strategy = fsdp_plugin.sharding_strategy
        shard = {"FULL_SHARD": True, "SHARD_GRAD_OP": False, "HYBRID_SHARD": True, "NO_SHARD": None}[strategy]
        hybrid = strategy == "HYBRID_SHARD"
        layer_classes = fsdp_plugin.transformer_layer_cls_to_wrap
        if fsdp_plugin.auto_wrap_policy == "NO_WRAP":
            layer_classes = []
        elif fsdp_plugin.auto_wrap_policy == "SIZE_BASED_WRAP":
            min_num_params = fsdp_plugin.min_num_params
        offload, checkpointing = fsdp_plugin.cpu_offload, fsdp_plugin.activation_checkpointing
    blocks = {"activation_checkpointing": checkpointing, "layer_classes": layer_classes,
              "min_num_params": min_num_params}
    if not topology.is_distributed:
        # One process: nothing to shard. Optimizer offload still saves device memory
        # (DeepSpeed's ZeRO-Offload on one GPU); parameter offload needs FSDP.
        return SingleDevice(topology, config, precision, offload_optimizer=offload_optimizer or offload, **blocks)
    if deepspeed_plugin is not None and deepspeed_plugin.zero_stage == 1 and not offload_optimizer:
        return Zero1(topology, config, precision, **blocks)
    if shard is not None:
        return FSDP(topology, config, precision, reshard_after_forward=shard, distributed_type=kind,
                    offload_params=offload, offload_optimizer=offload_optimizer, hybrid=hybrid, **blocks)
    return DDP(topology, config, precision, **blocks)
