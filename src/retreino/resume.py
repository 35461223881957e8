"""`retreino train --resume RUN_DIR`: continue an interrupted run to the epoch count it was started with.

state.json is the commit point (see `callbacks.RunRecorder`): the resume trusts it, drops any
history rows beyond it, reloads last.keras with its optimizer state when the run stopped inside
a phase, and hands the rest to the same `_Trainer.fit` a fresh run uses. One process at a time
per run directory (`runs.lock_run_dir`).
"""
from __future__ import annotations

from pathlib import Path

from . import runs
from .config import TrainConfig
from .console import set_resume_command
from .errors import RetreinoError
from .runs import RunDir, RunState
from .training import Run, _is_chief, _Trainer, _worker_runs_dir


def resume(run_dir: str | Path, printer=print, callbacks: list | None = None) -> Run:
    """Continue the run in `run_dir`; a finished run is returned as it is, with a line saying so."""
    run_dir = Path(run_dir)
    # One process per run directory; a multi-worker cluster's other workers only read it.
    lock = runs.lock_run_dir(run_dir) if run_dir.is_dir() and not _resumes_as_worker(run_dir) else None
    try:
        return _resume_locked(run_dir, printer, callbacks)
    finally:
        if lock is not None:
            lock.close()


def _resume_locked(run_dir: Path, printer, callbacks: list | None) -> Run:
    run = RunDir(run_dir)
    record = run.read_config()
    state = run.read_state()
    if not record or not state:
        raise RetreinoError(f"{run_dir} is not a retreino run directory (no config.json/state.json)")
    cfg = TrainConfig.from_dict(record["config"])
    history = [row for row in run.read_history() if int(row["epoch"]) <= state.epoch]
    if state.finished:
        done = Run(run_dir, cfg, record["data"]["class_names"], history, state.best_epoch, state.best)
        if _calibration_missing(run_dir) and not _resumes_as_worker(run_dir):
            # Training ended but the end-of-training step did not (killed, or a peer lost, while
            # calibrating): do that step alone, the epochs are all there.
            printer(f"{run_dir} finished its {state.epoch} epochs but not its calibration; calibrating now")
            _Trainer.reopen(run_dir, printer=printer).finish(done)  # curves, report, closing lines too
            return done
        printer(f"{run_dir} already finished ({state.epoch} epochs); nothing to resume")
        return done
    from .speed.devices import run_context

    with run_context(cfg, printer=printer) as strategy:
        if strategy is not None and not _is_chief(strategy):
            # A worker resumes from the chief's run directory (it must see the same path) as it is
            # now, in a copy of its own: the chief alone writes the run directory.
            with _worker_runs_dir(cfg, strategy, printer) as tmp:
                copy = _worker_copy(run_dir, tmp / run_dir.name)
                return _resume_run(copy, cfg, record, state, history, printer, callbacks)
        return _resume_run(run_dir, cfg, record, state, history, printer, callbacks)


def _worker_copy(run_dir: Path, copy: Path) -> Path:
    """A non-chief worker's private copy of the chief's run directory, to resume from.

    Every file whose presence steers the steps must be there, the best model included: the chief
    calibrates its best model at the end (`ood.fit_after_training`, which loads it under the
    strategy, a collective broadcast), and a worker without one skipped that, exited, and left the
    chief's broadcast waiting on a peer that was gone. The pending pair and its commit mark are
    copied first, then `recover_best` settles them as the chief's lock does in the run directory:
    a copy taken while the chief rolls a committed pair forward still ends on the same epoch.
    """
    import shutil

    copy.mkdir()
    names = (runs.COMMIT, *runs.PENDING.values(), runs.BEST_KERAS, runs.BEST_H5,
             runs.CONFIG, runs.STATE, runs.HISTORY, runs.LAST, runs.LABELS)
    for name in names:
        try:
            shutil.copy2(run_dir / name, copy / name)
        except FileNotFoundError:  # not written yet (no best before epoch 1), or just renamed by the chief
            pass
    runs.recover_best(copy)
    return copy


def _calibration_missing(run_dir: Path) -> bool:
    """A best model without the record `ood.fit_after_training` writes last."""
    from .ood import CALIBRATION_FILE

    return (run_dir / runs.BEST_KERAS).exists() and not (run_dir / CALIBRATION_FILE).exists()


def _resumes_as_worker(run_dir: Path) -> bool:
    """A multi-worker run resumed by a task TF_CONFIG names as not the chief (before TF starts)."""
    from .speed.devices import tf_config_is_chief

    record = RunDir(run_dir).read_config() or {}
    return record.get("config", {}).get("distribute") == "multiworker" and not tf_config_is_chief()


def _resume_run(run_dir: Path, cfg: TrainConfig, record: dict, state: RunState, history: list, printer,
                callbacks) -> Run:
    import keras

    from .models import LoadedModel, load_model
    from .models.info import ModelInfo
    from .models.surgery import prepare_for_classes

    trainer = _Trainer(cfg, printer=printer, run_dir=run_dir, callbacks=callbacks)
    resume_model = None
    last = run_dir / runs.LAST
    if state.epoch > 0 and last.exists():
        resume_model = keras.saving.load_model(last, compile=True)
        trainer.loaded = LoadedModel(resume_model, ModelInfo.from_dict(record["model"]))
        if state.lr is not None:
            resume_model.optimizer.learning_rate.assign(state.lr)
    else:  # killed before the first epoch finished: start the phases afresh
        base = load_model(cfg.model, weights=cfg.weights, input_range=cfg.input_range)
        trainer.loaded = prepare_for_classes(base, record["data"]["class_names"], dropout=cfg.dropout, seed=cfg.seed).loaded
    trainer.setup(fresh=False)
    if list(trainer.dataset.class_names) != list(record["data"]["class_names"]):
        raise RetreinoError(f"the classes in {cfg.data} changed since the run started; start a new run")
    trainer.new_head = bool(record.get("new_head", True))
    if resume_model is not None and state.phase == "warmup" and state.epoch >= cfg.warmup_epochs:
        resume_model = None  # warm-up complete: fine-tuning starts with a fresh optimizer, as in a straight run
        trainer.loaded = LoadedModel(keras.saving.load_model(last, compile=False), trainer.info)
    printer(f"Resuming {run_dir} after epoch {state.epoch}")
    set_resume_command(f"retreino train --resume {run_dir}")
    return trainer.fit(state, history, resume_model)
