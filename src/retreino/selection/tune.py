"""Hyper-parameter search with Optuna: one ordinary training run per trial, bad trials pruned early.

    runs/<name>-tune/
      tune.json          base settings and search space (a resume must match them)
      study.db           the Optuna study (SQLite): running the command again continues it
      trial_000/ ...     one run directory per trial (config.json, history.csv, model ...)
      leaderboard.csv    every trial, best first
      best_config.json   the best trial's full TrainConfig: `retreino train --config` reproduces it
      tune_history.png   score per trial and score against learning rate

Every trial trains with the same seed, so two trials differ only by their hyper-parameters and a
trial's score is reproduced by training its config again. The score is the config's `monitor`
(val_accuracy by default): its best value over the trial's epochs, the model a trial keeps.
Which way is better comes from `config.monitor_mode`, as for the run's own checkpoint: the study
maximizes an accuracy and minimizes a loss. Trials are pruned on the epoch's score (MedianPruner:
stop a trial doing worse than the median of earlier trials at the same epoch). Ties go to the
lower val_loss (to the higher val_accuracy when the score is a loss).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

from .. import runs
from .._env import quiet_retracing
from ..atomic import write_json, write_text
from ..config import AugmentConfig, TrainConfig, is_improvement, monitor_mode
from ..console import table
from ..errors import RetreinoError
from .common import Countdown, IndentPrinter, check_same_settings, duration, folder_name

SETTINGS = "tune.json"
STUDY_DB = "study.db"
LEADERBOARD = "leaderboard.csv"
BEST_CONFIG = "best_config.json"
HISTORY_PLOT = "tune_history.png"
STUDY_NAME = "retreino"
_WHERE = ("runs_dir", "name", "cache_budget_mb")
PARAMS = ("learning_rate", "unfreeze", "warmup_epochs", "dropout", "augment")


@dataclass
class SearchSpace:
    """Ranges searched; a range whose two ends are equal fixes that setting.

    `augment` is a strength that scales the base augmentation (the notebook's rotation 20 degrees
    and shifts 0.2, unless the base config sets others): 0 turns it off, 1 is the base, 1.5 half
    again as strong. One knob instead of six keeps the search small.
    """

    learning_rate: tuple[float, float] = (1e-6, 1e-3)  # log scale
    unfreeze: tuple[int, int] = (1, 60)  # last N layers with weights, log scale
    warmup_epochs: tuple[int, int] = (0, 3)  # head-only epochs (only when the head is new)
    dropout: tuple[float, float] = (0.0, 0.5)
    augment: tuple[float, float] = (0.0, 1.5)

    def __post_init__(self):
        for name in PARAMS:
            lo, hi = getattr(self, name)
            if lo > hi:
                raise RetreinoError(f"search range for {name}: {lo} is above {hi}")
        if self.learning_rate[0] <= 0:
            raise RetreinoError("the learning-rate range must be above 0 (it is searched on a log scale)")
        if self.unfreeze[0] < 1:
            raise RetreinoError("the unfreeze range starts at 1 layer at least")
        if self.warmup_epochs[0] < 0 or self.dropout[0] < 0 or self.dropout[1] >= 1 or self.augment[0] < 0:
            raise RetreinoError("warm-up epochs and augmentation must be >= 0 and dropout in [0, 1)")

    def to_dict(self) -> dict:
        return {k: list(getattr(self, k)) for k in PARAMS}

    def suggest(self, trial) -> dict:
        """The trial's values; fixed ranges are recorded as they are, not sampled."""
        def pick(name, kind, log=False):
            lo, hi = getattr(self, name)
            if lo == hi:
                return lo
            if kind is int:
                return trial.suggest_int(name, int(lo), int(hi), log=log)
            return trial.suggest_float(name, float(lo), float(hi), log=log)

        return {
            "learning_rate": pick("learning_rate", float, log=True),
            "unfreeze": int(pick("unfreeze", int, log=True)),
            "warmup_epochs": int(pick("warmup_epochs", int)),
            "dropout": pick("dropout", float),
            "augment": pick("augment", float),
        }


