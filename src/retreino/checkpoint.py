"""The best model of a run: fine_tuned_model.keras and .h5, always from the same epoch.

`RunRecorder` calls `save_best` whenever the monitored metric improves. Both files are written
under pending names and renamed as a pair (`runs.pending_best` / `runs.commit_best`), so a kill
mid-save leaves the previous pair intact; a full disk is one line that says the best so far is kept.
"""
from __future__ import annotations

import errno
from pathlib import Path

from . import runs
from .errors import TrainingError
from .models import LoadedModel, save_model
from .models.info import ModelInfo


def save_best(run_dir: str | Path, info: ModelInfo, model) -> None:
    """Save `model` (with `info` embedded) as the run's best model; a full disk is a TrainingError."""
    try:
        _save_pair(Path(run_dir), info, model)
    except OSError as exc:
        # h5py reports a full disk as an OSError without errno, "errno = 28" in its text.
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT) and "errno = 28" not in str(exc):
            raise
        for path in runs.pending_best(run_dir).values():  # half-written: free their space
            path.unlink(missing_ok=True)
        best = Path(run_dir) / runs.BEST_KERAS
        kept = f"the best model so far is intact in {best}" if best.exists() else "no best model was saved yet"
        reason = exc.strerror or "No space left on device"
        raise TrainingError(f"no space left on {Path(run_dir).resolve()}: saving the best model failed "
                            f"({reason}); {kept}. Free some space and resume with --resume") from None


def _save_pair(run_dir: Path, info: ModelInfo, model) -> None:
    loaded = LoadedModel(model, info)
    pending = runs.pending_best(run_dir)  # both files, then both renames: always the same epoch
    save_model(loaded, pending[runs.BEST_KERAS], write_labels=False)
    # Keras' H5 writer pops "optimizer" out of the model's live compile config; every later
    # .keras save (last.keras) would then reload with a fresh default RMSprop, and --resume
    # would silently switch optimizers. Keep the config intact.
    compile_config = getattr(model, "_compile_config", None)
    kept = dict(compile_config.config) if compile_config is not None else None
    try:
        save_model(loaded, pending[runs.BEST_H5], write_labels=False)
    finally:
        if kept is not None:
            compile_config.config = kept
    runs.commit_best(run_dir)
