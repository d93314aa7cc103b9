"""Rules of the code base that neither ruff nor mypy checks (see principle 12, "Tools hold the rules")."""

import importlib
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "surge"
MAX_LINES = 600  # principle 5: past 600 lines, split by concept


def test_no_module_is_over_600_lines():
    sizes = {path.relative_to(SRC).as_posix(): len(path.read_text(encoding="utf-8").splitlines())
             for path in SRC.rglob("*.py")}
    assert sizes, f"no modules found under {SRC}"
    offenders = {name: n for name, n in sorted(sizes.items()) if n > MAX_LINES}
    assert not offenders, "modules over {} lines (split them by concept): {}".format(
        MAX_LINES, ", ".join(f"src/surge/{name} ({n} lines)" for name, n in offenders.items()))


@pytest.mark.parametrize("package", ["surge", "surge.deepspeed", "surge.parallel"])
def test_lazy_packages_export_every_lazy_name(package):
    module = importlib.import_module(package)
    assert set(module.__all__) - {"__version__"} == set(module._LAZY)
    for name in module.__all__:
        assert getattr(module, name) is not None  # each one resolves


def test_no_two_modules_share_a_name_across_concepts():
    """Modules of one name in different folders must be the same concept: the Accelerator's
    mixins are all ``methods.py``, a family's interface is its ``base.py``; package
    ``__init__`` files are exempt."""
    allowed = {"__init__.py", "methods.py", "base.py"}
    seen: dict[str, list[str]] = {}
    for path in SRC.rglob("*.py"):
        seen.setdefault(path.name, []).append(path.relative_to(SRC).as_posix())
    clashes = {name: paths for name, paths in seen.items() if len(paths) > 1 and name not in allowed}
    assert not clashes, clashes