def apply_params(base: TrainConfig, params: dict) -> TrainConfig:
    """The base config with a trial's values; the augmentation strength becomes concrete settings."""
    return dataclasses.replace(
        base,
        learning_rate=float(params["learning_rate"]),
        unfreeze=int(params["unfreeze"]),
        warmup_epochs=int(params["warmup_epochs"]),
        dropout=round(float(params["dropout"]), 4),
        augment=scaled_augment(base.augment, float(params["augment"])),
    )


def scaled_augment(base: AugmentConfig, strength: float) -> AugmentConfig:
    """Augmentation at `strength` times the base; flips stay as the base has them, 0 is none at all."""
    if strength <= 0:
        return AugmentConfig.off()
    if not base.enabled:
        base = AugmentConfig()
    r = lambda v, cap: round(min(v * strength, cap), 4)  # noqa: E731
    return dataclasses.replace(
        base, rotation=r(base.rotation, 180.0), width_shift=r(base.width_shift, 0.9), height_shift=r(base.height_shift, 0.9),
        zoom=r(base.zoom, 0.9), brightness=r(base.brightness, 0.9), contrast=r(base.contrast, 0.9),
    )


@dataclass
class TuneResult:
    """What `tune` returns: the folder, the leaderboard rows (best first) and the best config.

    Each row's `score` is the trial's best value of `monitor`.
    """

    dir: Path
    leaderboard: list[dict]
    best: dict | None
    best_config: TrainConfig | None = None
    trials: int = 0
    monitor: str = "val_accuracy"

    def __repr__(self) -> str:
        best = f"{_score_text(self.monitor, self.best['score'])} (trial {self.best['trial']})" if self.best else "-"
        return f"<TuneResult {str(self.dir)!r} trials={len(self.leaderboard)} best={best}>"


def tune(config: TrainConfig | None = None, *, trials: int = 20, space: SearchSpace | None = None,
         pruner="median", timeout: float | None = None, printer=print, **overrides) -> TuneResult:
    """Search the learning rate, unfrozen layers, warm-up, dropout and augmentation strength.

    `config`/`overrides` are the base settings (as for `train`); `trials` is the total the study
    should reach: a second call with the same settings continues it. `pruner` is "median",
    "none" or any `optuna.pruners.BasePruner`. `timeout` (seconds) stops starting new trials.

    >>> result = tune(model="../shared/models/teachable_machine/water_bottles",
    ...               data="../shared/datasets/cats_vs_dogs", trials=20, epochs=5)  # doctest: +SKIP
    >>> result.best_config.learning_rate                                             # doctest: +SKIP
    """
    base = dataclasses.replace(config or TrainConfig(), **overrides) if overrides else (config or TrainConfig())
    base.validate()
    try:
        import optuna
    except ImportError as exc:
        raise RetreinoError("tune needs Optuna: pip install 'retreino[tune]'") from exc

    if not base.model or not base.data:
        raise RetreinoError("tune needs a model (file, folder or backbone name) and a data folder")
    if trials < 1:
        raise RetreinoError(f"--trials must be at least 1, got {trials}")
    space = space or SearchSpace()
    name = folder_name(base.name or runs.default_name(base))
    tune_dir = Path(base.runs_dir) / f"{name}-tune"
    pruner_name = pruner if isinstance(pruner, str) else type(pruner).__name__
    pruner = _pruner(pruner)  # an unknown name fails here, before anything is written
    settings = {"config": _what(base), "space": space.to_dict(), "seed": base.seed, "pruner": pruner_name}
    check_same_settings(tune_dir / SETTINGS, settings, "search", ("config", "space", "seed"))
    tune_dir.mkdir(parents=True, exist_ok=True)
    write_json(tune_dir / SETTINGS, settings)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    monitor = base.monitor  # the score; a changed monitor is a changed config, refused above
    study = optuna.create_study(
        study_name=STUDY_NAME, storage=f"sqlite:///{(tune_dir / STUDY_DB).resolve()}", direction=direction(monitor),
        sampler=optuna.samplers.TPESampler(seed=base.seed), pruner=pruner, load_if_exists=True,
    )
    _requeue_interrupted(study, printer)
    done = _counted(study)
    left = trials - done
    printer(f"Hyper-parameter search of {base.model} on {base.data}: {trials} trials "
            f"({done} done before, {max(left, 0)} to run), pruner {pruner_name}")
    printer(f"  space: {_describe_space(space)}")
    printer(f"  folder: {tune_dir}")

    countdown = Countdown(trials, "trial")
    with quiet_retracing():  # a new model per trial (_env.quiet_retracing)
        for i in range(max(left, 0)):
            if timeout is not None and countdown.durations and (sum(countdown.durations) + countdown.eta(1)) > timeout:
                printer(f"Stopping: another trial would run past --timeout {duration(timeout)}")
                break
            trial = study.ask()
            params = space.suggest(trial)
            cfg = dataclasses.replace(apply_params(base, params), runs_dir=str(tune_dir), name=f"trial_{trial.number:03d}")
            run_dir = tune_dir / cfg.name
            if run_dir.exists():  # left by an attempt this study no longer knows of
                shutil.rmtree(run_dir)
            trial.set_user_attr("run_dir", str(run_dir))
            index = done + i + 1
            printer(countdown.line(index, trials - index + 1, _describe_params(params)))
            countdown.start()
            outcome = _run_trial(study, trial, cfg, IndentPrinter(printer, skip=("Next:", "Saved in") + (("Data:",) if index > 1 else ())))
            took = countdown.stop()
            if outcome == "interrupted":
                printer(f"Interrupted in {cfg.name}: run the same command again; this trial then runs anew")
                raise KeyboardInterrupt
            trial_row = _row(study.trials[trial.number], _retried(study), monitor)
            head = f"trial {index}/{trials} [{cfg.name}]"
            if outcome == "complete":
                best = _best(study, monitor)
                printer(f"{head} done in {duration(took)}: {monitor} {_score_text(monitor, trial_row['score'])}; "
                        f"best so far {_score_text(monitor, best['score'])} (trial_{best['trial']:03d})")
            elif outcome == "pruned":
                printer(f"{head} pruned after epoch {trial_row['epochs']} ({monitor} {_score_text(monitor, trial_row['score'])})")
            else:
                printer(f"{head} failed: {trial_row.get('error') or study.trials[trial.number].user_attrs.get('error')}")

    return write_outputs(study, base, tune_dir, trials, printer, name=name)


