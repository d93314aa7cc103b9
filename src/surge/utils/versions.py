"""``accelerate.utils.versions``: compare installed package versions (PEP 440 rules)."""

from __future__ import annotations

import importlib.metadata
from typing import Any

from surge.utils.constants import STR_OPERATION_TO_FUNC

try:
    from packaging.version import Version, parse
except ImportError:  # packaging is not a dependency of surge; torch vendors it
    from torch._vendor.packaging.version import Version, parse  # type: ignore[assignment]

__all__ = ["compare_versions", "is_torch_version"]


def compare_versions(library_or_version: str | Version, operation: str, requirement_version: str) -> bool:
    """``version <operation> requirement_version``, where the version is a ``Version``'s or
    the installed version of the library named ``library_or_version`` (a string is always a
    library name, as in Accelerate).

    Example:
        >>> compare_versions("torch", ">=", "2.0")
        True

    Raises:
        ValueError: ``operation`` is not one of ">", ">=", "==", "!=", "<=", "<".
        importlib.metadata.PackageNotFoundError: no library of that name is installed.
    """
    if operation not in STR_OPERATION_TO_FUNC:
        raise ValueError(f"operation={operation!r} is not a comparison; use one of {list(STR_OPERATION_TO_FUNC)}.")
    version: Any = library_or_version
    if isinstance(version, str):
        version = parse(importlib.metadata.version(version))
    return bool(STR_OPERATION_TO_FUNC[operation](version, parse(requirement_version)))


def is_torch_version(operation: str, version: str) -> bool:
    """The installed torch's version compared to ``version`` (``is_torch_version(">=", "2.4")``)."""
    return compare_versions(parse(importlib.metadata.version("torch")), operation, version)
