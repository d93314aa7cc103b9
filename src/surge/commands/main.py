"""The ``surge`` entry point: subcommands, and errors as one readable line.

Imports nothing heavy: each subcommand's module is imported only when it runs, so
``surge --help`` never loads torch (see [Note: the config file has no torch]).
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import re
import sys
from collections.abc import Iterable
from typing import Any, NoReturn

from surge._version import __version__

# name -> (module, one-line help)
COMMANDS = {
    "config": ("surge.commands.config", "Answer a few questions and write the config file surge launch uses."),
    "launch": ("surge.commands.launch", "Run a training script on every local process (torch's elastic launcher)."),
    "test": ("surge.commands.test", "Run surge's own end-to-end check on the configured topology."),
    "env": ("surge.commands.env", "Report versions, devices, backends and the active config (like ds_report)."),
    "estimate-memory": ("surge.commands.estimate_memory", "Per-process memory of model states for each strategy."),
    "merge-weights": ("surge.commands.merge_weights",
                      "Turn a (sharded) checkpoint's model into one safetensors model, offline."),
    "doctor": ("surge.commands.doctor", "Check a training script for common mistakes, without running it."),
}


class CLIError(Exception):
    """A user mistake on the command line; printed as one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse, but a bad invocation is one line on stderr (no usage dump), and a
    mistyped flag or command gets a "did you mean" (commands/hints.py)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands: dict[str, Parser] = {}  # the subcommands' parsers (top level only)
        self.script_first = False  # everything after the first positional belongs to it (surge launch)
        self._argv: list[str] = []
        self._extras: list[str] = []
        self._command: str | None = None

    def parse_known_args(self, args: Iterable[str] | None = None, namespace: Any = None) -> Any:
        # Remembered for error(): which words were given, which were left over, which command.
        self._argv = list(sys.argv[1:] if args is None else args)
        parsed, extras = super().parse_known_args(self._argv, namespace)
        self._extras, self._command = list(extras), getattr(parsed, "command", None)
        return parsed, extras

    def error(self, message: str) -> NoReturn:
        from surge.commands import hints

        parser, hint = self, ""
        unrecognized = message.startswith("unrecognized arguments: ")
        command = self.commands.get(self._command or "")
        if unrecognized and command is not None and any(word in command._argv for word in self._extras):
            parser = command  # raised by the top level for the words the subcommand's parser did not know
        unknown: list[str] = []
        if not parser.commands:  # a subcommand: an unknown flag is the news, whatever argparse made of it
            # (`surge launch --num_proceses 2 train.py` has script "2"; `--params 7e9 --gpu_memroy 3` a model "3")
            unknown = hints.unknown_flags(parser._argv, hints.arity(parser), script_first=parser.script_first,
                                          abbreviations=parser.allow_abbrev)
        if unrecognized and not unknown:
            unknown = self._extras
        if unknown:
            message = f"unrecognized arguments: {' '.join(unknown)}"
            hint = hints.did_you_mean(unknown, hints.arity(parser, visible_only=True))
        elif self.commands and (choice := re.match(r"argument <command>: invalid choice: '(.*?)'", message)):
            close = difflib.get_close_matches(choice.group(1), list(self.commands), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
        raise CLIError(f"{parser.prog}: error: {message}{hint} (see `{parser.prog} --help`)")


def build_parser() -> Parser:
    parser = Parser(
        prog="surge",
        description=(
            "surge: distributed training made simple for PyTorch. One training script runs unchanged "
            "on a CPU, one GPU, many GPUs and many machines."
        ),
        epilog="Start with `surge config`, then `surge launch train.py`. `surge <command> --help` for details.",
    )
    parser.add_argument("--version", action="version", version=f"surge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>", parser_class=Parser)
    for name, (module, help_text) in COMMANDS.items():
        # launch hands everything after the script to it untouched: no abbreviations, or
        # a script's own --fsdp would be taken for an abbreviated --fsdp_* launcher flag.
        p = sub.add_parser(name, help=help_text, description=help_text, allow_abbrev=name != "launch")
        p.script_first = name == "launch"
        parser.commands[name] = p
        _add_arguments(module, p)
    return parser


def _add_arguments(module: str, parser: Parser) -> None:
    # Each command module exposes add_arguments(parser) and run(args) -> int, and
    # imports torch only inside run(), so building every parser stays fast.
    importlib.import_module(module).add_arguments(parser)


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    try:
        args = parser.parse_args(args_list)
        if args.command is None:
            parser.print_help()
            return 0
        module = importlib.import_module(COMMANDS[args.command][0])
        return int(module.run(args) or 0)
    except CLIError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("surge: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, ImportError) as exc:
        # User-facing failures (bad config, missing files, missing extras) are one line;
        # SURGE_DEBUG=1 shows the traceback instead.
        if os.environ.get("SURGE_DEBUG"):
            raise
        command = f"surge {args_list[0]}" if args_list else "surge"
        print(f"{command}: error: {_one_line(exc)}", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
