"""``surge doctor``: check a training script for common mistakes, without running it.

Exit codes: 0 clean (or advice only), 1 a mistake found, 2 a file that cannot be read or
parsed (one line on stderr). No torch: the script is read with ``ast``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from surge.doctor.check import Finding


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scripts", nargs="+", metavar="script.py",
                        help="The training script(s) to check; a directory means every .py file under it.")
    parser.add_argument("--config", default=None, metavar="PATH",
                        help="The config file the script is launched with (surge or Accelerate format, as `surge "
                             "launch --config_file` reads, or a DeepSpeed JSON): findings that depend on mixed "
                             "precision, accumulation or the ZeRO stage use it.")
    parser.add_argument("--json", action="store_true",
                        help="Print the findings as a JSON list (file, line, rule, severity, message, fix).")


def run(args: argparse.Namespace) -> int:
    from surge.doctor import DoctorError, check_file, read_settings

    findings: list[Finding] = []
    scripts = [found for path in args.scripts for found in _scripts(path)]
    try:
        settings = read_settings(args.config) if args.config is not None else None
        for script in scripts:
            findings += check_file(script, settings)
    except DoctorError as exc:
        print(f"surge doctor: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([finding.as_dict() for finding in findings], indent=2))
    else:
        for finding in findings:
            print(finding.text())
        print(summary(findings, len(scripts)))
    return 1 if any(finding.severity != "info" for finding in findings) else 0


def _scripts(path: str) -> list[str]:
    """``path``, or the .py files under it (sorted) when it is a directory."""
    if not os.path.isdir(path):
        return [path]
    found = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
        found += [os.path.join(root, name) for name in sorted(files) if name.endswith(".py")]
    return found


def summary(findings: list[Finding], scripts: int) -> str:
    where = "1 script" if scripts == 1 else f"{scripts} scripts"
    if not findings:
        return f"surge doctor: no mistakes found in {where}"
    advice = sum(finding.severity == "info" for finding in findings)
    mistakes = len(findings) - advice
    counts = [f"{mistakes} mistake{'s' * (mistakes != 1)}"] if mistakes else []
    counts += [f"{advice} piece{'s' * (advice != 1)} of advice"] if advice else []
    return f"surge doctor: {' and '.join(counts)} in {where} (see docs/mistakes.md)"
