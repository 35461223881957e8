"""Fine-tuning: the notebook's recipe as a resumable run that writes a run directory.

Phases: when the head is new, a linear probe fitted on the frozen features (`recipe.py`; or the
old head-only warm-up epochs with `head_init="warmup"`: a random head's large gradients would
otherwise flow into the unfrozen backbone layers), then fine-tuning of the last
N layers at a low learning rate with EarlyStopping, ReduceLROnPlateau and a best-model checkpoint.
"""
from __future__ import annotations

import contextlib
import dataclasses
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import _env

_env.import_tensorflow()

import keras  # noqa: E402
import numpy as np  # noqa: E402

from . import runs  # noqa: E402
from .callbacks import (  # noqa: E402
    EpochProgress,
    NanGuard,
    ResumableEarlyStopping,
    ResumableReduceLR,
    RunRecorder,
    SnapshotCallbacks,
)
from .config import TrainConfig, monitor_mode  # noqa: E402
from .console import set_resume_command, status, table  # noqa: E402
from .errors import RetreinoError  # noqa: E402
from .models import LoadedModel, load_model, save_model  # noqa: E402
from .models.info import ModelInfo, labels_text  # noqa: E402
from .models.summary import count_params  # noqa: E402
from .models.surgery import freeze_all_but_last, freeze_head_only, prepare_for_classes, trainable_report  # noqa: E402
from .runs import RunDir, RunState  # noqa: E402


class TrainingError(RetreinoError):
    """Training could not go on (NaN loss, ...); the run directory keeps the best model so far."""


@dataclass
class Run:
    """What `train` returns: the run directory and its results.

    >>> run = retreino.train(model="mobilenet_v2", data="data/cats_vs_dogs")  # doctest: +SKIP
    >>> run.best_model.class_names, run.history[-1]["val_accuracy"]              # doctest: +SKIP
    """

    dir: Path
    config: TrainConfig
    class_names: list[str]
    history: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    best_val_accuracy: float | None = None
    interrupted: bool = False

    @property
    def best_model(self) -> LoadedModel:
        return load_model(self.dir / runs.BEST_KERAS)

    def plot_history(self):
        """Learning curves (accuracy and loss, train vs validation) as a matplotlib Figure."""
        from .plots import learning_curves_figure, read_history, save_figure

        fig = learning_curves_figure(read_history(self.history))
        save_figure(fig, self.dir / runs.CURVES)
        return fig

    def __repr__(self) -> str:
        best = f"{self.best_val_accuracy:.3f}" if self.best_val_accuracy is not None else "-"
        return f"<Run {str(self.dir)!r} epochs={len(self.history)} best_val_accuracy={best}>"


def train(
    config: TrainConfig | None = None,
    *,
    resume: str | Path | None = None,
    dry_run: bool = False,
    printer=print,
    callbacks: list | None = None,
    **overrides,
) -> Run | None:
    """Fine-tune a model on a folder of images; returns the Run (None for a dry run).

    `config` holds every setting (see `TrainConfig`); keyword overrides win over it.
    `resume=runs/<name>` continues an interrupted run to the same epoch count.
    `callbacks` are extra Keras callbacks (e.g. a tuner's pruning callback), run after retreino's own.

    >>> run = train(model=MODEL, data=DATA, epochs=1, runs_dir=RUNS, printer=None)
    >>> [row["phase"] for row in run.history], run.best_model.class_names
    (['linear-probe', 'finetune'], ['cats', 'dogs'])
    """
    printer = printer or (lambda *args, **kwargs: None)  # printer=None: a quiet run
    if resume is not None:
        return _resume(Path(resume), printer=printer, callbacks=callbacks)
    cfg = dataclasses.replace(config or TrainConfig(), **overrides) if overrides else (config or TrainConfig())
    cfg.validate()  # again: fields may have been set after the config was built
    if not cfg.model or not cfg.data:
        raise RetreinoError("train needs a model (file, folder or backbone name) and a data folder")
    from .speed.devices import run_context

    with run_context(cfg, printer=printer) as strategy:
        if strategy is not None and not _is_chief(strategy):
            with _worker_runs_dir(cfg, strategy, printer) as tmp:
                return _Trainer(dataclasses.replace(cfg, runs_dir=str(tmp)), printer=printer,
                                callbacks=callbacks).run(dry_run=dry_run)
        return _Trainer(cfg, printer=printer, callbacks=callbacks).run(dry_run=dry_run)


