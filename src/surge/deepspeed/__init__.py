"""DeepSpeed's API on surge: an adapter that translates into the public core.

``surge.initialize`` / :class:`Engine` (engine.py) run a script written for
``deepspeed.initialize`` on an :class:`~surge.Accelerator`; ds_config.py reads DeepSpeed
JSON configs (no torch; ds_keys.py: every key DeepSpeed reads and what surge does with it);
optimizers.py and schedulers.py build the config's ``optimizer`` and ``scheduler`` sections
as torch objects; checkpointing.py is ``deepspeed.checkpointing`` (also
``surge.checkpointing``). DeepSpeed's module-level API: communication.py
(``deepspeed.comm`` and ``init_distributed``, published as ``surge.comm``),
device_abstraction.py with cuda_/cpu_/mps_accelerator.py (``get_accelerator``, published
in ``surge.accelerator``), partitioning.py (``deepspeed.zero``, published as ``surge.zero``);
dummy.py: Accelerate's ``DummyOptim`` / ``DummyScheduler``. Nothing here reaches into a
strategy: the engine calls the Accelerator's public methods and the internal entry points
made for it (the shared checkpoint write/read, the undivided backward).

Names load on first use (PEP 562), like ``surge`` itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from surge._lazy import lazy_names

_LAZY = {
    "initialize": "surge.deepspeed.engine",
    "Engine": "surge.deepspeed.engine",
    "add_config_arguments": "surge.deepspeed.engine",
    "checkpointing": "surge.deepspeed.checkpointing",  # the module (deepspeed.checkpointing)
    "parse_deepspeed_config": "surge.deepspeed.ds_config",
    "DeepSpeedSettings": "surge.deepspeed.ds_config",
    "WarmupLR": "surge.deepspeed.schedulers",
    "WarmupDecayLR": "surge.deepspeed.schedulers",
    "WarmupCosineLR": "surge.deepspeed.schedulers",
    "init_distributed": "surge.deepspeed.communication",
    "get_accelerator": "surge.deepspeed.device_abstraction",
    "DummyOptim": "surge.deepspeed.dummy",
    "DummyScheduler": "surge.deepspeed.dummy",
}

__all__ = [
    "DeepSpeedSettings",
    "DummyOptim",
    "DummyScheduler",
    "Engine",
    "WarmupCosineLR",
    "WarmupDecayLR",
    "WarmupLR",
    "add_config_arguments",
    "checkpointing",
    "get_accelerator",
    "init_distributed",
    "initialize",
    "parse_deepspeed_config",
]  # every name of _LAZY (tests/unit/test_rules.py checks)

if TYPE_CHECKING:  # pragma: no cover
    from surge.deepspeed import checkpointing
    from surge.deepspeed.communication import init_distributed
    from surge.deepspeed.device_abstraction import get_accelerator
    from surge.deepspeed.ds_config import DeepSpeedSettings, parse_deepspeed_config
    from surge.deepspeed.dummy import DummyOptim, DummyScheduler
    from surge.deepspeed.engine import Engine, add_config_arguments, initialize
    from surge.deepspeed.schedulers import WarmupCosineLR, WarmupDecayLR, WarmupLR


__getattr__, __dir__ = lazy_names("surge.deepspeed", _LAZY, globals())
