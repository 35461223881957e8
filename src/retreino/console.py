"""Terminal output shared by every command: tables, progress bars, one-line messages."""
from __future__ import annotations

import os
import sys
from typing import Iterable, Sequence


def table(rows: Sequence[Sequence[object]], headers: Sequence[str] | None = None, align: str | None = None) -> str:
    """A plain-text table; `align` is one char per column ('l' or 'r'), numbers right by default."""
    cells = [[str(c) for c in r] for r in rows]
    if headers:
        cells = [list(map(str, headers))] + cells
    if not cells:
        return ""
    widths = [max(len(r[i]) for r in cells if i < len(r)) for i in range(len(cells[0]))]
    if align is None:
        sample = rows[0] if rows else []
        align = "".join("r" if isinstance(v, (int, float)) else "l" for v in sample) or "l" * len(widths)
    lines = []
    for n, r in enumerate(cells):
        parts = [c.rjust(w) if (i < len(align) and align[i] == "r") else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(parts).rstrip())
        if headers and n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def key_values(pairs: Sequence[tuple[str, object]]) -> str:
    width = max(len(k) for k, _ in pairs)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in pairs)


def progress_allowed() -> bool:
    """Progress output (bars, "loading ..." lines) is for a person watching: a terminal or Jupyter.

    In a log file a bar would write every update, and scripts read stderr for the one-line
    error; the one-line summaries that commands print are enough there. RETREINO_QUIET=1 turns it off.
    """
    interactive = sys.stderr.isatty() or "ipykernel" in sys.modules
    return interactive and os.environ.get("RETREINO_QUIET", "") in ("", "0")


def status(message: str) -> None:
    """A line saying what is happening now ("loading the model ..."), before a phase that may take seconds.

    Its own full line on stderr, so it never shares one with a result or a bar; shown where bars are.
    """
    if progress_allowed():
        print(message, file=sys.stderr, flush=True)


def progress(iterable: Iterable | None = None, total: int | None = None, desc: str = "", unit: str = "it", **kw):
    """A tqdm bar on stderr; quiet when RETREINO_QUIET is set. Shows rate and ETA."""
    try:  # notebook widgets when Jupyter can draw them, else a plain text bar (no IProgress warning)
        import ipywidgets  # noqa: F401
        from tqdm.auto import tqdm
    except ImportError:
        from tqdm.std import tqdm

    disable = not progress_allowed()
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, file=sys.stderr, dynamic_ncols=True, **kw)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def info(message: str) -> None:
    print(message, file=sys.stderr)


# The command that continues the work now in progress, for the CLI's "interrupted" line.
_resume_command: str | None = None


def set_resume_command(command: str | None) -> None:
    """Remember how to continue what is running (training: `retreino train --resume RUN_DIR`)."""
    global _resume_command
    _resume_command = command


def resume_command() -> str | None:
    return _resume_command