def _is_chief(strategy) -> bool:
    from .speed.devices import is_chief

    return is_chief(strategy)


@contextlib.contextmanager
def _worker_runs_dir(cfg, strategy, printer):
    """A non-chief worker of a multi-worker cluster trains in a temporary folder, deleted at the end.

    Every worker must run the same steps (the collectives need them all, checkpoint saves
    included), so a worker does everything the chief does, but in its own throwaway folder: the
    chief alone writes the run directory, as TensorFlow advises for multi-worker checkpoints.
    """
    import shutil
    import tempfile

    from .speed.devices import worker_name

    tmp = Path(tempfile.mkdtemp(prefix=f"retreino-{worker_name(strategy)}-"))
    printer(f"Worker {worker_name(strategy)}: not the chief, so nothing is kept (scratch folder {tmp})")
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class _Trainer:
    def __init__(self, cfg: TrainConfig, printer=print, run_dir: Path | None = None, callbacks: list | None = None):
        self.cfg, self.printer, self.run_dir = cfg, printer, run_dir
        self.extra_callbacks = list(callbacks or [])

    def setup(self, fresh: bool):
        from .data import load_dataset

        cfg = self.cfg
        from .recipe import HEAD_INITS

        if cfg.head_init not in HEAD_INITS:
            raise RetreinoError(f"unknown head initialisation {cfg.head_init!r}: use {' or '.join(HEAD_INITS)}")
        keras.utils.set_random_seed(cfg.seed)
        self.dataset = load_dataset(
            cfg.data, val_split=cfg.val_split, test_split=cfg.test_split, seed=cfg.seed,
            labels_csv=cfg.labels_csv, strict=cfg.strict,
        )
        ds = self.dataset
        check_trainable(ds, cfg.data)
        if fresh:
            base = load_model(cfg.model, weights=cfg.weights, input_range=cfg.input_range)
            self.prepared = prepare_for_classes(base, ds.class_names, dropout=cfg.dropout, seed=cfg.seed)
            self.loaded = self.prepared.loaded
        if cfg.resize:  # --resize overrides the model's contract, and the override travels with it
            self.loaded.info.resize = cfg.resize
        self.info: ModelInfo = self.loaded.info
        head = self.info.head
        self.binary = head == "sigmoid" and int(self.loaded.model.output_shape[-1]) == 1
        self.label_mode = "binary" if self.binary else "categorical"

    # -- data ---------------------------------------------------------------------------------
    def pipelines(self, ordered_train: bool = False):
        """(train, validation) datasets of scaled images; `ordered_train` gives the training split
        in file order without augmentation (for a feature cache, which shuffles by itself)."""
        from .data import make_pipeline

        cfg, ds, info = self.cfg, self.dataset, self.info
        common = dict(
            image_size=info.input_size, preprocessing=info.preprocessing, batch_size=cfg.batch_size,
            num_classes=len(ds.class_names), label_mode=self.label_mode, resize_mode=info.resize,
            interpolation=info.interpolation,
            cache_budget_mb=cfg.cache_budget_mb, seed=cfg.seed,
        )
        augment = cfg.augment if cfg.augment.enabled else None
        if ordered_train:
            train = make_pipeline(ds.train, training=False, **common)
        else:
            train = make_pipeline(ds.train, training=True, augment=augment, **common)
        val = make_pipeline(ds.validation, training=False, **common)
        return train, val

    def accelerated_data(self):
        """(training data, validation data, accelerator or None) for this run."""
        from .speed.devices import accelerate_reason

        cfg = self.cfg
        augmenting = cfg.augment.enabled
        reason = accelerate_reason(cfg)
        if reason is None:
            from .speed.accelerate import Accelerator

            acc = Accelerator.prepare(
                self.loaded.model, lambda m: freeze_all_but_last(m, cfg.unfreeze, train_bn=cfg.train_bn),
                batch_size=cfg.batch_size, seed=cfg.seed, cache_budget_mb=cfg.cache_budget_mb,
            )
            if acc is None:
                self.printer("Speed: nothing is frozen at the front of the network, so every layer runs in Keras")
                train_ds, val_ds = self.pipelines()
                return train_ds, val_ds, None
            cache_train = not augmenting and acc.fits(len(self.dataset.train))
            train_ds, val_ds = self.pipelines(ordered_train=cache_train)
            status("Speed: converting the frozen front of the network and caching its outputs ...")
            acc.start(next(iter(val_ds))[0].numpy())
            self.printer(acc.describe())
            train_in = acc.cached_training(train_ds) if cache_train else acc.streamed(train_ds)
            return train_in, acc.validation(val_ds, len(self.dataset.validation)), acc
        if cfg.accelerate != "off":
            self.printer(f"Speed: frozen-prefix acceleration {reason}")
        train_ds, val_ds = self.pipelines()
        return train_ds, val_ds, None

    def class_weight(self):
        if self.cfg.class_weight in (None, "", "none"):
            return None
        if self.cfg.class_weight != "balanced":
            raise RetreinoError(f"unknown class weighting {self.cfg.class_weight!r}: use 'balanced'")
        from sklearn.utils.class_weight import compute_class_weight

        labels = np.asarray(self.dataset.train.labels)
        classes = np.arange(len(self.dataset.class_names))
        present = np.unique(labels)
        weights = compute_class_weight("balanced", classes=present, y=labels)
        out = {int(c): 1.0 for c in classes}
        out.update({int(c): float(w) for c, w in zip(present, weights)})
        return out

    # -- model ----------------------------------------------------------------------------------
    def compile(self, model, learning_rate: float | None = None, optimizer=None):
        """Compile with a new optimizer at `learning_rate`, or with a given (shared) `optimizer`."""
        from .speed.devices import use_mixed

        cfg = self.cfg
        loss, metric = loss_and_metric(self.info.head, int(model.output_shape[-1]), cfg.label_smoothing)
        if optimizer is None:
            optimizer = make_optimizer(cfg.optimizer, learning_rate)
        # XLA only with mixed precision on a GPU: on CPU it compiles for long and gains little.
        model.compile(optimizer=optimizer, loss=loss, metrics=[metric], jit_compile=use_mixed(cfg))

    def phases(self) -> list[tuple[str, int, float]]:
        cfg = self.cfg
        phases = []
        if self.new_head and cfg.head_init == "linear-probe":
            phases.append(("linear-probe", 1, 0.0))  # see recipe.py: one recorded "epoch", no gradient steps
        elif self.new_head and cfg.warmup_epochs > 0:
            phases.append(("warmup", cfg.warmup_epochs, cfg.warmup_learning_rate))
        phases.append(("finetune", cfg.epochs, cfg.learning_rate))
        return phases

    def freeze(self, phase: str):
        model = self.loaded.model
        if phase == "warmup":
            return freeze_head_only(model)
        return freeze_all_but_last(model, self.cfg.unfreeze, train_bn=self.cfg.train_bn)

    # -- the run ----------------------------------------------------------------------------------
    def run(self, dry_run: bool = False) -> Run | None:
        self.setup(fresh=True)
        self.new_head = self.prepared.new_head
        cfg, ds = self.cfg, self.dataset
        self.printer(self.describe_data())
        self.printer(f"Model: {self.info.format_name} ({Path(str(self.info.source)).name}); {self.prepared.reason}")
        self.freeze("finetune")
        if dry_run:
            self.print_trainable()
            return None
        run = RunDir.create(cfg.runs_dir, cfg.name or _default_name(cfg))
        self.run_dir = run.path
        self._lock = runs.lock_run_dir(self.run_dir)  # held while this trainer lives: no --resume meanwhile
        run.write_labels(labels_text(ds.class_names))
        run.write_config(self.config_record())
        state = RunState(new_head=self.new_head)
        run.write_state(state)
        self.printer(f"Run directory: {self.run_dir}")
        set_resume_command(f"retreino train --resume {self.run_dir}")  # for the CLI's "interrupted" line
        return self.fit(state, history=[], resume_model=None)

    def fit(self, state: RunState, history: list, resume_model) -> Run:
        cfg = self.cfg
        train_ds, val_ds, acc = self.accelerated_data()
        self.accelerator = acc
        if (cfg.tensorboard or cfg.mlflow) and _is_chief(None):  # tracking: the chief only, after retreino's own
            from .tracking import callbacks_for
            self.extra_callbacks = callbacks_for(cfg, self.run_dir) + self.extra_callbacks
        total = sum(n for _, n, _ in self.phases())
        offset = 0
        nan_guard = NanGuard()
        interrupted = False
        try:
            for phase, n_epochs, lr in self.phases():
                end = offset + n_epochs
                if state.epoch >= end:  # phase already done before a resume
                    offset = end
                    continue
                if phase == "linear-probe":
                    from .recipe import run_linear_probe

                    run_linear_probe(self, state, history)
                    offset = end
                    continue
                if resume_model is not None and state.phase == phase and state.epoch > offset:
                    model = resume_model  # same phase: keep its optimizer state and learning rate
                else:
                    self.freeze(phase)
                    model = self.loaded.model
                    self.compile(model, lr)
                resume_model = None
                self.loaded = LoadedModel(model, self.info)
                fit_model = model
                if acc is not None:
                    # The tail trains the full model's own layers; the full model shares its optimizer,
                    # built on the full model's variables, so last.keras carries the optimizer state.
                    if not model.optimizer.built:
                        model.optimizer.build(model.trainable_variables)
                    fit_model = acc.tail
                    self.compile(fit_model, optimizer=model.optimizer)
                trainable = count_params(model.trainable_weights)
                self.printer(f"{'Warm-up: head only' if phase == 'warmup' else f'Fine-tuning the last {cfg.unfreeze} layers'}"
                             f" ({trainable:,} trainable parameters), learning rate {lr:g}")
                callbacks = self.callbacks(phase, total, state, history, nan_guard, full_model=model)
                if cfg.distribute not in (None, "", "none"):
                    from .speed.devices import patch_symbolic_build
                    patch_symbolic_build(fit_model)
                fit_model.fit(
                    train_ds, validation_data=val_ds, epochs=end, initial_epoch=state.epoch,
                    callbacks=callbacks, verbose=0, class_weight=self.class_weight(),
                    shuffle=False,  # the datasets shuffle themselves, seeded
                )
                if nan_guard.hit is not None:
                    epoch, batch = nan_guard.hit
                    raise TrainingError(
                        f"the loss became NaN at epoch {epoch + 1}, batch {batch + 1}; stopped. The best model so far "
                        f"is in {self.run_dir / runs.BEST_KERAS}. Try a lower --lr or check the data"
                    )
                if phase == "finetune" and state.epoch < end:
                    self.printer(f"Early stopping: no {cfg.monitor} gain in {cfg.early_stopping_patience} epochs")
                offset = end
            state.finished = True
            RunDir(self.run_dir).write_state(state)
        except _lost_peer_errors() as exc:
            if cfg.distribute != "multiworker":
                raise
            # A worker died (killed, preempted): the survivors' collectives abort. The run directory
            # holds the last finished epoch; the same --resume on every worker carries on from it.
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            reason = next((line for line in lines if "unhealthy" in line or "aborted" in line.lower()),
                          lines[0] if lines else "")[:200]
            raise TrainingError(f"a worker of the cluster stopped ({type(exc).__name__}: {reason}); restart every "
                                f"worker with: retreino train --resume {self.run_dir}") from None
        except KeyboardInterrupt:
            interrupted = True
            self.printer(f"\nInterrupted after epoch {state.epoch}. Continue with: retreino train --resume {self.run_dir}")
        run = Run(self.run_dir, cfg, list(self.dataset.class_names), history, state.best_epoch, state.best, interrupted)
        self.finish(run)
        return run

    def callbacks(self, phase, total, state, history, nan_guard, full_model=None):
        cfg = self.cfg
        mode = monitor_mode(cfg.monitor)
        early = ResumableEarlyStopping(
            saved=state.early_stopping if state.phase == "finetune" else None,
            monitor=cfg.monitor, mode=mode, patience=cfg.early_stopping_patience, restore_best_weights=False,
        )
        reduce = ResumableReduceLR(
            saved=state.reduce_lr if state.phase == "finetune" else None,
            monitor=cfg.monitor, mode=mode, factor=cfg.reduce_lr_factor, patience=cfg.reduce_lr_patience, verbose=0,
        )
        recorder = RunRecorder(self.run_dir, self.save_best, history, state, phase, nan_guard, monitor=cfg.monitor,
                               full_model=full_model)
        progress = EpochProgress(total, "warm-up" if phase == "warmup" else "fine-tune", printer=self.printer)
        cbs = [nan_guard]
        if phase == "finetune":
            cbs += [early, reduce, SnapshotCallbacks(state, early, reduce)]
        return cbs + [recorder, progress] + self.extra_callbacks

    def save_best(self, model):
        try:
            self._save_best(model)
        except OSError as exc:
            import errno

            # h5py reports a full disk as an OSError without errno, "errno = 28" in its text.
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT) and "errno = 28" not in str(exc):
                raise
            for path in runs.pending_best(self.run_dir).values():  # half-written: free their space
                path.unlink(missing_ok=True)
            best = Path(self.run_dir) / runs.BEST_KERAS
            kept = f"the best model so far is intact in {best}" if best.exists() else "no best model was saved yet"
            reason = exc.strerror or "No space left on device"
            raise TrainingError(f"no space left on {Path(self.run_dir).resolve()}: saving the best model failed "
                                f"({reason}); {kept}. Free some space and resume with --resume") from None

    def _save_best(self, model):
        loaded = LoadedModel(model, self.info)
        pending = runs.pending_best(self.run_dir)  # both files, then both renames: always the same epoch
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
        runs.commit_best(self.run_dir)

    def finish(self, run: Run):
        if not run.interrupted and (self.run_dir / runs.BEST_KERAS).exists():
            from .ood import fit_after_training

            fit_after_training(self)  # temperature + unknown detector, stored with the best model
        if run.history:
            try:
                from .plots import plot_learning_curves

                plot_learning_curves(run.history, self.run_dir / runs.CURVES)
            except ImportError:
                pass
        try:
            from .report import write_report

            write_report(self.run_dir)
        except ImportError:
            pass
        if run.best_epoch:
            best = run.history[run.best_epoch - 1] if len(run.history) >= run.best_epoch else {}
            self.printer(
                f"Best epoch {run.best_epoch}: {self.cfg.monitor} {run.best_val_accuracy:.3f}"
                + (f", val_loss {best['val_loss']:.4f}" if best.get("val_loss") is not None else "")
            )
        files = sorted(p.name for p in self.run_dir.iterdir() if not p.name.startswith("."))
        self.printer(f"Saved in {self.run_dir}: {', '.join(files)}")
        if not run.interrupted:
            self.printer(f"Next: retreino evaluate --run {self.run_dir}")

    # -- reporting --------------------------------------------------------------------------------
    def describe_data(self) -> str:
        ds = self.dataset
        lines = [f"Data: {self.cfg.data} ({ds.source}), {len(ds.class_names)} classes: {', '.join(ds.class_names)}"]
        for split in ("train", "validation", "test"):
            s = getattr(ds, split)
            if s is None or len(s) == 0:
                continue
            counts = np.bincount(np.asarray(s.labels), minlength=len(ds.class_names))
            per = ", ".join(f"{n} {c}" for c, n in zip(ds.class_names, counts))
            lines.append(f"  {split:<10} {len(s):>6} images ({per})")
        if ds.skipped:
            lines.append(f"  skipped {len(ds.skipped)} unreadable file(s): see `retreino check-data {self.cfg.data}`")
        return "\n".join(lines)

    def print_trainable(self):
        model = self.loaded.model
        rows = trainable_report(model, self.cfg.unfreeze, self.cfg.train_bn)
        self.printer(table([(n, c, s, f"{p:,}") for n, c, s, p in rows], headers=["layer", "type", "state", "params"], align="lllr"))
        self.printer(
            f"Trainable parameters: {count_params(model.trainable_weights):,} of {count_params(model.weights):,}"
            + (f" (after a {self.cfg.warmup_epochs}-epoch head-only warm-up at {self.cfg.warmup_learning_rate:g})"
               if self.prepared.new_head and self.cfg.warmup_epochs > 0 else "")
        )

    def config_record(self) -> dict:
        ds = self.dataset
        return {
            "config": self.cfg.to_dict(),
            "versions": versions(),
            "data": {
                "root": str(self.cfg.data),
                "source": ds.source,
                "class_names": list(ds.class_names),
                "fingerprint": ds.fingerprint(),
                "counts": split_counts(ds),
                "skipped": list(ds.skipped),
            },
            "model": self.info.to_dict(),
            "new_head": self.prepared.new_head,
        }


