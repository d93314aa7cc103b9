"""One process, one device: the module runs as it is on ``accelerator.device``."""

from surge.strategies.base import Strategy


class SingleDevice(Strategy):
    """The strategy for a job of one process (the base behaviour, named)."""

    name = "single"
