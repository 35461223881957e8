"""The studio's job runner: every piece of work is a `retreino` command in a child process.

The studio adds no second engine: Train is `retreino train`, Resume `retreino train --resume`,
Evaluate `retreino evaluate --run`, Export `retreino export RUN --format F`, each started with the
Python that runs the studio. A child process keeps the page responsive (TensorFlow never runs in
the server's event loop) and makes a crash of either side harmless to the other's files: the run
directory is the only thing they share, and `retreino train` writes it atomically once per epoch.

One job at a time: two trainings on the same cores are each slower than one after the other.

Lifetimes: the child runs in its own session (Ctrl+C in the studio's terminal reaches only the
studio, which then stops the job cleanly), and on Linux it is told to die with the studio
(`PR_SET_PDEATHSIG`), so a killed studio never leaves a training running that nobody can see or
stop. What the child had not finished is the epoch in progress; `--resume` starts after the last
finished one.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..runs import RunDir
from .project import ProjectError

# After Stop, a training gets this long to finish its bookkeeping (it stops at once, between
# batches, then saves its curves) before it is killed.
STOP_GRACE_S = float(os.environ.get("RETREINO_STUDIO_STOP_GRACE_S", "30"))
LOG_TAIL_BYTES = 64 * 1024
# Commands whose exit status 1 is an answer, not a crash: check-data exits 1 when it found fatal problems.
# Run with --json, their stdout (the report) goes to its own file; a job whose report is there and whole
# is "done" with its problems counted, one that died before printing it (a traceback, also status 1) "failed".
REPORTING = ("check-data",)


@dataclass
class Job:
    id: str
    kind: str  # train | resume | evaluate | export | label-issues
    run: str  # the run directory's name under PROJECT/.retreino/runs
    argv: list[str]
    log: Path
    proc: subprocess.Popen | None = None
    started: float = field(default_factory=time.time)
    ended: float | None = None
    returncode: int | None = None
    stopping: bool = False
    detail: dict = field(default_factory=dict)  # e.g. {"format": "tflite"}; a report's {"problems", "fatal", "verdict"}
    report: Path | None = None  # where a REPORTING command's --json report is written (its stdout)

    @property
    def running(self) -> bool:
        return self.returncode is None

    @property
    def status(self) -> str:
        if self.running:
            return "stopping" if self.stopping else "running"
        if self.returncode == 0 or (self.returncode == 1 and "verdict" in self.detail):
            return "done"
        return "stopped" if self.stopping or self.returncode in (130, -signal.SIGINT) else "failed"

    def to_dict(self) -> dict:
        return {"id": self.id, "kind": self.kind, "run": self.run, "status": self.status,
                "returncode": self.returncode, "started": self.started, "ended": self.ended,
                "command": " ".join(["retreino"] + self.argv), **self.detail}

    def log_tail(self, max_bytes: int = LOG_TAIL_BYTES) -> str:
        try:
            with open(self.log, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - max_bytes))
                return fh.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def read_report(self) -> None:
        """A finished REPORTING job: its verdict and problem counts into `detail` (nothing when the report is not whole)."""
        if self.report is None:
            return
        try:
            text = self.report.read_text(errors="replace")
            # The report is printed last, indented: its opening brace is the only one at the start of a line.
            report = json.loads(text[0 if text.startswith("{") else text.rfind("\n{\n") + 1:])
        except (OSError, ValueError):
            return
        if isinstance(report, dict) and isinstance(report.get("problems"), list) and "verdict" in report:
            problems = report["problems"]
            self.detail.update(problems=len(problems), fatal=sum(1 for p in problems if p.get("fatal")),
                               verdict=str(report["verdict"]))


def _child_setup() -> None:  # runs in the child between fork and exec
    # Stop sends SIGINT, and a Python started with SIGINT ignored leaves it ignored: a studio run as
    # a background job of a script (`retreino studio &`: the shell ignores SIGINT for it) would pass
    # that on, and Stop could only kill the job after its grace period. The child gets Ctrl-C back.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except Exception:  # not Linux: the child may outlive a killed studio; the run lock still guards it
        pass


class JobRunner:
    """Starts, watches and stops the studio's one job; keeps the finished ones for the page."""

    def __init__(self, runs_dir: Path, jobs_dir: Path, python: str | None = None):
        self.runs_dir, self.jobs_dir = Path(runs_dir), Path(jobs_dir)
        self.python = python or sys.executable
        self.jobs: list[Job] = []
        self._n = 0

    @property
    def current(self) -> Job | None:
        self.poll()
        return next((j for j in reversed(self.jobs) if j.running), None)

    def start(self, kind: str, run: str, args: list[str], **detail) -> Job:
        """Runs `retreino ARGS...` as a child; a ProjectError (409) while another job runs."""
        busy = self.current
        if busy is not None:
            raise ProjectError(f"a {busy.kind} job is running ({busy.run}): stop it or wait for it to finish", 409, "busy")
        self._n += 1
        job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{self._n}-{kind}"
        log = self.jobs_dir / f"{job_id}.log"
        report = self.jobs_dir / f"{job_id}.json" if args[:1] and args[0] in REPORTING else None
        if report is not None:
            args = [*args, "--json"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "RETREINO_QUIET": "1"}
        with open(log, "wb") as out, open(report or os.devnull, "wb") as stdout:
            proc = subprocess.Popen(
                [self.python, "-m", "retreino", *args], stdin=subprocess.DEVNULL, stdout=stdout if report else out,
                stderr=out if report else subprocess.STDOUT, env=env, start_new_session=True,
                preexec_fn=_child_setup if sys.platform.startswith("linux") else None,
            )
        job = Job(job_id, kind, run, list(args), log, proc, detail=detail, report=report)
        self.jobs.append(job)
        return job

    def poll(self) -> None:
        for job in self.jobs:
            if job.running and job.proc is not None and job.proc.poll() is not None:
                job.read_report()  # before the return code: status never reads "failed" for a report being read
                job.returncode, job.ended = job.proc.returncode, time.time()

    def stop(self, job_id: str | None = None) -> Job:
        """SIGINT: `retreino train` stops after the current batch and keeps every finished epoch."""
        job = self.current
        if job is None or (job_id and job.id != job_id):
            raise ProjectError("no such job is running", 404, "no_job")
        job.stopping = True
        job.proc.send_signal(signal.SIGINT)
        job.detail["stop_requested"] = time.time()
        return job

    def reap(self) -> None:
        """Kill a stopping job that outlived its grace period (called by the event stream's ticks)."""
        job = self.current
        if job is not None and job.stopping and time.time() - job.detail.get("stop_requested", 0) > STOP_GRACE_S:
            job.proc.kill()

    def shutdown(self, wait_s: float = 10.0) -> None:
        """The studio is closing: stop the job cleanly, kill it if it will not stop."""
        job = self.current
        if job is None:
            return
        job.proc.send_signal(signal.SIGINT)
        try:
            job.proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            job.proc.kill()
            job.proc.wait()
        self.poll()

    def running_run(self) -> str | None:
        job = self.current
        return job.run if job is not None else None


