"""Rules of the code base that neither ruff nor mypy checks (see principle 12, "Tools hold the rules")."""

from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "surge"
MAX_LINES = 600  # principle 5: past 600 lines, split by concept
KNOWN_LONG = {
    "accelerator.py",  # being split in main
}


def test_no_module_is_over_600_lines():
    sizes = {path.relative_to(SRC).as_posix(): len(path.read_text(encoding="utf-8").splitlines())
             for path in SRC.rglob("*.py")}
    assert sizes, f"no modules found under {SRC}"
    offenders = {name: n for name, n in sorted(sizes.items()) if n > MAX_LINES and name not in KNOWN_LONG}
    assert not offenders, "modules over {} lines (split them by concept): {}".format(
        MAX_LINES, ", ".join(f"src/surge/{name} ({n} lines)" for name, n in offenders.items()))