def _resume(run_dir: Path, printer=print, callbacks: list | None = None) -> Run:
    # One process per run directory; a multi-worker cluster's other workers only read it.
    lock = runs.lock_run_dir(run_dir) if run_dir.is_dir() and not _resumes_as_worker(run_dir) else None
    try:
        return _resume_locked(run_dir, printer, callbacks)
    finally:
        if lock is not None:
            lock.close()


def _resumes_as_worker(run_dir: Path) -> bool:
    """A multi-worker run resumed by a task TF_CONFIG names as not the chief (before TF starts)."""
    from .speed.devices import tf_config_is_chief

    record = RunDir(run_dir).read_config() or {}
    return record.get("config", {}).get("distribute") == "multiworker" and not tf_config_is_chief()


def _resume_locked(run_dir: Path, printer=print, callbacks: list | None = None) -> Run:
    run = RunDir(run_dir)
    record = run.read_config()
    state = run.read_state()
    if not record or not state:
        raise RetreinoError(f"{run_dir} is not a retreino run directory (no config.json/state.json)")
    cfg = TrainConfig.from_dict(record["config"])
    history = [row for row in run.read_history() if int(row["epoch"]) <= state.epoch]
    if state.finished:
        printer(f"{run_dir} already finished ({state.epoch} epochs); nothing to resume")
        return Run(run_dir, cfg, record["data"]["class_names"], history, state.best_epoch, state.best)
    from .speed.devices import run_context

    with run_context(cfg, printer=printer) as strategy:
        if strategy is not None and not _is_chief(strategy):
            # A worker resumes from the chief's run directory (it must see the same path) as it is
            # now, in a copy of its own: the chief alone writes the run directory.
            import shutil

            with _worker_runs_dir(cfg, strategy, printer) as tmp:
                copy = tmp / run_dir.name
                copy.mkdir()
                for name in (runs.CONFIG, runs.STATE, runs.HISTORY, runs.LAST, runs.LABELS):
                    if (run_dir / name).exists():
                        shutil.copy2(run_dir / name, copy / name)
                return _resume_run(copy, cfg, record, state, history, printer, callbacks)
        return _resume_run(run_dir, cfg, record, state, history, printer, callbacks)


