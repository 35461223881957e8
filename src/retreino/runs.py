"""The run directory: everything one training run made, written atomically, readable later.

runs/<name>/
  config.json              every setting, package versions, data fingerprint, model metadata
  fine_tuned_model.keras   best model by the monitored metric (metadata embedded) ...
  fine_tuned_model.h5      ... and the same as H5
  last.keras               the latest epoch, with optimizer state (for --resume)
  labels.txt               class names, `0 Name` per line
  history.csv              one row per finished epoch
  state.json               where training stands (`RunState`: epoch, best, callback counters)
  learning_curves.png, report.html, and evaluation outputs

`RunDir` owns these names: every module that reads or writes a run goes through it, with one
reader and one atomic writer per file. `RunState` is the typed content of state.json.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .atomic import read_json, write_json, write_text
from .errors import RetreinoError

CONFIG = "config.json"
BEST_KERAS = "fine_tuned_model.keras"
BEST_H5 = "fine_tuned_model.h5"
LAST = "last.keras"
LABELS = "labels.txt"
HISTORY = "history.csv"
STATE = "state.json"
CURVES = "learning_curves.png"
REPORT = "report.html"
METRICS = "metrics.json"

HISTORY_COLUMNS = ["epoch", "phase", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"]


@dataclass
class RunState:
    """Where a run stands, as saved in state.json after every epoch (the commit point of a resume).

    `best` is the best value of the monitored metric so far and `best_epoch` the 1-based epoch
    that reached it; `lr` the optimizer's rate after the last epoch; `early_stopping` and
    `reduce_lr` the callbacks' counters (see callbacks._Resumable); `pruned` is set by `tune`.
    """

    epoch: int = 0
    phase: str | None = None
    best: float | None = None
    best_epoch: int | None = None
    new_head: bool = True
    finished: bool = False
    lr: float | None = None
    early_stopping: dict | None = None
    reduce_lr: dict | None = None
    pruned: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # keys written by a newer retreino: kept, not lost

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        if not self.pruned:
            del d["pruned"]  # only pruned runs say so, as before
        return {**self.extra, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunState":
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        state = cls(**{k: v for k, v in d.items() if k in known})
        state.extra = {k: v for k, v in d.items() if k not in known}
        return state


class RunDir:
    """One run directory: its file paths, and the reader and atomic writer of each file.

    >>> run = RunDir.create(RUNS, "cats")            # doctest: +SKIP
    >>> run.write_state(RunState(epoch=1)); run.read_state().epoch   # doctest: +SKIP
    1
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @classmethod
    def create(cls, runs_dir: str | os.PathLike, name: str) -> "RunDir":
        """runs/<name>, or runs/<name>-2, -3 ... when taken: a new run never overwrites an old one."""
        runs_dir = Path(runs_dir)
        name = folder_name(name)
        candidate, n = runs_dir / name, 1
        while candidate.exists():
            n += 1
            candidate = runs_dir / f"{name}-{n}"
        candidate.mkdir(parents=True)
        return cls(candidate)

    @classmethod
    def holding(cls, model: str | os.PathLike) -> "RunDir | None":
        """The run directory a model path is (a folder) or lies in (a file), if it is one."""
        model = Path(model)
        run = cls(model if model.is_dir() else model.parent)
        return run if run.is_run else None

    # -- paths --------------------------------------------------------------------------------
    def file(self, name: str) -> Path:
        return self.path / name

    config_path = property(lambda self: self.path / CONFIG)
    best_keras = property(lambda self: self.path / BEST_KERAS)
    best_h5 = property(lambda self: self.path / BEST_H5)
    last = property(lambda self: self.path / LAST)
    labels_path = property(lambda self: self.path / LABELS)
    history_path = property(lambda self: self.path / HISTORY)
    state_path = property(lambda self: self.path / STATE)
    curves = property(lambda self: self.path / CURVES)
    report = property(lambda self: self.path / REPORT)

    @property
    def is_run(self) -> bool:
        return self.config_path.is_file()

    # -- config.json ----------------------------------------------------------------------------
    def read_config(self) -> dict:
        """The config record ({} when there is none); a broken file is a RetreinoError."""
        return read_json(self.config_path, default={})

    def require_config(self) -> dict:
        if not self.config_path.is_file():
            raise RetreinoError(f"{self.path}: not a run directory (no config.json); pass a model and --data instead")
        return self.read_config()

    def settings(self) -> dict:
        """The TrainConfig fields the run was started with (config.json's "config")."""
        return self.read_config().get("config") or {}

    def data_root(self) -> str | None:
        """The data folder the run trained on, as config.json records it."""
        record = self.read_config()
        return (record.get("config") or {}).get("data") or (record.get("data") or {}).get("root")

    def write_config(self, record: dict) -> Path:
        return write_json(self.config_path, record)

    # -- labels.txt -----------------------------------------------------------------------------
    def write_labels(self, text: str) -> Path:
        return write_text(self.labels_path, text)

    # -- state.json -----------------------------------------------------------------------------
    def read_state(self) -> RunState | None:
        """The saved state, or None when the run has none yet."""
        d = read_json(self.state_path, default=None)
        return RunState.from_dict(d) if d else None

    def write_state(self, state: RunState) -> Path:
        return write_json(self.state_path, state.to_dict())

    # -- history.csv ----------------------------------------------------------------------------
    def read_history(self) -> list[dict]:
        """One dict per finished epoch; numbers parsed (ints where whole), blanks -> None."""
        return [{k: _number(v) for k, v in row.items()} for row in read_csv_rows(self.history_path)]

    def write_history(self, rows: list[dict]) -> Path:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=HISTORY_COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(row.get(k)) for k in HISTORY_COLUMNS})
        return write_text(self.history_path, buf.getvalue())

    # -- any other JSON file of the run (metrics.json, fold_metrics.json ...) ---------------------
    def read_json(self, name: str) -> dict:
        return read_json(self.path / name, default={})

    def write_json(self, name: str, obj) -> Path:
        return write_json(self.path / name, obj)


def read_csv_rows(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a CSV file with a header, as strings; [] when the file is missing."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except FileNotFoundError:
        return []


def folder_name(name: str) -> str:
    """A run name as a folder name: anything but letters, digits, '.', '_' and '-' becomes '-'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "run"


def default_name(cfg) -> str:
    """The run name when none is given: `<data folder>-<model>` (`cats_vs_dogs-mobilenet_v2`).

    `cfg` is a TrainConfig (only `data` and `model` are read); train, cv and tune name their
    folders from it, so the three agree on where a run of the same settings goes.
    """
    data = Path(cfg.data).resolve().name or "data"
    model = Path(str(cfg.model)).name
    model = Path(model).stem if model.endswith((".h5", ".keras")) else model
    return f"{data}-{model}"


# Function forms kept for callers of the earlier API.
def new_run_dir(runs_dir: str | Path, name: str) -> Path:
    return RunDir.create(runs_dir, name).path


def read_history(run_dir: str | Path) -> list[dict]:
    return RunDir(run_dir).read_history()


def write_history(run_dir: str | Path, rows: list[dict]) -> Path:
    return RunDir(run_dir).write_history(rows)


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

    _os_close = staticmethod(os.close)  # bound now: `__del__` may run at interpreter exit, when imports fail

    def __init__(self, fd: int):
        self.fd = fd

    def close(self) -> None:
        if self.fd is not None:
            self._os_close(self.fd)
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

    run_dir = Path(run_dir)
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
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
