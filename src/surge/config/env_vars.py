"""``accelerate.utils.environment``'s helpers for scripts and tests that read or patch
environment variables, with Accelerate's signatures and results. They live in ``config/``
because only this package touches ``os.environ`` ([Note: one reader of the environment]
in environment.py); ``surge.utils`` exports them.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal, TypeVar, overload

T = TypeVar("T")

_TRUE = ("y", "yes", "t", "true", "on", "1")
_FALSE = ("n", "no", "f", "false", "off", "0")


@overload
def str_to_bool(value: str, to_bool: Literal[False] = False) -> int: ...
@overload
def str_to_bool(value: str, to_bool: Literal[True]) -> bool: ...
def str_to_bool(value: str, to_bool: bool = False) -> int | bool:
    """1 (True with ``to_bool``) for "y", "yes", "t", "true", "on", "1"; 0 (False) for "n",
    "no", "f", "false", "off", "0"; any case.

    Raises:
        ValueError: any other string.
    """
    lowered = value.lower()
    if lowered in _TRUE:
        return True if to_bool else 1
    if lowered in _FALSE:
        return False if to_bool else 0
    raise ValueError(f"invalid truth value {value!r}: use one of {', '.join(_TRUE)} or {', '.join(_FALSE)}.")


def get_int_from_env(env_keys: Iterable[str], default: int) -> int:
    """The first of ``env_keys`` set to an integer >= 0 (unset or negative ones are
    skipped), else ``default``.

    Raises:
        ValueError: a variable set to something that is not an integer.
    """
    for key in env_keys:
        raw = os.environ.get(key, "-1")
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"environment variable {key}={raw!r} is not an integer; set it to a whole number "
                             "or unset it.") from None
        if value >= 0:
            return value
    return default


def parse_flag_from_env(key: str, default: bool = False) -> bool:
    """Environment variable ``key`` read with :func:`str_to_bool` (``default`` when unset)."""
    return str_to_bool(os.environ.get(key, str(default))) == 1


def parse_choice_from_env(key: str, default: str = "no") -> str:
    """Environment variable ``key`` as a string (``str(default)`` when unset)."""
    return os.environ.get(key, str(default))


@contextlib.contextmanager
def patch_environment(**kwargs: Any) -> Iterator[None]:
    """Set each keyword (upper-cased) to ``str(value)`` in ``os.environ`` inside the block;
    afterwards each is back to what it was (removed when it was unset).

    Example:
        >>> with patch_environment(master_port=29501):
        ...     ...  # os.environ["MASTER_PORT"] == "29501"
    """
    saved = {key.upper(): os.environ.get(key.upper()) for key in kwargs}
    for key, value in kwargs.items():
        os.environ[key.upper()] = str(value)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


@contextlib.contextmanager
def clear_environment() -> Iterator[None]:
    """Empty ``os.environ`` inside the block; afterwards it is exactly what it was (what
    the block set is dropped)."""
    saved = os.environ.copy()
    os.environ.clear()
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


PURGED_PREFIXES = ("ACCELERATE_", "SURGE_")
"""What :func:`purge_accelerate_environment` restores: Accelerate's variables, and surge's."""


def purge_accelerate_environment(func_or_cls: T) -> T:
    """Decorate a function, or a test class's ``test*`` methods (its subclasses' too), so
    that the ``ACCELERATE_*`` and ``SURGE_*`` variables they set or change are put back
    when they return (e.g. ``TrainingArguments(fp16=True)`` sets
    ``ACCELERATE_MIXED_PRECISION``)."""

    def wrap(function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            saved = {k: v for k, v in os.environ.items() if k.startswith(PURGED_PREFIXES)}
            try:
                return function(*args, **kwargs)
            finally:
                for key in [k for k in os.environ if k.startswith(PURGED_PREFIXES)]:
                    if key not in saved:
                        del os.environ[key]
                os.environ.update(saved)

        wrapper._surge_purged = True  # type: ignore[attr-defined]  # marks a wrapped method
        return wrapper

    if not isinstance(func_or_cls, type):
        return wrap(func_or_cls)  # type: ignore[arg-type,return-value]  # a function in, its wrapper out

    def wrap_tests(cls: type) -> None:
        for name in dir(cls):
            method = getattr(cls, name)
            if name.startswith("test") and callable(method) and not getattr(method, "_surge_purged", False):
                setattr(cls, name, wrap(method))

    wrap_tests(func_or_cls)
    previous = func_or_cls.__dict__.get("__init_subclass__")

    def init_subclass(cls: type, /, **kwargs: Any) -> None:
        if previous is not None:
            previous.__func__(cls, **kwargs)
        wrap_tests(cls)

    func_or_cls.__init_subclass__ = classmethod(init_subclass)  # type: ignore[assignment]  # wraps subclasses' tests
    return func_or_cls


def are_libraries_initialized(*library_names: str) -> list[str]:
    """Those of ``library_names`` already imported in this process."""
    return [name for name in library_names if name in sys.modules]