def _resume_run(run_dir: Path, cfg: TrainConfig, record: dict, state: RunState, history: list, printer, callbacks) -> Run:
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


def _lost_peer_errors() -> tuple:
    """What TensorFlow raises on the surviving workers when a peer of a collective is gone."""
    tf = _env.import_tensorflow()
    return (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.DeadlineExceededError)


def check_trainable(ds, data) -> None:
    """A dataset can be trained on: training and validation images, and two classes at least."""
    if ds.train is None or len(ds.train) == 0:
        raise RetreinoError(f"no training images found in {data}")
    if ds.validation is None or len(ds.validation) == 0:
        raise RetreinoError(f"no validation images in {data}: add a validation/ folder or use --val-split")
    if len(ds.class_names) < 2:
        raise RetreinoError(f"need at least 2 classes, found {len(ds.class_names)} in {data}")


def make_optimizer(name: str, learning_rate: float | None):
    """A Keras optimizer by its config name (config.OPTIMIZERS), at `learning_rate`."""
    optimizers = {"adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD,
                  "rmsprop": keras.optimizers.RMSprop, "adamw": keras.optimizers.AdamW}
    if name.lower() not in optimizers:  # TrainConfig.validate rejects it earlier; a field set later lands here
        raise RetreinoError(f"unknown optimizer {name!r}: use one of {', '.join(optimizers)}")
    return optimizers[name.lower()](learning_rate=learning_rate)


