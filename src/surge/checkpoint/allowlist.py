"""Unpickling another library's checkpoint files without running code: ``torch.load(
weights_only=True)`` plus an explicit allow-list of the few types those files hold.

Used by the readers of HF Accelerate's folders (checkpoint/accelerate_format.py) and of
DeepSpeed's (checkpoint/deepspeed_files.py). Each reader names what it allows; anything
else in a file is refused with one error that names the file, every type found there that
is not allowed, and how to convert the checkpoint.
"""

from __future__ import annotations

import importlib
import pickle
import re
import warnings
import zipfile
from collections.abc import Iterable, Sequence
from typing import Any

import torch

NUMPY_RNG = ("numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct", "numpy.ndarray",
             "numpy.dtype", "numpy.dtypes.UInt32DType")
"""What NumPy's RNG state (``np.random.get_state()``) pickles as, beyond plain values:
an ndarray of uint32 rebuilt by ``_reconstruct``."""
NUMPY_SCALARS = ("numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar", "numpy.dtype")
"""A NumPy scalar (``np.float64(0.5)``): its dtype and its bytes."""

Allowed = Sequence[tuple[Any, str]]


def importable(dotted_names: Iterable[str]) -> list[tuple[Any, str]]:
    """``(object, dotted name)`` for each name that imports here (NumPy 1 and 2 spell some
    differently; a name that does not import is skipped)."""
    found: list[tuple[Any, str]] = []
    for dotted in dotted_names:
        module, _, name = dotted.rpartition(".")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # numpy.core is deprecated in NumPy 2
                found.append((getattr(importlib.import_module(module), name), dotted))
        except (ImportError, AttributeError):
            continue
    return found


def _refused_types(path: str, allowed: Allowed, text: str) -> str:
    """Every global in ``path`` outside ``allowed`` (torch lists them for zip files),
    else the one named in torch's message."""
    names: list[str] = []
    try:
        if zipfile.is_zipfile(path):
            mine = {dotted for _, dotted in allowed}
            names = [n for n in torch.serialization.get_unsafe_globals_in_checkpoint(path) if n not in mine]
    except Exception:  # a damaged archive: fall back to torch's own message
        names = []
    if not names:
        found = re.search(r"GLOBAL ([\w.]+)", text)
        names = [found.group(1)] if found else []
    return ", ".join(names) if names else "a type that is not a plain value"


def load_allowed(path: str, allowed: Allowed, *, kind: str, allowed_text: str, convert: str,
                 mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, also allowing ``allowed``
    (``(object, dotted name)`` pairs: the object the name stands for when unpickling).

    Args:
        kind: What the file is, for messages ("Accelerate checkpoint file").
        allowed_text: What is allowed besides tensors and plain values, for the refusal.
        convert: How to convert a refused checkpoint (one or two sentences).
        mmap: Map the file instead of reading it (zip-format files only; others are read).

    Raises:
        ValueError: the file is missing or corrupted, or holds another type (every such
            type named, with ``convert``).
    """
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except FileNotFoundError:
        raise ValueError(f"{kind} {path!r} is missing.") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as exc:
        text = str(exc)
        if "GLOBAL " in text or "weights_only" in text.lower() or "Weights only" in text:
            found = _refused_types(path, allowed, text)
            raise ValueError(f"refused to load {path!r}: it holds {found}, and surge unpickles checkpoints only with "
                             "torch.load(weights_only=True) (unpickling other types can run code); allowed are "
                             f"tensors, plain values and {allowed_text}. {convert}") from None
        detail = text.strip().splitlines()
        raise ValueError(f"{kind} {path!r} is corrupted or truncated ({type(exc).__name__}: "
                         f"{detail[0] if detail else 'no detail'}).") from None
