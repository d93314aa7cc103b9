"""One process, one device: the module runs as it is on ``accelerator.device``."""

from __future__ import annotations

from surge.config.accelerator_config import AcceleratorConfig
from surge.config.resolve import StrategySpec
from surge.precision.base import Precision
from surge.strategies.base import Strategy
from surge.topology import Topology


class SingleDevice(Strategy):
    """The strategy for a job of one process (the base behaviour, named)."""

    name = "single"

    def __init__(self, topology: Topology, config: AcceleratorConfig, precision: Precision,
                 spec: StrategySpec | None = None) -> None:
        super().__init__(topology, config, precision, spec)
        # One process: nothing to shard. Optimizer offload still saves device memory
        # (DeepSpeed's ZeRO-Offload on one GPU); parameter offload needs FSDP, so it
        # becomes optimizer offload here.
        self.offload_optimizer = self.spec.offload_optimizer or self.spec.offload_params
