"""The ``surge`` entry point. Imports nothing heavy: ``surge --help`` never loads torch."""

from __future__ import annotations

import argparse
import sys

from surge._version import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="surge",
        description=(
            "surge: distributed training made simple for PyTorch. One training script runs unchanged "
            "on a CPU, one GPU, many GPUs and many machines."
        ),
        epilog=(
            "Run a script on 2 local processes today with PyTorch's launcher: "
            "torchrun --nproc_per_node 2 train.py. The surge subcommands (config, launch, test, env, "
            "estimate-memory) are being added."
        ),
    )
    parser.add_argument("--version", action="version", version=f"surge {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = sys.argv[1:] if argv is None else argv
    if not args:
        parser.print_help()
        return 0
    parser.parse_args(args)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
