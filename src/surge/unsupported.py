"""Accelerate names that cannot mean anything in surge (TPU/XLA execution, Megatron-LM, ...).

They exist, so a script that imports them runs up to the point where it uses one; using
one raises :class:`UnsupportedError`, which names what is not supported and what to do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn


class UnsupportedError(NotImplementedError):
    """An Accelerate feature surge does not run (the message says which, and the way out)."""


def unsupported(name: str, what: str) -> NoReturn:
    """Raise :class:`UnsupportedError` for ``name``, which needs ``what``."""
    raise UnsupportedError(
        f"{name} needs {what}, which surge does not support: surge runs on CPUs and CUDA GPUs (DDP, ZeRO and FSDP "
        "through torch.distributed). Remove the call, or run this script with HF Accelerate."
    )


def unsupported_function(name: str, what: str) -> Callable[..., NoReturn]:
    """A function called ``name`` that raises :func:`unsupported` whatever its arguments."""

    def function(*args: Any, **kwargs: Any) -> NoReturn:
        unsupported(name, what)

    function.__name__ = function.__qualname__ = name
    function.__doc__ = f"Not supported in surge (needs {what}); raises UnsupportedError."
    return function