def run_busy(run_dir: Path) -> bool:
    """True when another process holds the run's lock (a `retreino train` the studio did not start).

    Only ever asked about runs no job of ours is using: the probe holds the lock for an instant, and a
    child starting at that instant would find it taken.
    """
    import fcntl

    try:
        fd = os.open(run_dir, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing releases the lock
    return False


def describe_run(run: RunDir, running: bool) -> dict:
    """What the page shows of a run: its settings, where it stands, and what it has produced."""
    record = run.read_config()
    cfg = record.get("config") or {}
    state = run.read_state()
    history = run.read_history()
    if state is not None:
        history = [row for row in history if int(row.get("epoch") or 0) <= state.epoch]
    probe = 1 if (record.get("new_head", True) and cfg.get("head_init", "linear-probe") == "linear-probe") else 0
    warm = cfg.get("warmup_epochs", 0) if (record.get("new_head", True) and cfg.get("head_init") == "warmup") else 0
    if running:
        status = "running"
    elif state is not None and state.finished:
        status = "finished"
    elif run_busy(run.path):
        status = "busy"
    else:
        status = "interrupted"
    exports = sorted(p.name for p in (run.path / "exports").iterdir() if p.is_dir()) if (run.path / "exports").is_dir() else []
    return {
        "name": run.path.name,
        "status": status,
        "model": cfg.get("model"),
        "epochs": cfg.get("epochs"),
        "total_epochs": (cfg.get("epochs") or 0) + probe + warm,
        "learning_rate": cfg.get("learning_rate"),
        "unfreeze": cfg.get("unfreeze"),
        "batch_size": cfg.get("batch_size"),
        "classes": (record.get("data") or {}).get("class_names"),
        "epoch": state.epoch if state else 0,
        "best": state.best if state else None,
        "best_epoch": state.best_epoch if state else None,
        "history": history,
        "has_model": run.best_keras.is_file(),
        "evaluated": (run.path / "metrics.json").is_file(),
        "exports": exports,
        "created": run.config_path.stat().st_mtime if run.config_path.is_file() else None,
    }


def list_runs(runs_dir: Path, running: str | None) -> list[dict]:
    """Every run directory under `runs_dir`, newest first."""
    out = []
    for path in runs_dir.iterdir() if runs_dir.is_dir() else []:
        run = RunDir(path)
        if path.is_dir() and run.is_run:
            try:
                out.append(describe_run(run, running == path.name))
            except Exception as exc:  # a broken run must not hide the others
                out.append({"name": path.name, "status": "broken", "error": str(exc), "history": []})
    return sorted(out, key=lambda r: r.get("created") or 0, reverse=True)