def direction(monitor: str) -> str:
    """The Optuna study direction for a score of `monitor`: "minimize" a loss, "maximize" an accuracy."""
    return "minimize" if monitor_mode(monitor) == "min" else "maximize"


def pruning_callback(trial, monitor: str = "val_accuracy"):
    """A Keras callback that reports each epoch's score to the trial and stops a hopeless trial.

    It runs after retreino's own callbacks, so the epoch is already in the run directory when it
    raises `optuna.TrialPruned`, which ends `train` (and any later phase) at once.
    """
    import keras
    import optuna

    class _Pruning(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            value = (logs or {}).get(monitor)
            if value is None or not math.isfinite(float(value)):
                return
            trial.report(float(value), step=epoch + 1)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch + 1} ({monitor} {float(value):.3f})")

    return _Pruning()


def _run_trial(study, trial, cfg: TrainConfig, printer) -> str:
    import optuna

    from ..training import TrainingError, train

    try:
        run = train(cfg, callbacks=[pruning_callback(trial, cfg.monitor)], printer=printer)
    except optuna.TrialPruned:
        _finish_pruned(Path(trial.user_attrs["run_dir"]))
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return "pruned"
    except (TrainingError, RetreinoError) as exc:
        trial.set_user_attr("error", str(exc))
        if not isinstance(exc, TrainingError) and not _counted(study):
            # Bad model or data on the first trial: every trial would fail the same way. Not counted,
            # so that the search starts afresh once the cause is fixed.
            trial.set_user_attr("uncounted", True)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return "failed"
    except KeyboardInterrupt:
        _mark_interrupted(study, trial)
        return "interrupted"
    if run.interrupted:
        _mark_interrupted(study, trial)
        return "interrupted"
    best_row = _history_at(run.history, run.best_epoch)
    trial.set_user_attr("val_loss", best_row.get("val_loss"))
    trial.set_user_attr("best_epoch", run.best_epoch)
    # Run.best_val_accuracy is the best value of the monitored metric (state.best), whatever it is.
    worst = 0.0 if monitor_mode(cfg.monitor) == "max" else math.inf
    study.tell(trial, float(run.best_val_accuracy if run.best_val_accuracy is not None else worst))
    return "complete"


def _mark_interrupted(study, trial) -> None:
    import optuna

    trial.set_user_attr("interrupted", True)
    trial.set_user_attr("uncounted", True)
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})


