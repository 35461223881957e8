"""The run directory: everything one training run made, written atomically, readable later.

runs/<name>/
  config.json              every setting, package versions, data fingerprint, model metadata
  fine_tuned_model.keras   best model by val_accuracy (metadata embedded) ...
  fine_tuned_model.h5      ... and the same as H5
  last.keras               the latest epoch, with optimizer state (for --resume)
  labels.txt               class names, `0 Name` per line
  history.csv              one row per finished epoch
  state.json               where training stands (epoch, best, callback counters)
  learning_curves.png, report.html, and evaluation outputs
"""
from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

from .atomic import write_json, write_text

CONFIG = "config.json"
BEST_KERAS = "fine_tuned_model.keras"
BEST_H5 = "fine_tuned_model.h5"
LAST = "last.keras"
LABELS = "labels.txt"
HISTORY = "history.csv"
STATE = "state.json"
CURVES = "learning_curves.png"
REPORT = "report.html"

HISTORY_COLUMNS = ["epoch", "phase", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"]


def new_run_dir(runs_dir: str | Path, name: str) -> Path:
    """runs/<name>, or runs/<name>-2, -3 ... when taken: a new run never overwrites an old one."""
    runs_dir = Path(runs_dir)
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "run"
    candidate, n = runs_dir / name, 1
    while candidate.exists():
        n += 1
        candidate = runs_dir / f"{name}-{n}"
    candidate.mkdir(parents=True)
    return candidate


def read_history(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / HISTORY
    if not path.exists():
        return []
    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            rows.append({k: _number(v) for k, v in row.items()})
    return rows


def write_history(run_dir: str | Path, rows: list[dict]) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(row.get(k)) for k in HISTORY_COLUMNS})
    return write_text(Path(run_dir) / HISTORY, buf.getvalue())


def read_json(run_dir: str | Path, name: str) -> dict:
    path = Path(run_dir) / name
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def write_state(run_dir: str | Path, state: dict) -> Path:
    return write_json(Path(run_dir) / STATE, state)


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else v


def _number(v: str):
    if v is None or v == "":
        return None
    try:
        return int(v)
    except ValueError:
        try:
            return float(v)
        except ValueError:
            return v


class RunLock:
    """An flock on the run directory itself (no lock file left behind); released by `close()` or exit."""

    def __init__(self, fd: int):
        self.fd = fd

    def close(self) -> None:
        import os

        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __del__(self):
        self.close()


def lock_run_dir(run_dir: str | Path) -> RunLock:
    """Hold `run_dir` for this process: a second `train --resume` of the same run is one clear error.

    The kernel releases the lock when the process ends, even on SIGKILL, so a killed run never
    stays locked. Holding it, a best-model pair a kill interrupted is completed or dropped
    (`recover_best`) and the temporary files of writes a killed run left half-done
    (`.fine_tuned_model.XXXX.keras` ...) are removed.
    """
    import fcntl
    import os

    run_dir = Path(run_dir)
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        from .errors import RetreinoError

        raise RetreinoError(f"{run_dir} is in use by another retreino process: "
                            "wait for it to finish, or stop it first") from None
    recover_best(run_dir)
    names = (CONFIG, BEST_KERAS, BEST_H5, LAST, LABELS, HISTORY, STATE, CURVES, REPORT)
    stems = [Path(n).name.split(".")[0] for n in names]
    for f in run_dir.iterdir():
        if f.is_file() and any(f.name.startswith(f".{s}.") for s in stems):
            f.unlink(missing_ok=True)  # the temporary file of an atomic write that was killed
    return RunLock(fd)


# The best .keras and .h5 are replaced as a pair: both written under pending names, a commit mark,
# then the two renames. A kill anywhere leaves them from the same epoch once `recover_best` has run.
PENDING = {BEST_KERAS: ".fine_tuned_model.pending.keras", BEST_H5: ".fine_tuned_model.pending.h5"}
COMMIT = ".best.commit"


def pending_best(run_dir: str | Path) -> dict[str, Path]:
    """{final name: pending path} to save the next best model to, before `commit_best`."""
    return {final: Path(run_dir) / pending for final, pending in PENDING.items()}


def commit_best(run_dir: str | Path) -> None:
    import os

    run_dir = Path(run_dir)
    write_text(run_dir / COMMIT, "")
    _roll_forward(run_dir)
    os.unlink(run_dir / COMMIT)


def _roll_forward(run_dir: Path) -> None:
    import os

    for final, pending in PENDING.items():
        if (run_dir / pending).exists():
            os.replace(run_dir / pending, run_dir / final)


def recover_best(run_dir: str | Path) -> None:
    """After a kill: finish a committed pair of renames, or drop an uncommitted pair (the old best stays)."""
    run_dir = Path(run_dir)
    if (run_dir / COMMIT).exists():
        _roll_forward(run_dir)
        (run_dir / COMMIT).unlink()
    for pending in PENDING.values():
        (run_dir / pending).unlink(missing_ok=True)
