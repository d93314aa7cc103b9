"""Command-line hints: launcher flags given after the script, and "did you mean" for a
mistyped flag. Pure functions over a parser's option strings (standard library only:
``surge --help`` stays free of torch); :func:`warn_flags_after_script` is the one that
prints.

Options are described by an *arity* mapping, option string -> the action's ``nargs``
(``None``: one value, ``0``: none, ``"?"``: an optional value, ``"+"``/``"*"``: a list).
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import shlex
import sys
from collections.abc import Iterable, Mapping, Sequence

Arity = Mapping[str, "int | str | None"]
_FLAG = re.compile(r"^--?[A-Za-z]")
# Flags that mean the same to any program: never "misplaced".
_EVERYONES = frozenset({"-h", "--help"})


def flag_name(token: str) -> str | None:
    """``"--num_processes=2"`` -> ``"--num_processes"``; None for what is not a flag (a
    value, ``-``, ``--``, a negative number)."""
    if not _FLAG.match(token):
        return None
    return token.split("=", 1)[0]


def arity(parser: argparse.ArgumentParser, visible_only: bool = False) -> dict[str, int | str | None]:
    """Every option string of ``parser`` -> its ``nargs`` (``visible_only``: leave out the
    options whose help is suppressed)."""
    return {option: action.nargs for action in parser._actions for option in action.option_strings
            if not (visible_only and action.help == argparse.SUPPRESS)}


def _values(tokens: Sequence[str], i: int, nargs: int | str | None) -> int:
    """How many of ``tokens[i + 1:]`` an option with ``nargs`` takes as its values."""
    rest = tokens[i + 1:]
    if nargs is None:
        return min(1, len(rest))
    if isinstance(nargs, int):
        return min(nargs, len(rest))
    if nargs == argparse.REMAINDER:
        return len(rest)
    taken = 0
    for token in rest:  # "?", "*", "+": values up to the next flag
        if flag_name(token) is not None or token == "--" or (nargs == "?" and taken == 1):
            break
        taken += 1
    return taken


def unknown_flags(argv: Sequence[str], options: Arity, *, script_first: bool = False,
                  abbreviations: bool = False) -> list[str]:
    """The flags of ``argv`` (what follows ``surge <command>``) that ``options`` does not
    know (``abbreviations``: nor as a prefix of one), up to ``--`` and, with
    ``script_first`` (``surge launch``), up to the script: the first word that is neither
    a flag nor a known flag's value.

    argparse may take an unknown flag's value for a positional (``surge launch --num_proceses
    2 train.py`` reads as script ``2``); this reads the command line as the user meant it."""
    unknown: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        name = flag_name(token)
        if token == "--" or (name is None and script_first):
            break
        if name is not None:
            known = [name] if name in options else (
                [o for o in options if o.startswith(name) and o.startswith("--")] if abbreviations else [])
            if not known:
                unknown.append(token)
            elif "=" not in token and len(known) == 1:
                i += _values(argv, i, options[known[0]])
        i += 1
    return unknown


def suggest(flag: str, options: Iterable[str]) -> str | None:
    """The option string closest to ``flag`` (its ``=value`` ignored), or None."""
    name = flag_name(flag)
    if name is None:
        return None
    candidates = [o for o in options if o.startswith("--") == name.startswith("--")]
    matches = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return matches[0] if matches else None


def did_you_mean(unknown: Sequence[str], options: Iterable[str]) -> str:
    """``"; did you mean --num_processes?"`` for the unknown flags that resemble an option
    (``"... --a (for --x), --b (for --y)?"`` for several), or ``""``."""
    options = list(options)
    pairs = [(token, s) for token in unknown if (s := suggest(token, options)) is not None]
    if not pairs:
        return ""
    if len(pairs) == 1:
        return f"; did you mean {pairs[0][1]}?"
    return "; did you mean " + ", ".join(f"{s} (for {flag_name(token)})" for token, s in pairs) + "?"


def flags_after_script(script_args: Sequence[str], options: Arity,
                       script_source: str | None = None) -> list[list[str]]:
    """The launcher flags in ``script_args``, each with its value(s) as given
    (``[["--num_processes", "2"], ["--cpu"]]``), in order.

    Left out: ``-h``/``--help`` and one-dash flags (``-m``), which scripts commonly have,
    anything after ``--``, and flags that ``script_source`` (the script's text) spells out,
    since the script then defines them itself."""
    found: list[list[str]] = []
    i = 0
    while i < len(script_args):
        token = script_args[i]
        if token == "--":
            break
        name = flag_name(token)
        if name is None or name not in options or name in _EVERYONES or not name.startswith("--"):
            i += 1
            continue
        n = 0 if "=" in token else _values(script_args, i, options[name])
        if script_source is None or not re.search(re.escape(name) + r"(?![\w-])", script_source):
            found.append(list(script_args[i:i + 1 + n]))
        i += 1 + n
    return found


def flags_after_script_warning(script: str, script_args: Sequence[str], options: Arity, *, module: bool = False,
                               no_python: bool = False, script_source: str | None = None) -> str | None:
    """One line naming the launcher flags given after the script and the command with
    them before it, or None when there are none."""
    found = flags_after_script(script_args, options, script_source)
    if not found:
        return None
    names = [flag_name(group[0]) or group[0] for group in found]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    verb, pronoun = ("comes", "it goes") if len(names) == 1 else ("come", "they go")
    moved = [token for group in found for token in group]
    rest = list(script_args)
    for group in found:  # remove each group where it stands (the same flag may appear twice)
        start = next(i for i in range(len(rest)) if rest[i:i + len(group)] == group)
        del rest[start:start + len(group)]
    target = (["-m"] if module else []) + (["--no_python"] if no_python else []) + [script]
    command = shlex.join(["surge", "launch", *moved, *target, *rest])
    return (f"surge launch: warning: {listed} {verb} after the script, so {pronoun} to {os.path.basename(script)}, "
            f"not the launcher; put launcher flags before the script: {command}")


def warn_flags_after_script(args: argparse.Namespace) -> None:
    """Print :func:`flags_after_script_warning` for a parsed ``surge launch`` to stderr.
    The run goes on: the script may define the same flag."""
    from surge.commands.launch import add_arguments

    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    source = None
    if not args.module and not args.no_python and os.path.isfile(args.script):
        try:
            with open(args.script, encoding="utf-8", errors="replace") as f:
                source = f.read()
        except OSError:
            source = None
    message = flags_after_script_warning(args.script, args.script_args, arity(parser), module=args.module,
                                         no_python=args.no_python, script_source=source)
    if message:
        print(message, file=sys.stderr)
