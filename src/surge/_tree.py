"""Walking nested batches: lists, tuples (named too), mappings, and leaves.

Batches come as tensors, dicts of tensors, transformers' BatchEncoding (a Mapping),
namedtuples and lists of all of these. Everything that moves, gathers or pads a batch
goes through :func:`tree_map` so each of them handles the same shapes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


def is_namedtuple(obj: Any) -> bool:
    return isinstance(obj, tuple) and hasattr(obj, "_fields")


def tree_map(fn: Callable[[Any], Any], data: Any, is_leaf: Callable[[Any], bool]) -> Any:
    """Apply ``fn`` to every leaf of ``data`` for which ``is_leaf`` is true, keeping the
    containers' types; anything else is returned unchanged."""
    if is_leaf(data):
        return fn(data)
    if isinstance(data, (list, tuple)):
        mapped = [tree_map(fn, item, is_leaf) for item in data]
        if is_namedtuple(data):
            return type(data)(*mapped)
        try:
            return type(data)(mapped)
        except TypeError:  # a sequence subclass with another constructor
            return tuple(mapped) if isinstance(data, tuple) else list(mapped)
    if isinstance(data, Mapping):
        mapped_dict = {k: tree_map(fn, v, is_leaf) for k, v in data.items()}
        factory: Any = type(data)  # a dict subclass, or a Mapping whose constructor may take a dict
        try:
            return factory(mapped_dict)
        except TypeError:  # a Mapping subclass with another constructor
            return mapped_dict
    return data


def tree_leaves(data: Any, is_leaf: Callable[[Any], bool]) -> list[Any]:
    """The leaves of ``data`` in the order :func:`tree_map` visits them."""
    out: list[Any] = []

    def visit(leaf: Any) -> Any:
        out.append(leaf)
        return leaf

    tree_map(visit, data, is_leaf)
    return out
