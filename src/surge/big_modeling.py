"""Building models without their memory: ``init_empty_weights`` and ``init_on_device``
(HF Accelerate's ``accelerate.big_modeling`` names).

A model built under ``init_empty_weights()`` has its parameters on the meta device: shapes
and dtypes, no storage. Under sharding (FSDP, ZeRO-2/3 on two or more processes)
``Accelerator.prepare`` fills such a model from rank 0's weights shard by shard, so a
model larger than one process's memory can be prepared; see [Note: a model built on the
meta device] in strategies/meta.py. Other strategies refuse it with one error.

Example:
    >>> from surge import Accelerator, FullyShardedDataParallelPlugin, init_empty_weights
    >>> accelerator = Accelerator(fsdp_plugin=FullyShardedDataParallelPlugin(cpu_ram_efficient_loading=True))
    >>> if accelerator.is_main_process:
    ...     model = build_and_load()            # the real weights, on rank 0 only
    ... else:
    ...     with init_empty_weights():
    ...         model = build()                 # no memory for the weights
    >>> model = accelerator.prepare(model)      # each process holds its shards of rank 0's weights
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

__all__ = ["init_empty_weights", "init_on_device"]


@contextlib.contextmanager
def init_empty_weights(include_buffers: bool = False) -> Iterator[None]:
    """Inside the block, new modules get their parameters (and, with
    ``include_buffers=True``, their buffers and every other tensor created) on the meta
    device: no memory is used for them. Buffers are real by default, as in Accelerate
    (a rotary embedding's frequencies are computed, not loaded).

    Example:
        >>> with init_empty_weights():
        ...     model = nn.Sequential(*[nn.Linear(10_000, 10_000) for _ in range(1_000)])  # no RAM used
    """
    with init_on_device(torch.device("meta"), include_buffers=include_buffers):
        yield


@contextlib.contextmanager
def init_on_device(device: torch.device | str, include_buffers: bool = False) -> Iterator[None]:
    """Inside the block, new modules get their parameters on ``device`` (with
    ``include_buffers=True``: every tensor created, buffers included, through torch's
    default-device context).

    Raises:
        TypeError: ``include_buffers`` is not a bool. RuntimeError: an unknown device.

    Example:
        >>> with init_on_device("cuda"):
        ...     layer = nn.Linear(100, 100)  # created on the GPU
    """
    if not isinstance(include_buffers, bool):
        raise TypeError(f"include_buffers={include_buffers!r} must be True or False.")
    device = torch.device(device)
    if include_buffers:
        with device:
            yield
        return
    register = nn.Module.register_parameter

    def register_on_device(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, param)
        if param is not None:
            module._parameters[name] = _moved(module._parameters[name], device)

    nn.Module.register_parameter = register_on_device  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def _moved(param: Any, device: torch.device) -> nn.Parameter:
    """``param`` on ``device``, of the same class, with its ``requires_grad`` and its
    attributes (transformers marks parameters with ``_is_hf_initialized``; quantised
    parameter classes take their settings as constructor arguments)."""
    attributes = dict(vars(param))
    data = param.data.to(device)
    if type(param) is nn.Parameter:
        moved = nn.Parameter(data, requires_grad=param.requires_grad)
    else:
        public = {k: v for k, v in attributes.items() if not k.startswith("_")}
        moved = type(param)(data, requires_grad=param.requires_grad, **public)
    for key, value in attributes.items():
        if key not in vars(moved):
            setattr(moved, key, value)
    return moved