def _requeue_interrupted(study, printer) -> None:
    """Trials left RUNNING by a killed process are marked failed and queued again with the same values."""
    import optuna

    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        # Optuna has no public setter for another process's trial: the queued retry's "retry_of"
        # is what marks this one interrupted (see _retried).
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
        printer(f"trial {t.number} was interrupted; it runs again with the same values")


def _counted(study) -> int:
    """Trials that count towards --trials: finished, pruned or failed; not those interrupted (run again)."""
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    retried = _retried(study)
    return sum(1 for t in study.get_trials(deepcopy=False, states=states)
               if not t.user_attrs.get("uncounted") and t.number not in retried)


def _retried(study) -> set[int]:
    """Numbers of the trials that were interrupted and queued again (a retry names them in "retry_of")."""
    return {int(t.user_attrs["retry_of"]) for t in study.get_trials(deepcopy=False) if "retry_of" in t.user_attrs}


def _finish_pruned(run_dir: Path) -> None:
    """A pruned run stopped mid-`train`: still give it its learning curves, and say why it stopped."""
    run = runs.RunDir(run_dir)
    state = run.read_state()
    if state:
        state.pruned = True
        run.write_state(state)
    history = run.read_history()
    if history:
        from ..plots import plot_learning_curves

        plot_learning_curves(history, run_dir / runs.CURVES)


# ------------------------------------------------------------------------------------ outputs

COLUMNS = ["rank", "trial", "state", "score", "val_accuracy", "val_loss", "best_epoch", "epochs", "seconds", *PARAMS, "run_dir"]


def _row(t, retried: set[int] = frozenset(), monitor: str = "val_accuracy") -> dict:
    """A leaderboard row; `score` is the trial's best `monitor` (for the val_ metrics, also in its own column)."""
    run_dir = Path(t.user_attrs.get("run_dir", ""))
    history = runs.RunDir(run_dir).read_history() if t.user_attrs.get("run_dir") else []
    state = t.state.name.lower()
    if t.user_attrs.get("interrupted") or (state == "fail" and t.number in retried):
        state = "interrupted"
    value = t.value if state == "complete" else None  # Optuna gives a pruned trial its last report
    best_epoch = t.user_attrs.get("best_epoch")
    if state != "complete" and history:  # pruned or failed: the best it reached before stopping
        mode = monitor_mode(monitor)
        for r in history:
            v = r.get(monitor)
            if isinstance(v, (int, float)) and is_improvement(v, value, mode):
                value, best_epoch = v, int(r["epoch"])
    at_best = _history_at(history, best_epoch)
    measured = {"val_accuracy": at_best.get("val_accuracy"),
                "val_loss": t.user_attrs.get("val_loss", at_best.get("val_loss"))}
    if monitor in measured:
        measured[monitor] = value
    params = dict(t.params)
    cfg = runs.RunDir(run_dir).settings() if t.user_attrs.get("run_dir") else {}
    for k in PARAMS:  # fixed ranges are not Optuna params: read them from the trial's config
        if k not in params and k in cfg:
            params[k] = cfg[k]
    return {
        "trial": t.number, "state": state, "score": value, **measured, "best_epoch": best_epoch,
        "epochs": len(history), "seconds": round(sum(float(r.get("seconds") or 0) for r in history), 1),
        **{k: params.get(k) for k in PARAMS}, "run_dir": str(run_dir) if t.user_attrs.get("run_dir") else "",
    }


def _sort_key(monitor: str):
    """Best first: finished, then pruned, then the rest; by score in `monitor`'s direction, then the tie-break."""
    maximize = monitor_mode(monitor) == "max"

    def key(r: dict):
        order = {"complete": 0, "pruned": 1}.get(r["state"], 2)
        score = r["score"]
        primary = math.inf if score is None else (-score if maximize else score)
        if maximize:  # equal accuracy: the lower loss
            tie = r["val_loss"] if r["val_loss"] is not None else math.inf
        else:  # equal loss: the higher accuracy
            tie = -r["val_accuracy"] if r["val_accuracy"] is not None else math.inf
        return (order, primary, tie, r["trial"])

    return key


