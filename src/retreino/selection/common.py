"""What cross-validation and tuning share: progress lines with ETA, indented training output,
and the guard that a resumed selection directory was started with the same settings."""
from __future__ import annotations

import time
from pathlib import Path

from ..atomic import read_json
from ..errors import RetreinoError
from ..runs import folder_name  # noqa: F401  (re-exported: one cleaning rule, owned by runs)


def duration(seconds: float | None) -> str:
    """12s, 4m05s, 1h02m: short enough for a progress line."""
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class Countdown:
    """'fold 2/5 | elapsed 3m10s | ETA 4m45s' lines.

    The ETA is the mean duration of the units finished in *this* process times the units left:
    units skipped on a resume took no time now and would make the estimate wildly optimistic.
    """

    def __init__(self, total: int, unit: str):
        self.total, self.unit = total, unit
        self.t0 = time.monotonic()
        self.durations: list[float] = []
        self._started: float | None = None

    def start(self) -> None:
        self._started = time.monotonic()

    def stop(self) -> float:
        took = time.monotonic() - (self._started or time.monotonic())
        self.durations.append(took)
        self._started = None
        return took

    def eta(self, left: int) -> float | None:
        if not self.durations:
            return None
        return sum(self.durations) / len(self.durations) * left

    def line(self, index: int, left: int, extra: str = "") -> str:
        elapsed = time.monotonic() - self.t0
        parts = [f"{self.unit} {index}/{self.total}", f"elapsed {duration(elapsed)}", f"ETA {duration(self.eta(left))}"]
        return "== " + " | ".join(parts) + (f" | {extra}" if extra else "") + " =="


class IndentPrinter:
    """Passes `train`'s output through, indented under the fold/trial line that owns it.

    `skip` drops lines that would repeat on every fold/trial (the data summary after the first).
    """

    def __init__(self, printer=print, indent: str = "    ", skip: tuple[str, ...] = ()):
        self.printer, self.indent, self.skip = printer, indent, skip

    def __call__(self, text: str = "", *args, **kwargs) -> None:
        text = str(text)
        if self.skip and text.lstrip("\n").startswith(self.skip):
            return
        self.printer("\n".join(self.indent + line if line else line for line in text.split("\n")))


def check_same_settings(path: Path, record: dict, what: str, keys: tuple[str, ...]) -> None:
    """A resumed directory must have been started with the same settings; say which one differs."""
    if not path.exists():
        return
    old = read_json(path)
    for key in keys:
        a, b = _flat(old.get(key), f"{key}."), _flat(record.get(key), f"{key}.")
        if a != b:
            changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            detail = "; ".join(f"{k}: {a.get(k)!r} then, {b.get(k)!r} now" for k in changed[:3])
            raise RetreinoError(
                f"{path.parent} holds a {what} started with other settings ({detail or key}); "
                f"use --name for a new one or delete that folder"
            )


def _flat(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip(".") or "value": value}


