"""Fine-tuning: the notebook's recipe as a resumable run that writes a run directory.

Phases: when the head is new, a linear probe fitted on the frozen features (`recipe.py`; or the
old head-only warm-up epochs with `head_init="warmup"`: a random head's large gradients would
otherwise flow into the unfrozen backbone layers), then fine-tuning of the last
N layers at a low learning rate with EarlyStopping, ReduceLROnPlateau and a best-model checkpoint.

This module is the orchestrator: `train` and `_Trainer` decide what runs in which order. The
parts have their own owners: the data pipelines and acceleration (`training_data.py`), the
callbacks of a phase (`callbacks.phase_callbacks`), the best-model files (`checkpoint.py`), the
provenance record in config.json (`provenance.py`), `--resume` (`resume.py`) and the run
directory itself (`runs.RunDir`).
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from . import _env

_env.import_tensorflow()

import keras  # noqa: E402

from . import runs  # noqa: E402
from .callbacks import NanGuard, phase_callbacks  # noqa: E402
from .checkpoint import save_best  # noqa: E402
from .config import TrainConfig  # noqa: E402
from .console import set_resume_command, table  # noqa: E402
from .errors import RetreinoError, TrainingError  # noqa: E402
from .models import LoadedModel, load_model  # noqa: E402
from .models.graph import flatten_layers  # noqa: E402
from .models.info import ModelInfo, labels_text  # noqa: E402
from .models.summary import count_params  # noqa: E402
from .models.surgery import freeze_all_but_last, freeze_head_only, prepare_for_classes, trainable_report  # noqa: E402
from .optimizers import keeps_weight_average, layer_rate_scales, make_optimizer, with_layer_rates  # noqa: E402
from .provenance import config_record, describe_data  # noqa: E402
from .runs import RunDir, RunState  # noqa: E402
from .training_data import TrainingData  # noqa: E402

__all__ = ["Run", "TrainingError", "train", "check_trainable", "make_optimizer", "loss_and_metric"]


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
        from .resume import resume as resume_run

        return resume_run(resume, printer=printer, callbacks=callbacks)
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
    """One run: set up the data and model, then fit the phases in order, writing the run directory.

    The linear probe (`recipe.run_linear_probe`) and the end-of-training calibration
    (`ood.fit_after_training`) take the trainer itself: they read `cfg`, `dataset`, `loaded`,
    `run_dir` and `printer`, and call `pipelines`, `freeze`, `compile` and `save_best`.
    """

    def __init__(self, cfg: TrainConfig, printer=print, run_dir: Path | None = None, callbacks: list | None = None):
        self.cfg, self.printer, self.run_dir = cfg, printer, run_dir
        self.extra_callbacks = list(callbacks or [])

    @classmethod
    def reopen(cls, run_dir: Path, printer=print) -> "_Trainer":
        """The trainer of a finished run, its best model loaded and its data rebuilt from config.json."""
        cfg = TrainConfig.from_dict(RunDir(run_dir).require_config()["config"])
        trainer = cls(cfg, printer=printer, run_dir=Path(run_dir))
        trainer.loaded = load_model(Path(run_dir) / runs.BEST_KERAS)
        trainer.setup(fresh=False)
        return trainer

    def setup(self, fresh: bool):
        """Load the dataset and (when `fresh`) the model with its new head; a resume sets `loaded` first."""
        from .data import load_dataset
        from .recipe import HEAD_INITS

        cfg = self.cfg
        if cfg.head_init not in HEAD_INITS:
            raise RetreinoError(f"unknown head initialisation {cfg.head_init!r}: use {' or '.join(HEAD_INITS)}")
        keras.utils.set_random_seed(cfg.seed)
        self.dataset = load_dataset(
            cfg.data, val_split=cfg.val_split, test_split=cfg.test_split, seed=cfg.seed,
            labels_csv=cfg.labels_csv, strict=cfg.strict,
        )
        check_trainable(self.dataset, cfg.data)
        if fresh:
            base = load_model(cfg.model, weights=cfg.weights, input_range=cfg.input_range)
            self.prepared = prepare_for_classes(base, self.dataset.class_names, dropout=cfg.dropout, seed=cfg.seed)
            self.loaded = self.prepared.loaded
        if cfg.resize:  # --resize overrides the model's contract, and the override travels with it
            self.loaded.info.resize = cfg.resize
        self.info: ModelInfo = self.loaded.info
        self.binary = self.info.head == "sigmoid" and int(self.loaded.model.output_shape[-1]) == 1
        self.label_mode = "binary" if self.binary else "categorical"
        self.data = TrainingData(cfg, self.dataset, self.info, self.label_mode)

    def pipelines(self, ordered_train: bool = False):
        """(train, validation) datasets of scaled images (see `TrainingData.pipelines`)."""
        return self.data.pipelines(ordered_train=ordered_train)

    # -- model ----------------------------------------------------------------------------------
    def compile(self, model, learning_rate: float | None = None, optimizer=None, average: bool = False):
        """Compile with a new optimizer at `learning_rate` (keeping a weight average if `average`),
        or with a given (shared) `optimizer`."""
        from .speed.devices import use_mixed

        cfg = self.cfg
        loss, metric = loss_and_metric(self.info.head, int(model.output_shape[-1]), cfg.label_smoothing)
        if optimizer is None:
            optimizer = make_optimizer(cfg.optimizer, learning_rate, cfg.ema_momentum if average else None)
        # XLA only with mixed precision on a GPU: on CPU it compiles for long and gains little.
        model.compile(optimizer=optimizer, loss=loss, metrics=[metric], jit_compile=use_mixed(cfg))

    def phases(self) -> list[tuple[str, int, float]]:
        """(phase, epochs, learning rate) in order; a resume skips the epochs already done."""
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

    def save_best(self, model):
        """The run's best-model pair from `model` (see `checkpoint.save_best`); RunRecorder calls it."""
        save_best(self.run_dir, self.info, model)

    # -- the run ----------------------------------------------------------------------------------
    def run(self, dry_run: bool = False) -> Run | None:
        """A fresh run: set up, create the run directory and its record, then `fit`."""
        self.setup(fresh=True)
        self.new_head = self.prepared.new_head
        cfg, ds = self.cfg, self.dataset
        self.printer(describe_data(cfg.data, ds))
        self.printer(f"Model: {self.info.format_name} ({Path(str(self.info.source)).name}); {self.prepared.reason}")
        self.freeze("finetune")
        if dry_run:
            self.print_trainable()
            return None
        run = RunDir.create(cfg.runs_dir, cfg.name or runs.default_name(cfg))
        self.run_dir = run.path
        self._lock = runs.lock_run_dir(self.run_dir)  # held while this trainer lives: no --resume meanwhile
        run.write_labels(labels_text(ds.class_names))
        run.write_config(config_record(cfg, ds, self.info, self.new_head))
        state = RunState(new_head=self.new_head)
        run.write_state(state)
        self.printer(f"Run directory: {self.run_dir}")
        set_resume_command(f"retreino train --resume {self.run_dir}")  # for the CLI's "interrupted" line
        return self.fit(state, history=[], resume_model=None)

    def fit(self, state: RunState, history: list, resume_model) -> Run:
        """Fit the phases not yet done (all of them in a fresh run), then `finish`.

        `resume_model` is last.keras of an interrupted run: it continues its own phase with its
        optimizer state; any later phase starts from the phase's own freeze and optimizer.
        """
        cfg = self.cfg
        train_ds, val_ds, acc = self.data.accelerated(self.loaded.model, printer=self.printer)
        self.accelerator = acc
        if (cfg.tensorboard or cfg.mlflow) and _is_chief(None):  # tracking: the chief only, after retreino's own
            from .tracking import callbacks_for
            self.extra_callbacks = callbacks_for(cfg, self.run_dir) + self.extra_callbacks
        phases = self.phases()
        total = sum(n for _, n, _ in phases)
        offset = 0
        nan_guard = NanGuard()
        interrupted = False
        try:
            for phase, n_epochs, lr in phases:
                end = offset + n_epochs
                if state.epoch >= end:  # phase already done before a resume
                    pass
                elif phase == "linear-probe":
                    from .recipe import run_linear_probe

                    run_linear_probe(self, state, history)
                else:
                    same_phase = resume_model is not None and state.phase == phase and state.epoch > offset
                    self._fit_phase(phase, lr, end, total, state, history, nan_guard, (train_ds, val_ds, acc),
                                    resume_model if same_phase else None)
                    resume_model = None
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

    def _fit_phase(self, phase: str, lr: float, end: int, total: int, state: RunState, history: list,
                   nan_guard: NanGuard, data: tuple, resume_model) -> None:
        """Keras' fit for one warm-up or fine-tuning phase, up to epoch `end` of the whole run."""
        cfg = self.cfg
        train_ds, val_ds, acc = data
        if resume_model is not None:
            model = resume_model  # same phase: keep its optimizer state and learning rate
        else:
            self.freeze(phase)
            model = self.loaded.model
            self.compile(model, lr, average=phase == "finetune" and cfg.weight_average == "ema")
        scales = {}
        if phase == "finetune":  # a resumed run's optimizer too: its saved file holds a plain Keras one
            scales = layer_rate_scales(flatten_layers(model), cfg.layer_decay)
            with_layer_rates(model.optimizer, scales)
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
        average = keeps_weight_average(model.optimizer)
        self.printer(f"{'Warm-up: head only' if phase == 'warmup' else f'Fine-tuning the last {cfg.unfreeze} layers'}"
                     f" ({trainable:,} trainable parameters), learning rate {lr:g}"
                     + (f" at the head, down to {lr * min(scales.values()):.3g} in the deepest layer" if scales else "")
                     + (", weights averaged (EMA)" if average else ""))
        callbacks = phase_callbacks(cfg, phase, total, state, history, nan_guard, run_dir=self.run_dir,
                                    save_best=self.save_best, printer=self.printer, extra=self.extra_callbacks,
                                    full_model=model, average=average)
        if cfg.distribute not in (None, "", "none"):
            from .speed.devices import patch_symbolic_build
            patch_symbolic_build(fit_model)
        fit_model.fit(
            train_ds, validation_data=val_ds, epochs=end, initial_epoch=state.epoch,
            callbacks=callbacks, verbose=0, class_weight=self.data.class_weight(),
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

    def finish(self, run: Run):
        refit = None
        if not run.interrupted and (self.run_dir / runs.BEST_KERAS).exists():
            from .ood import fit_after_training

            # Temperature + unknown detector (and the head refitted after fine-tuning), stored with the best model.
            refit = fit_after_training(self).get("head_refit")
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
            if refit and refit["kept"]:  # the saved model is the refitted head's: its figures, not the epoch's
                self.printer(f"Best epoch {run.best_epoch}, head refitted: val_accuracy "
                             f"{refit['after']['val_accuracy']:.3f}, val_loss {refit['after']['val_loss']:.4f}")
            else:
                self.printer(
                    f"Best epoch {run.best_epoch}: {self.cfg.monitor} {run.best_val_accuracy:.3f}"
                    + (f", val_loss {best['val_loss']:.4f}" if best.get("val_loss") is not None else "")
                )
        files = sorted(p.name for p in self.run_dir.iterdir() if not p.name.startswith("."))
        self.printer(f"Saved in {self.run_dir}: {', '.join(files)}")
        if not run.interrupted:
            self.printer(f"Next: retreino evaluate --run {self.run_dir}")

    def print_trainable(self):
        model = self.loaded.model
        rows = trainable_report(model, self.cfg.unfreeze, self.cfg.train_bn)
        self.printer(table([(n, c, s, f"{p:,}") for n, c, s, p in rows], headers=["layer", "type", "state", "params"], align="lllr"))
        first = ""  # what runs before fine-tuning: the phases' own answer (see `phases`)
        for phase, n, lr in self.phases():
            if phase == "linear-probe":
                first = " (after the new head is fitted as a linear probe on the frozen features)"
            elif phase == "warmup":
                first = f" (after a {n}-epoch head-only warm-up at {lr:g})"
        self.printer(f"Trainable parameters: {count_params(model.trainable_weights):,} of {count_params(model.weights):,}"
                     + first + f", learning rate {self.cfg.learning_rate:g}"
                     + (f" at the head, times {self.cfg.layer_decay:g} per layer below it" if self.cfg.layer_decay != 1 else ""))


def _lost_peer_errors() -> tuple:
    """What TensorFlow raises on the surviving workers when a peer of a collective is gone."""
    tf = _env.import_tensorflow()
    return (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.DeadlineExceededError)


def check_trainable(ds, data) -> None:
    """A dataset can be trained on: training and validation images, and two classes at least."""
    if ds.train is None or len(ds.train) == 0:
        raise RetreinoError(f"no training images found in {data}")
    if ds.validation is None or len(ds.validation) == 0:
        copies = next((p.message for p in ds.problems if p.kind == "empty_split" and "validation split" in p.message
                       and "identical copies" in p.message), None)
        if copies:  # a split the tool made, emptied by keeping duplicates together: more --val-split would not help
            raise RetreinoError(f"no validation images in {data}: {copies.split(': ', 1)[1].split('; ')[0]}; "
                                "add different photos of each class, or a validation/ folder")
        raise RetreinoError(f"no validation images in {data}: add a validation/ folder or use --val-split")
    if len(ds.class_names) < 2:
        raise RetreinoError(f"need at least 2 classes, found {len(ds.class_names)} in {data}")


def loss_and_metric(head: str, units: int, label_smoothing: float = 0.0):
    """The loss that matches the head: BCE for a 1-unit sigmoid, else categorical cross-entropy.

    Never binary cross-entropy on a 2-unit softmax: Keras accepts it and trains wrongly.
    """
    if head == "sigmoid" and units == 1:
        return (keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing),
                keras.metrics.BinaryAccuracy(name="accuracy"))
    loss = keras.losses.CategoricalCrossentropy(from_logits=head == "logits", label_smoothing=label_smoothing)
    return loss, keras.metrics.CategoricalAccuracy(name="accuracy")
