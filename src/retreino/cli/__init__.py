"""`retreino` command line: one sub-command per job, each a thin wrapper over the Python API.

Each sub-command lives in its own module of this package and exposes `register(subparsers)`.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__
from ..errors import RetreinoError

# In the order `retreino --help` lists them; a module that is not there yet is simply absent.
COMMANDS = ("inspect", "check_data", "train", "evaluate", "predict", "export", "serve", "cv", "tune", "merge")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retreino",
        description="Retrain image classifiers (Teachable Machine, Keras, Keras Applications) on your own pictures.",
    )
    parser.add_argument("--version", action="version", version=f"retreino {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except RetreinoError as exc:
        print(f"retreino {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"retreino {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
