"""`retreino` command line: one sub-command per job, each a thin wrapper over the Python API.

Each sub-command lives in its own module of this package and exposes `register(subparsers)`.
"""
from __future__ import annotations

import argparse
import difflib
import importlib
import sys

from .. import __version__
from ..errors import RetreinoError

# In the order `retreino --help` lists them; a module that is not there yet is simply absent.
COMMANDS = ("inspect", "check_data", "train", "evaluate", "predict", "export", "serve", "studio", "cv", "tune", "merge")


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
    parser.commands = sub.choices  # name -> sub-command parser, for "did you mean" below
    return parser


def did_you_mean(word: str, choices) -> str:
    """' (did you mean X?)' for the closest choice to a mistyped `word`, else ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """parse_args, with a "did you mean" for a mistyped sub-command or flag (Python < 3.14 has none).

    A mistyped flag is reported with the usage of its own sub-command, not the top-level one.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    commands = parser.commands
    first = next((a for a in argv if not a.startswith("-")), None)
    if first is not None and first == (argv[0] if argv else None) and first not in commands:
        parser.error(f"unknown command {first!r}{did_you_mean(first, commands)}; see retreino --help")
    args, extras = parser.parse_known_args(argv)
    if extras:
        command = commands.get(getattr(args, "command", None) or "", parser)
        # argparse has no public list of a parser's flags; _actions is stable since Python 3.2.
        flags = [o for action in command._actions for o in action.option_strings]
        unknown = extras[0].split("=", 1)[0]
        hint = did_you_mean(unknown, flags) if unknown.startswith("-") else ""
        command.error(f"unrecognized arguments: {' '.join(extras)}{hint}")
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = _parse(parser, argv)
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
