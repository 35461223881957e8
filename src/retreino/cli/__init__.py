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
        print(f"retreino {args.command}: interrupted; {_after_interrupt(argv)}", file=sys.stderr)
        return 130


def _after_interrupt(argv: list[str] | None) -> str:
    """The exact command that continues (a run's resume) or repeats (anything else) the interrupted work."""
    import shlex

    from ..console import resume_command

    command = resume_command()
    if command:
        return f"continue with: {command}"
    words = sys.argv[1:] if argv is None else argv
    return "run it again with: retreino " + " ".join(shlex.quote(str(w)) for w in words)


if __name__ == "__main__":
    sys.exit(main())
