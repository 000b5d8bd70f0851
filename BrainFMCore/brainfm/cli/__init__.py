"""The ``brainfm`` command line (argparse subcommands; see :mod:`brainfm.cli.main`).

>>> from brainfm.cli import main
>>> callable(main)
True
"""
from __future__ import annotations

from brainfm.cli.main import COMMANDS, build_parser, main, register_command

__all__ = ["main", "build_parser", "register_command", "COMMANDS"]
