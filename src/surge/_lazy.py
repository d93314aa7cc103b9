"""Public names that load on first use (PEP 562), so importing a package is light."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_names(package: str, names: dict[str, str], namespace: dict[str, Any]
               ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module ``__getattr__`` and ``__dir__`` of ``package``, whose public ``names``
    (name -> defining module) are imported on first access and then cached in the
    package's ``namespace`` (its ``globals()``), so later look-ups skip ``__getattr__``.
    A name that maps to the submodule of that name (``"comm": "surge.comm"``) is the
    submodule itself, so ``import surge as deepspeed; deepspeed.comm.get_rank()`` works."""

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        imported = importlib.import_module(module)
        value = imported if module == f"{package}.{name}" else getattr(imported, name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__
