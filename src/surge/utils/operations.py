"""``accelerate.utils.operations``: collectives and helpers on nested tensors, by
Accelerate's names and defaults.

The collectives are surge's (:mod:`surge.ops`); :func:`reduce` here defaults to
``"mean"`` as Accelerate's module-level ``reduce`` does (``Accelerator.reduce`` and
:func:`surge.ops.reduce` default to ``"sum"``, as Accelerate's method does).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from surge import ops
from surge._tree import is_namedtuple, tree_leaves, tree_map
from surge.device import send_to_device
from surge.ops import (
    CannotPadNestedTensorWarning,
    broadcast,
    broadcast_object_list,
    gather,
    gather_object,
    pad_across_processes,
)

__all__ = [
    "CannotPadNestedTensorWarning",
    "TensorInformation",
    "broadcast",
    "broadcast_object_list",
    "concatenate",
    "convert_outputs_to_fp32",
    "convert_to_fp32",
    "find_batch_size",
    "find_device",
    "gather",
    "gather_object",
    "get_data_structure",
    "honor_type",
    "ignorant_find_batch_size",
    "initialize_tensors",
    "is_namedtuple",
    "is_tensor_information",
    "is_torch_tensor",
    "listify",
    "pad_across_processes",
    "pad_input_tensors",
    "recursively_apply",
    "reduce",
    "send_to_device",
    "slice_tensors",
]


def is_torch_tensor(tensor: Any) -> bool:
    return isinstance(tensor, torch.Tensor)


def honor_type(obj: Any, generator: Any) -> Any:
    """A container of ``obj``'s type (named tuples included) holding ``generator``'s items."""
    if is_namedtuple(obj):
        return type(obj)(*list(generator))
    return type(obj)(generator)


def reduce(tensor: Any, reduction: str = "mean", scale: float = 1.0) -> Any:
    """Reduce tensors across processes: "mean" (default here, as Accelerate's function),
    "sum", "max", "min" or "none" (see :func:`surge.ops.reduce`)."""
    return ops.reduce(tensor, reduction, scale)  # type: ignore[arg-type]  # checked there


def recursively_apply(func: Callable[..., Any], data: Any, *args: Any,
                      test_type: Callable[[Any], bool] = is_torch_tensor, error_on_other_type: bool = False,
                      **kwargs: Any) -> Any:
    """Apply ``func(leaf, *args, **kwargs)`` to every leaf of ``data`` that passes
    ``test_type``, keeping the containers' types.

    Raises:
        TypeError: ``error_on_other_type`` and a leaf that does not pass ``test_type``.
    """
    if error_on_other_type:
        def check(leaf: Any) -> Any:
            raise TypeError(f"unsupported type {type(leaf).__name__} passed to {func.__name__}; only nested "
                            "lists/tuples/dicts of objects that pass the test type are accepted.")
        tree_map(check, data, lambda x: not isinstance(x, (list, tuple, Mapping)) and not test_type(x))
    return tree_map(lambda leaf: func(leaf, *args, **kwargs), data, test_type)


def find_batch_size(data: Any) -> int:
    """The first dimension of the first tensor in ``data``.

    Raises:
        ValueError: ``data`` holds no tensor.
    """
    leaves = tree_leaves(data, is_torch_tensor)
    if not leaves:
        raise ValueError(f"cannot find the batch size of {type(data).__name__}: it holds no tensor.")
    return int(leaves[0].shape[0])


def ignorant_find_batch_size(data: Any) -> int | None:
    """:func:`find_batch_size`, or None where it would raise."""
    try:
        return find_batch_size(data)
    except (ValueError, TypeError, IndexError):
        return None


def find_device(data: Any) -> torch.device | None:
    """The device of the first tensor in ``data`` (None if it holds none)."""
    leaves = tree_leaves(data, is_torch_tensor)
    return leaves[0].device if leaves else None


def listify(data: Any) -> Any:
    """Tensors turned into (nested) Python lists or numbers."""
    return tree_map(lambda t: t.tolist(), data, is_torch_tensor)


def slice_tensors(data: Any, tensor_slice: slice | int, process_index: int | None = None,
                  num_processes: int | None = None) -> Any:
    """Every tensor of ``data`` indexed by ``tensor_slice``."""
    return tree_map(lambda t: t[tensor_slice], data, is_torch_tensor)


def concatenate(data: list[Any], dim: int = 0) -> Any:
    """Concatenate a list of same-shaped nested structures of tensors, leaf by leaf.

    Raises:
        TypeError: the leaves are not tensors.
    """
    first = data[0]
    if isinstance(first, (tuple, list)):
        return honor_type(first, (concatenate([d[i] for d in data], dim=dim) for i in range(len(first))))
    if isinstance(first, Mapping):
        factory: Any = type(first)  # a dict subclass, rebuilt from a dict
        return factory({k: concatenate([d[k] for d in data], dim=dim) for k in first})
    if isinstance(first, torch.Tensor):
        return torch.cat(data, dim=dim)
    if len(data) == 1:
        return first
    raise TypeError(f"concatenate joins tensors; got {type(first).__name__}.")


@dataclass
class TensorInformation:
    """A tensor's shape and dtype (what :func:`get_data_structure` keeps of it)."""

    shape: torch.Size
    dtype: torch.dtype


def is_tensor_information(tensor_info: Any) -> bool:
    return isinstance(tensor_info, TensorInformation)


def get_data_structure(data: Any) -> Any:
    """The same nested structure with each tensor replaced by its :class:`TensorInformation`."""
    return tree_map(lambda t: TensorInformation(shape=t.shape, dtype=t.dtype), data, is_torch_tensor)


def initialize_tensors(data_structure: Any) -> Any:
    """Uninitialised CPU tensors for a structure of :class:`TensorInformation`
    (:func:`get_data_structure`'s result)."""
    return tree_map(lambda info: torch.empty(*info.shape, dtype=info.dtype), data_structure, is_tensor_information)


def pad_input_tensors(tensor: Any, batch_size: int, num_processes: int, dim: int = 0) -> Any:
    """Each tensor of ``tensor`` (``batch_size`` rows) padded with zero rows so that
    ``num_processes`` processes can split it, by Accelerate's rule (e.g. 3 rows for 4
    processes: 4 rows). Used before splitting inputs between processes.

    Raises:
        TypeError: a leaf that is not a tensor.
    """
    per_process = batch_size // num_processes
    remainder = batch_size - per_process * num_processes
    to_pad = num_processes - batch_size if per_process == 0 else num_processes - per_process
    if remainder > to_pad and to_pad < 1:  # Accelerate's rule
        to_pad = remainder - to_pad

    def pad(t: torch.Tensor) -> torch.Tensor:
        shape = list(t.shape)
        shape[0] = batch_size + to_pad
        out = t.new_zeros(shape)
        out[tuple(slice(0, t.shape[dim]) if i == dim else slice(None) for i in range(len(shape)))] = t
        return out

    return recursively_apply(pad, tensor, error_on_other_type=True)


class _ConvertOutputsToFp32:
    """A forward whose fp16/bf16 outputs come back in fp32 (picklable, unlike a closure)."""

    def __init__(self, model_forward: Callable[..., Any]) -> None:
        self.model_forward = model_forward
        functools.update_wrapper(self, model_forward)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return convert_to_fp32(self.model_forward(*args, **kwargs))


def convert_outputs_to_fp32(model_forward: Callable[..., Any]) -> Callable[..., Any]:
    """``model_forward`` wrapped so its half-precision outputs are converted to fp32
    (``model.forward = convert_outputs_to_fp32(model.forward)``); ``__wrapped__`` is the
    original."""
    converted = _ConvertOutputsToFp32(model_forward)

    def forward(*args: Any, **kwargs: Any) -> Any:
        return converted(*args, **kwargs)

    forward.__wrapped__ = converted  # type: ignore[attr-defined]  # as Accelerate: unwrapping pops it
    return forward


def convert_to_fp32(tensor: Any) -> Any:
    """fp16 / bf16 tensors converted to fp32 (others unchanged)."""
    return tree_map(lambda t: t.float() if t.dtype in (torch.float16, torch.bfloat16) else t, tensor,
                    is_torch_tensor)
