"""Small checks that turn bad user values into errors that name the value, what is
allowed and the fix. Every config dataclass validates through these, so the wording
is the same everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def check_choice(name: str, value: Any, allowed: Iterable[str], *, fix: str = "") -> str:
    """Return ``value`` if it is one of ``allowed`` (case-insensitive), else raise.

    Raises:
        TypeError: ``value`` is not a string.
        ValueError: ``value`` is a string outside ``allowed``.
    """
    allowed = tuple(allowed)
    shown = ", ".join(repr(a) for a in allowed)
    if not isinstance(value, str):
        raise TypeError(
            f"{name}={value!r} has type {type(value).__name__}; expected one of {shown}."
            + (f" {fix}" if fix else "")
        )
    lowered = value.lower()
    for choice in allowed:
        if choice.lower() == lowered:
            return choice
    raise ValueError(
        f"{name}={value!r} is not supported; choose one of {shown}." + (f" {fix}" if fix else "")
    )


def check_int(
    name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None, fix: str = ""
) -> int:
    """Return ``value`` if it is an int (not a bool) within bounds, else raise.

    Raises:
        TypeError: ``value`` is not an integer (strings and bools are refused: "4" is
            usually a config-file mistake that should be seen, not silently converted).
        ValueError: ``value`` is outside ``[minimum, maximum]``.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"{name}={value!r} has type {type(value).__name__}; expected an integer"
            + (f" >= {minimum}" if minimum is not None else "")
            + "."
            + (f" {fix}" if fix else "")
        )
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        if minimum is not None and maximum is not None:
            allowed = f"an integer from {minimum} to {maximum}"
        elif minimum is not None:
            allowed = f"an integer >= {minimum}"
        else:
            allowed = f"an integer <= {maximum}"
        raise ValueError(f"{name}={value!r} is out of range; expected {allowed}." + (f" {fix}" if fix else ""))
    return value


def check_bool(name: str, value: Any) -> bool:
    """Return ``value`` if it is a bool, else raise TypeError naming it."""
    if not isinstance(value, bool):
        raise TypeError(f"{name}={value!r} has type {type(value).__name__}; expected True or False.")
    return value


def check_positive_float(name: str, value: Any, *, fix: str = "") -> float:
    """Return ``value`` as a float if it is a positive real number, else raise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}={value!r} has type {type(value).__name__}; expected a positive number."
                        + (f" {fix}" if fix else ""))
    if not value > 0 or value == float("inf"):  # NaN fails `> 0` too
        raise ValueError(f"{name}={value!r} is out of range; expected a positive, finite number."
                         + (f" {fix}" if fix else ""))
    return float(value)
