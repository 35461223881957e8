"""Keras callbacks of a retreino run: progress, the run directory's files, NaN guard, resumable state."""
from __future__ import annotations

import contextlib
import math
import time

from . import _env

_env.import_tensorflow()

import keras  # noqa: E402

from .atomic import atomic_path  # noqa: E402
from .config import is_improvement, monitor_mode  # noqa: E402
from .console import progress  # noqa: E402
from .runs import RunDir, RunState  # noqa: E402


def current_lr(model) -> float:
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


class EpochProgress(keras.callbacks.Callback):
    """A bar per epoch with ETA, then one summary line per epoch."""

    def __init__(self, total_epochs: int, phase: str, printer=print):
        super().__init__()
        self.total_epochs, self.phase, self.printer = total_epochs, phase, printer
        self.bar = None

    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = time.monotonic()
        steps = self.params.get("steps")
        self.bar = progress(total=steps, desc=f"epoch {epoch + 1}/{self.total_epochs}", unit="batch", leave=False)

    def on_train_batch_end(self, batch, logs=None):
        if self.bar is not None:
            self.bar.update(1)
            logs = logs or {}
            if "loss" in logs:
                self.bar.set_postfix(loss=f"{float(logs['loss']):.4f}", acc=f"{float(logs.get('accuracy', 0)):.3f}")

    def on_epoch_end(self, epoch, logs=None):
        if self.bar is not None:
            self.bar.close()
        logs = logs or {}
        marker = "  * best" if logs.get("_best") else ""
        self.printer(
            f"epoch {epoch + 1:>2}/{self.total_epochs} {self.phase:<9} "
            f"loss {logs.get('loss', float('nan')):.4f}  acc {logs.get('accuracy', float('nan')):.3f}  "
            f"val_loss {logs.get('val_loss', float('nan')):.4f}  val_acc {logs.get('val_accuracy', float('nan')):.3f}  "
            f"lr {current_lr(self.model):.1e}  {time.monotonic() - self.t0:.0f}s{marker}"
        )


class NanGuard(keras.callbacks.Callback):
    """Stops at the first NaN/inf loss; the recorder then keeps the files of the last good epoch."""

    def __init__(self):
        super().__init__()
        self.hit = None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.hit = (self._epoch, batch)
            self.model.stop_training = True

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch


class RunRecorder(keras.callbacks.Callback):
    """After each epoch: best model, last model, history and state, each written atomically.

    The order matters for resuming after a kill: last.keras, then history.csv, then state.json
    (the commit point). A resume trusts state.json and drops any history rows beyond it.
    """

    def __init__(self, run_dir, save_best, history: list, state: RunState, phase: str, nan_guard: NanGuard,
                 monitor="val_accuracy", full_model=None, averaged: AveragedWeights | None = None):
        super().__init__()
        self.averaged = averaged  # the best model is saved with the averaged weights validation scored
        self.run_dir, self.save_best, self.history, self.state = run_dir, save_best, history, state
        self.run = RunDir(run_dir)
        self.phase, self.nan_guard, self.monitor = phase, nan_guard, monitor
        self.mode = monitor_mode(monitor)
        # When only a tail of the network is being fit (frozen-prefix acceleration), the files must
        # still hold the full model, whose layers the tail shares.
        self.full_model = full_model

    @property
    def saved_model(self):
        return self.full_model if self.full_model is not None else self.model

    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = time.monotonic()
        self.lr = current_lr(self.model)  # the rate this epoch trained with, before any plateau cut

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if self.nan_guard.hit is not None or not all(math.isfinite(float(v)) for v in logs.values()):
            return
        value = float(logs.get(self.monitor, float("nan")))
        if is_improvement(value, self.state.best, self.mode):
            # A linear-probe epoch (recipe.py) sets best_val_loss: a later epoch must beat it in loss too.
            best_loss = self.state.extra.get("best_val_loss")
            if best_loss is None or float(logs.get("val_loss", float("inf"))) <= best_loss:
                with self.averaged.averaged() if self.averaged is not None else contextlib.nullcontext():
                    self.save_best(self.saved_model)
                self.state.best, self.state.best_epoch = value, epoch + 1
                if best_loss is not None:
                    self.state.extra["best_val_loss"] = float(logs["val_loss"])
                logs["_best"] = True
        with atomic_path(self.run.last) as tmp:
            self.saved_model.save(tmp)  # with optimizer state, for --resume
        row = {"epoch": epoch + 1, "phase": self.phase, "lr": self.lr, "seconds": round(time.monotonic() - self.t0, 2)}
        row.update({k: float(v) for k, v in logs.items() if not k.startswith("_")})
        self.history.append(row)
        self.run.write_history(self.history)
        self.state.epoch, self.state.phase, self.state.lr = epoch + 1, self.phase, current_lr(self.model)
        self.run.write_state(self.state)


