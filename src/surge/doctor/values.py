"""What the checker knows about a name: the abstract values of ``surge doctor``'s walk.

A name is bound to a :class:`Value` only when the checker is sure what it holds (an
Accelerator, a prepared model, a batch from a prepared DataLoader, ...); anything else is
unknown and never reported on. No torch: values are read off the syntax tree.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

ACCELERATOR_NAMES = frozenset({"surge.Accelerator", "surge.accelerator.Accelerator", "accelerate.Accelerator",
                               "accelerate.accelerator.Accelerator"})
PLUGIN_NAMES = frozenset({"surge.DeepSpeedPlugin", "surge.utils.DeepSpeedPlugin",
                          "surge.config.plugins.DeepSpeedPlugin",
                          "accelerate.DeepSpeedPlugin", "accelerate.utils.DeepSpeedPlugin",
                          "accelerate.utils.dataclasses.DeepSpeedPlugin", "surge.utils.dataclasses.DeepSpeedPlugin"})
ACCUMULATION_PLUGIN_NAMES = frozenset({"surge.utils.GradientAccumulationPlugin", "surge.GradientAccumulationPlugin",
                                       "accelerate.utils.GradientAccumulationPlugin",
                                       "surge.config.kwargs.GradientAccumulationPlugin",
                                       "surge.utils.dataclasses.GradientAccumulationPlugin",
                                       "accelerate.utils.dataclasses.GradientAccumulationPlugin"})
DATALOADER_NAMES = frozenset({"torch.utils.data.DataLoader", "torch.utils.data.dataloader.DataLoader"})
MODULE_BASES = frozenset({"torch.nn.Module", "transformers.PreTrainedModel"})
# Kinds of values.
ACCELERATOR = "accelerator"
MODEL = "model"  # a prepared model
OPTIMIZER = "optimizer"  # a prepared optimizer
LOADER = "loader"  # a prepared DataLoader
SCHEDULER = "scheduler"
BATCH = "batch"  # (part of) a batch from a prepared DataLoader
RAW_OPTIMIZER = "raw optimizer"  # a torch optimizer not (yet) prepared
RAW_LOADER = "raw loader"
RAW_SCHEDULER = "raw scheduler"
MODULE = "module"  # an nn.Module built here, not prepared
DEVICE = "device"  # an accelerator's device written out: "cuda", torch.device("cuda:0")
CPU = "cpu"  # "cpu", torch.device("cpu")
RANK = "rank"  # a rank or world size read from the environment or torch.distributed
STATE_DICT = "state dict"  # a prepared model's state_dict()
OUTPUT = "output"  # computed from a prepared model's output (a loss)
PLUGIN = "plugin"  # a DeepSpeedPlugin with a literal zero stage


@dataclass(frozen=True)
class AcceleratorInfo:
    """What an ``Accelerator(...)`` call says, where it says it literally."""

    line: int
    device_placement: bool | None  # None: set, but not literally
    accumulation: int | None  # None: not literal; 0: not given
    mixed_precision: bool  # passed (any value)
    sharding_plugin: bool  # a deepspeed_plugin / fsdp_plugin argument
    zero_stage: int | None  # a DeepSpeedPlugin(zero_stage=<literal>) argument
    opaque: bool  # **kwargs or *args: anything may be set


@dataclass(frozen=True)
class Value:
    kind: str
    placed: bool = False  # MODEL, LOADER, BATCH: the accelerator moves it to its device
    accelerator: AcceleratorInfo | None = None
    key: int = 0  # raw objects: the node that built it (its identity)
    line: int = 0  # raw objects: where it was built
    source: str | None = None  # RAW_OPTIMIZER: the name whose parameters it optimizes
    source_kind: str | None = None  # ... and what that name held then
    source_key: int = 0  # ... and that object's identity (a model built here)
    stage: int | None = None  # PLUGIN


@dataclass(frozen=True)
class Several:
    """A tuple of values (what ``prepare`` returns, a tuple display)."""

    items: tuple[Value | None, ...] = field(default=())


Bound = Value | Several | None


def literal(node: ast.AST | None) -> object:
    """The value of a literal (``3``, ``"cuda:0"``, ``-1``), else ``...`` (unknown)."""
    if node is None:
        return ...
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return ...


def keyword(call: ast.Call, name: str) -> ast.expr | None:
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    return None


def opaque(call: ast.Call) -> bool:
    """``f(*args)`` or ``f(**kwargs)``: any argument may be set."""
    return any(kw.arg is None for kw in call.keywords) or any(isinstance(a, ast.Starred) for a in call.args)
