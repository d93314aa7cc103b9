"""Every public name of HF Accelerate (the installed test dependency) either exists in surge at
the mirrored path (``accelerate.X`` -> ``surge.X``, ``accelerate.utils.X`` -> ``surge.utils.X``,
an ``Accelerator`` attribute -> the same attribute of ``surge.Accelerator``, ...) or is listed,
with the reason, in docs/migrating.md's table of names surge does not provide. The table may not
list a name surge has (it would be stale)."""

from __future__ import annotations

import importlib
import os
import re
import types

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# accelerate module -> the surge module that mirrors it
MIRRORS = {
    "accelerate": "surge",
    "accelerate.utils": "surge.utils",
    "accelerate.state": "surge.state",
    "accelerate.tracking": "surge.tracking",
    "accelerate.data_loader": "surge.data_loader",
    "accelerate.big_modeling": "surge.big_modeling",
    "accelerate.logging": "surge.logging",
    "accelerate.launchers": "surge.launchers",
    "accelerate.parallelism_config": "surge.parallelism_config",
}


def accelerate_names() -> list[tuple[str, str]]:
    """(accelerate module or "accelerate.Accelerator", name) for every public name: the
    packages' whole namespaces (what users import from them), the other modules' own
    definitions, and the Accelerator's public attributes."""
    names = []
    for module_name in MIRRORS:
        module = importlib.import_module(module_name)
        for name in dir(module):
            value = getattr(module, name)
            if name.startswith("_") or name == "TYPE_CHECKING" or isinstance(value, types.ModuleType):
                continue
            if module_name not in ("accelerate", "accelerate.utils") and \
                    getattr(value, "__module__", module_name) != module_name:
                continue  # another module's name imported for use (typing, torch, ...)
            names.append((module_name, name))
    accelerator = importlib.import_module("accelerate").Accelerator
    names += [("accelerate.Accelerator", n) for n in dir(accelerator) if not n.startswith("_")]
    return names


def in_surge(module_name: str, name: str) -> bool:
    if module_name == "accelerate.Accelerator":
        from surge import Accelerator

        return hasattr(Accelerator, name)
    try:
        return hasattr(importlib.import_module(MIRRORS[module_name]), name)
    except ImportError:
        return False


def documented_absent() -> set[str]:
    """Dotted names in the first column of docs/migrating.md's "not provided" table."""
    text = open(os.path.join(ROOT, "docs", "migrating.md")).read()
    section = text.split("## Accelerate names surge does not provide", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
    return {name for row in rows[1:] for name in re.findall(r"`([\w.]+)`", row.split(" | ")[0])}


def test_every_accelerate_name_is_in_surge_or_documented_as_absent():
    pytest.importorskip("accelerate")
    absent = documented_absent()
    missing = sorted(f"{m}.{n}" for m, n in accelerate_names() if not in_surge(m, n))
    undocumented = [name for name in missing if name not in absent]
    assert not undocumented, f"{len(undocumented)} Accelerate names neither in surge nor documented: {undocumented}"
    stale = sorted(absent - set(missing))
    assert not stale, f"docs/migrating.md lists names surge has (or Accelerate does not): {stale}"
