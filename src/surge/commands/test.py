"""``surge test``: run the bundled end-to-end check on the configured topology."""

from __future__ import annotations

import argparse

from surge.commands.launch import add_config_flags


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_flags(parser)


def run(args: argparse.Namespace) -> int:
    from surge.commands.launch import resolve_config
    from surge.launch.runner import launch

    config, values = resolve_config(args)
    return launch(config, values, "surge.testing.check_script", [], module=True)
