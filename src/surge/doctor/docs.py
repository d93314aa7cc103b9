"""docs/mistakes.md, generated from the rules table: ``python -m surge.doctor.docs > docs/mistakes.md``.

tests/unit/test_doctor.py checks that the committed page equals this text.
"""

from __future__ import annotations

from surge.doctor.rules import RULES

HEADER = """\
# Common mistakes

<!-- Generated from src/surge/doctor/rules.py by `python -m surge.doctor.docs > docs/mistakes.md`; do not edit. -->

`surge doctor train.py` reads a training script (without running it) and reports these
mistakes as `file:line: what is wrong; the fix` (see [the command line](cli.md#surge-doctor)).
It reports only what it is sure of: a mistake it cannot prove from the script's text (an
object passed through a function, a setting read at run time) is not reported. Rules marked
*info* are advice: they are printed but do not change the exit code.

| id | mistake |
| --- | --- |
"""


def render() -> str:
    """The page's text."""
    parts = [HEADER]
    parts += [f"| [`{rule.id}`](#{rule.id}) | {rule.title}{' (info)' if rule.severity == 'info' else ''} |\n"
              for rule in RULES]
    for rule in RULES:
        advice = " *(info: advice, the exit code stays 0)*" if rule.severity == "info" else ""
        parts.append(f"\n## {rule.id}\n\n**{rule.title}.**{advice} {_sentence(rule.what)}\n\n"
                     f"**Fix:** {rule.fix}.\n\n**Reported when** {rule.when}.\n")
        parts.append(f"\nThe mistake:\n\n```python\n{rule.mistake}\n```\n")
        parts.append(f"\nThe fix:\n\n```python\n{rule.fixed}\n```\n")
    return "".join(parts)


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


if __name__ == "__main__":  # pragma: no cover
    print(render(), end="")