def _best(study, monitor: str = "val_accuracy") -> dict | None:
    rows = sorted((_row(t, monitor=monitor) for t in study.trials if t.state.name == "COMPLETE"), key=_sort_key(monitor))
    return rows[0] if rows else None


def leaderboard(study, monitor: str = "val_accuracy") -> list[dict]:
    """Every trial that ran, best first by `monitor` (the study's score); finished trials ranked 1, 2 ..."""
    retried = _retried(study)
    rows = sorted((_row(t, retried, monitor) for t in study.trials if t.state.name not in ("RUNNING", "WAITING")),
                  key=_sort_key(monitor))
    rank = 0
    for r in rows:
        if r["state"] == "complete":
            rank += 1
            r["rank"] = rank
        else:
            r["rank"] = None
    return rows


def write_outputs(study, base: TrainConfig, tune_dir: Path, trials: int, printer=print, name: str | None = None) -> TuneResult:
    monitor = base.monitor
    rows = leaderboard(study, monitor)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _csv(r.get(k)) for k in COLUMNS})
    write_text(tune_dir / LEADERBOARD, buf.getvalue())

    best = next((r for r in rows if r["state"] == "complete"), None)
    best_cfg = None
    if best is not None:
        # The trial's own config.json, so nothing is re-derived: only where results go is reset.
        record = runs.RunDir(best["run_dir"]).read_config()["config"]
        best_cfg = dataclasses.replace(TrainConfig.from_dict(record), runs_dir=base.runs_dir,
                                       name=f"{name or runs.default_name(base)}-best")
        write_json(tune_dir / BEST_CONFIG, {
            "config": best_cfg.to_dict(),
            "tune": {"trial": best["trial"], "monitor": monitor, "score": best["score"],
                     "val_accuracy": best["val_accuracy"], "val_loss": best["val_loss"],
                     "best_epoch": best["best_epoch"], "params": {k: best[k] for k in PARAMS}, "run_dir": best["run_dir"]},
        })
    if rows:
        try:
            plot_history(rows, tune_dir / HISTORY_PLOT, monitor=monitor)
        except ImportError:
            pass

    printer("")
    printer(format_leaderboard(rows, limit=10, monitor=monitor))
    files = [LEADERBOARD] + ([BEST_CONFIG] if best else []) + ([HISTORY_PLOT] if rows else [])
    printer(f"\nSaved in {tune_dir}: {', '.join(files)}")
    if best is not None:
        printer(f"Best: trial {best['trial']}, {monitor} {_score_text(monitor, best['score'])}. "
                f"Train it on its own with: retreino train --config {tune_dir / BEST_CONFIG}")
    else:
        printer("No trial finished: nothing to recommend yet")
    return TuneResult(tune_dir, rows, best, best_cfg, trials, monitor)


def format_leaderboard(rows: list[dict], limit: int | None = None, monitor: str = "val_accuracy") -> str:
    head = ["rank", "trial", "state", "val_acc", "val_loss", "lr", "unfreeze", "warm-up", "dropout", "augment", "epochs", "time"]
    shown = rows[:limit] if limit else rows
    body = [[r["rank"] or "-", r["trial"], r["state"], _fmt(r["val_accuracy"]), _fmt(r["val_loss"], 4),
             _fmt(r["learning_rate"], "e"), r["unfreeze"], r["warmup_epochs"], _fmt(r["dropout"], 2), _fmt(r["augment"], 2),
             r["epochs"], duration(r["seconds"])] for r in shown]
    align = "rrlrrrrrrrrr"
    if monitor not in ("val_accuracy", "val_loss"):  # a training metric is the score: show it too
        head.insert(3, monitor)
        for r, line in zip(shown, body):
            line.insert(3, _score_text(monitor, r["score"]))
        align += "r"
    text = table(body, headers=head, align=align)
    if limit and len(rows) > limit:
        text += f"\n... {len(rows) - limit} more in {LEADERBOARD}"
    return text