def loss_and_metric(head: str, units: int, label_smoothing: float = 0.0):
    """The loss that matches the head: BCE for a 1-unit sigmoid, else categorical cross-entropy.

    Never binary cross-entropy on a 2-unit softmax: Keras accepts it and trains wrongly.
    """
    if head == "sigmoid" and units == 1:
        return (keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing),
                keras.metrics.BinaryAccuracy(name="accuracy"))
    loss = keras.losses.CategoricalCrossentropy(from_logits=head == "logits", label_smoothing=label_smoothing)
    return loss, keras.metrics.CategoricalAccuracy(name="accuracy")


def split_counts(ds) -> dict:
    """{split: {class: images}} for config.json and the report."""
    out = {}
    for split in ("train", "validation", "test"):
        s = getattr(ds, split)
        if s is not None and len(s):
            counts = np.bincount(np.asarray(s.labels), minlength=len(ds.class_names))
            out[split] = {c: int(n) for c, n in zip(ds.class_names, counts)}
    return out


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": sys.platform}
    for pkg in ("retreino", "keras", "tensorflow-cpu", "tensorflow", "numpy", "scikit-learn", "pillow"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _default_name(cfg: TrainConfig) -> str:
    data = Path(cfg.data).resolve().name or "data"
    model = Path(str(cfg.model)).name
    model = Path(model).stem if model.endswith((".h5", ".keras")) else model
    return f"{data}-{model}"