class AveragedWeights(keras.callbacks.SwapEMAWeights):
    """Validation and the best-model files use the moving average of the weights (Polyak averaging).

    The optimizer keeps the average (`use_ema=True`, see `training.make_optimizer`). Keras'
    `SwapEMAWeights` swaps it into the model for each validation pass and back after it, so
    EarlyStopping, ReduceLROnPlateau and the best-model choice all judge the averaged weights.
    `RunRecorder` saves the best model inside `averaged()`, so `fine_tuned_model.*` hold the very
    weights validation scored, and `last.keras` outside it: the raw weights, with the average in
    the optimizer's state, which is what `--resume` needs to go on as if never stopped.

    Why: at the higher default learning rate one step's weights move more between epochs than
    the averaged ones, so the validation split chooses among noisier candidates (docs/accuracy.md).
    """

    def __init__(self):
        super().__init__(swap_on_epoch=False)

    @contextlib.contextmanager
    def averaged(self):
        if self._ema_weights_in_model:
            yield
            return
        self._swap_variables()
        self._ema_weights_in_model = True
        try:
            yield
        finally:
            self._swap_variables()
            self._ema_weights_in_model = False


class _Resumable:
    """Counters that survive a restart: Keras resets them in on_train_begin, so restore them after it."""

    COUNTERS: tuple[str, ...] = ("wait",)

    def __init__(self, saved: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self.saved = saved or {}

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.saved:
            for name in self.COUNTERS:
                setattr(self, name, int(self.saved.get(name, 0)))
            if self.saved.get("best") is not None:
                self.best = float(self.saved["best"])

    def snapshot(self) -> dict:
        best = self.best if self.best is not None and math.isfinite(float(self.best)) else None
        return {**{name: int(getattr(self, name)) for name in self.COUNTERS}, "best": best}


class ResumableEarlyStopping(_Resumable, keras.callbacks.EarlyStopping):
    """EarlyStopping whose patience counter survives a restart."""


class ResumableReduceLR(_Resumable, keras.callbacks.ReduceLROnPlateau):
    """ReduceLROnPlateau whose patience and cooldown counters survive a restart."""

    COUNTERS = ("wait", "cooldown_counter")


class SnapshotCallbacks(keras.callbacks.Callback):
    """Copies the early-stopping and LR-plateau counters into the run state before it is written."""

    def __init__(self, state: RunState, early: ResumableEarlyStopping, reduce: ResumableReduceLR):
        super().__init__()
        self.state, self.early, self.reduce = state, early, reduce

    def on_epoch_end(self, epoch, logs=None):
        self.state.early_stopping = self.early.snapshot()
        self.state.reduce_lr = self.reduce.snapshot()


def phase_callbacks(cfg, phase: str, total_epochs: int, state: RunState, history: list, nan_guard: NanGuard, *,
                    run_dir, save_best, printer=print, extra: list | tuple = (), full_model=None,
                    average: bool = False) -> list:
    """The callbacks of one training phase, in the order they must run.

    The NaN guard first (it stops the epoch before anything is saved from it); in fine-tuning,
    EarlyStopping and ReduceLROnPlateau, resumed from the counters in `state`, then their snapshot
    into `state`; the recorder, which writes the epoch's files and commits `state`; the progress
    line; last the caller's `extra` callbacks (tracking, a tuner's pruning), which so see an epoch
    already on disk. `average`: the optimizer keeps a weight average, which validation and the
    best model use (`AveragedWeights`). Every "which way is better" comes from `config.monitor_mode(cfg.monitor)`.
    """
    cbs: list = [nan_guard]
    averaged = AveragedWeights() if average else None
    if averaged is not None:
        cbs.append(averaged)
    if phase == "finetune":
        mode = monitor_mode(cfg.monitor)
        resumed = state.phase == "finetune"  # counters of an earlier phase do not carry over
        early = ResumableEarlyStopping(
            saved=state.early_stopping if resumed else None,
            monitor=cfg.monitor, mode=mode, patience=cfg.early_stopping_patience, restore_best_weights=False,
        )
        reduce = ResumableReduceLR(
            saved=state.reduce_lr if resumed else None,
            monitor=cfg.monitor, mode=mode, factor=cfg.reduce_lr_factor, patience=cfg.reduce_lr_patience, verbose=0,
        )
        cbs += [early, reduce, SnapshotCallbacks(state, early, reduce)]
    recorder = RunRecorder(run_dir, save_best, history, state, phase, nan_guard, monitor=cfg.monitor,
                           full_model=full_model, averaged=averaged)
    progress_line = EpochProgress(total_epochs, "warm-up" if phase == "warmup" else "fine-tune", printer=printer)
    return cbs + [recorder, progress_line] + list(extra)