def plot_history(rows: list[dict], out_path: Path, monitor: str = "val_accuracy") -> Path:
    """Left: each trial's score in order with the best so far; right: score against learning rate."""
    import numpy as np

    from ..plots import TRAIN_COLOR, VAL_COLOR, WRONG_COLOR, new_figure, percent_axis, plot_style, save_figure

    maximize = monitor_mode(monitor) == "max"
    rows = sorted((r for r in rows if r["score"] is not None), key=lambda r: r["trial"])
    with plot_style():
        fig = new_figure(11, 4.2)
        ax1, ax2 = fig.subplots(1, 2)
        styles = {"complete": dict(marker="o", color=TRAIN_COLOR, label="complete"),
                  "pruned": dict(marker="x", color=VAL_COLOR, label="pruned (best before stopping)"),
                  "fail": dict(marker="v", color=WRONG_COLOR, label="failed")}
        for state, st in styles.items():
            sel = [r for r in rows if r["state"] == state]
            if sel:
                ax1.scatter([r["trial"] for r in sel], [r["score"] for r in sel], s=36, zorder=3, **st)
                ax2.scatter([r["learning_rate"] for r in sel], [r["score"] for r in sel], s=36, zorder=3, **st)
        done = [r for r in rows if r["state"] == "complete"]
        if done:
            xs = [r["trial"] for r in done]
            best_so_far = list((np.maximum if maximize else np.minimum).accumulate([r["score"] for r in done]))
            if rows[-1]["trial"] > xs[-1]:  # carry the line on past later pruned or failed trials
                xs.append(rows[-1]["trial"])
                best_so_far.append(best_so_far[-1])
            ax1.step(xs, best_so_far, where="post", color="grey", lw=1.5, label="best so far")
        for ax in (ax1, ax2):
            ax.margins(x=0.08, y=0.15)
        ax1.set_title("Trials")
        ax1.set_xlabel("trial")
        ax1.set_ylabel(monitor)
        ax1.xaxis.get_major_locator().set_params(integer=True)
        ax2.set_xscale("log")
        ax2.set_title("Score against learning rate")
        ax2.set_xlabel("learning rate (fine-tuning)")
        if maximize:  # an accuracy: shown in percent
            for ax in (ax1, ax2):
                ax.yaxis.set_major_formatter(percent_axis())
        ax1.legend(loc="best", fontsize=8)
        for r in rows:
            ax2.annotate(str(r["trial"]), (r["learning_rate"], r["score"]), xytext=(5, 3), textcoords="offset points",
                         fontsize=7, color="#555555")
        best = min(done, key=_sort_key(monitor)) if done else None
        title = f"Hyper-parameter search: {len(rows)} trials"
        if best:
            shown = f"{best['score']:.1%}" if maximize else _score_text(monitor, best["score"])
            title += f"  -  best {monitor} {shown} (trial {best['trial']})"
        fig.suptitle(title)
        return save_figure(fig, out_path)


# ------------------------------------------------------------------------------------ helpers

def _pruner(pruner):
    import optuna

    if not isinstance(pruner, str):
        return pruner
    if pruner == "median":
        # Judge from the second epoch on, and only once 3 trials have shown what is normal.
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2)
    if pruner == "none":
        return optuna.pruners.NopPruner()
    raise RetreinoError(f"unknown pruner {pruner!r}: use median or none")


def _history_at(history: list[dict], epoch) -> dict:
    if not epoch:
        return {}
    for r in history:
        if int(r.get("epoch") or 0) == int(epoch):
            return r
    return {}


def _describe_params(p: dict) -> str:
    return (f"lr {p['learning_rate']:.2e}, unfreeze {p['unfreeze']}, warm-up {p['warmup_epochs']}, "
            f"dropout {p['dropout']:.2f}, augment {p['augment']:.2f}")


def _describe_space(s: SearchSpace) -> str:
    def rng(name, fmt):
        lo, hi = getattr(s, name)
        return f"{name} {format(lo, fmt)}" if lo == hi else f"{name} {format(lo, fmt)}..{format(hi, fmt)}"

    return ", ".join([rng("learning_rate", ".0e") + " (log)", rng("unfreeze", "d") + " (log)", rng("warmup_epochs", "d"),
                      rng("dropout", "g"), rng("augment", "g")])


def _score_text(monitor: str, v) -> str:
    """A score as the leaderboard shows it: an accuracy to 3 places, a loss to 4."""
    return _fmt(v, 4 if monitor_mode(monitor) == "min" else 3)


def _fmt(v, spec=3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if spec == "e":
        return f"{v:.1e}"
    return f"{v:.{spec}f}"


def _csv(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def _what(cfg: TrainConfig) -> dict:
    return {k: v for k, v in cfg.to_dict().items() if k not in _WHERE}

