"""Stratified k-fold cross-validation: one full fine-tune per fold, a summary with mean and std.

The pool is train + validation of the dataset as `retreino train` would split it; the test
split is never looked at. Each fold is materialised as a folder of links,

    runs/<name>-cv/
      plan.json                 folds, seed, settings and which image went to which fold
      data/fold_1/{train,validation}/<class>/   links to the original images
      fold_1/                   an ordinary run directory (config.json, history.csv, model ...)
      fold_1/fold_metrics.json  the best model measured on its held-out fold
      ...
      cv_summary.json, cv_table.txt, cv_boxplot.png

so every fold trains through the same `train()` as a normal run and `retreino train --config
runs/<name>-cv/fold_1/config.json` reproduces it. Running the same command again skips finished
folds and resumes an interrupted one from its last epoch.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import shutil
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import runs
from .._env import quiet_retracing
from ..atomic import write_json, write_text
from ..config import TrainConfig
from ..console import table
from ..errors import RetreinoError
from .common import Countdown, IndentPrinter, check_same_settings, duration, folder_name

PLAN = "plan.json"
SUMMARY = "cv_summary.json"
TABLE = "cv_table.txt"
BOXPLOT = "cv_boxplot.png"
FOLD_METRICS = "fold_metrics.json"
# Measured on each fold's held-out images with the fold's best model; aggregated as mean and std.
METRICS = ("accuracy", "macro_f1", "loss", "roc_auc")
# Settings that name where things go rather than what is trained: they may differ on a resume.
_WHERE = ("runs_dir", "name", "cache_budget_mb")
# train's closing lines, which would repeat on every fold; the summary says where everything is.
_REPEATED = ("Next:", "Saved in")


@dataclass
class CVResult:
    """What `cross_validate` returns; `summary` is the content of cv_summary.json."""

    dir: Path
    summary: dict
    folds: list[dict] = field(default_factory=list)

    @property
    def mean(self) -> dict:
        return self.summary["mean"]

    @property
    def std(self) -> dict:
        return self.summary["std"]

    def __repr__(self) -> str:
        m, s = self.mean.get("accuracy"), self.std.get("accuracy")
        acc = f"{m:.3f} +/- {s:.3f}" if m is not None and s is not None else "-"
        return f"<CVResult {str(self.dir)!r} folds={len(self.folds)} accuracy={acc}>"


def cross_validate(config: TrainConfig | None = None, *, folds: int = 5, printer=print, **overrides) -> CVResult:
    """Stratified k-fold cross-validation of a training recipe; writes `runs/<name>-cv/`.

    `config` and `overrides` are what `train` takes (model, data, epochs, seed ...); the seed
    fixes both the fold assignment and each fold's training.

    >>> cv = cross_validate(model="../shared/models/teachable_machine/water_bottles",
    ...                     data="../shared/datasets/cats_vs_dogs", folds=5, epochs=3)  # doctest: +SKIP
    >>> cv.mean["accuracy"], cv.std["accuracy"]                                          # doctest: +SKIP
    """
    cfg = dataclasses.replace(config or TrainConfig(), **overrides) if overrides else (config or TrainConfig())
    cfg.validate()
    from ..data import load_dataset

    if not cfg.model or not cfg.data:
        raise RetreinoError("cv needs a model (file, folder or backbone name) and a data folder")
    if folds < 2:
        raise RetreinoError(f"cross-validation needs at least 2 folds, got {folds}")

    ds = load_dataset(cfg.data, val_split=cfg.val_split, test_split=cfg.test_split, seed=cfg.seed,
                      labels_csv=cfg.labels_csv, strict=cfg.strict)
    classes = list(ds.class_names)
    for c in classes:
        if c in (".", "..") or Path(c).name != c:
            raise RetreinoError(f"class name {c!r} cannot be a folder name; rename it in the labels CSV")
    paths = [p for s in (ds.train, ds.validation) if s is not None for p in s.paths]
    labels = np.concatenate([s.labels for s in (ds.train, ds.validation) if s is not None])
    counts = np.bincount(labels, minlength=len(classes))
    if counts.min() < folds:
        small = classes[int(counts.argmin())]
        raise RetreinoError(
            f"class {small!r} has only {int(counts.min())} image(s) in train + validation; {folds} folds need at "
            f"least {folds} per class: use --folds {max(2, int(counts.min()))} or add images"
        )
    assignment = fold_assignment(labels, folds, cfg.seed)

    name = folder_name(cfg.name or runs.default_name(cfg))
    cv_dir = Path(cfg.runs_dir) / f"{name}-cv"
    plan = {
        "folds": folds,
        "seed": cfg.seed,
        "config": _what(cfg),
        "pool": {"images": len(paths), "fingerprint": _fingerprint(paths, labels, ds.root), "per_class": dict(zip(classes, counts.tolist()))},
        "class_names": classes,
        "test_images_untouched": len(ds.test) if ds.test is not None else 0,
        "assignment": {os.path.relpath(p, ds.root): int(k) + 1 for p, k in zip(paths, assignment)},
    }
    check_same_settings(cv_dir / PLAN, plan, "cross-validation", ("folds", "seed", "config", "pool"))
    cv_dir.mkdir(parents=True, exist_ok=True)
    write_json(cv_dir / PLAN, plan)

    printer(f"{folds}-fold stratified cross-validation of {cfg.model} on {cfg.data}")
    printer(f"  pool (train + validation): {len(paths)} images ({', '.join(f'{n} {c}' for c, n in zip(classes, counts))}); "
            f"test split untouched ({plan['test_images_untouched']} images)")
    printer(f"  folder: {cv_dir}")

    countdown = Countdown(folds, "fold")
    results: list[dict] = []
    with quiet_retracing():  # a new model per fold (_env.quiet_retracing)
        for k in range(1, folds + 1):
            fold_run = cv_dir / f"fold_{k}"
            if _finished(fold_run) and (fold_run / FOLD_METRICS).exists():
                record = runs.RunDir(fold_run).read_json(FOLD_METRICS)
                results.append(record)
                printer(f"fold {k}/{folds}: already finished (accuracy {record['accuracy']:.3f}); skipped")
                continue
            held = assignment == k - 1
            train_paths = [p for p, h in zip(paths, held) if not h]
            val_paths = [p for p, h in zip(paths, held) if h]
            printer(countdown.line(k, folds - k + 1, f"train {len(train_paths)} / validate {len(val_paths)} images"))
            countdown.start()
            run = _train_fold(cfg, cv_dir, k, train_paths, labels[~held], val_paths, labels[held], classes,
                              IndentPrinter(printer, skip=_REPEATED + (("Data:",) if k > 1 else ())))
            if run.interrupted:
                printer(f"Interrupted in fold {k}: run the same command again to continue from its last epoch")
                raise KeyboardInterrupt
            record = _measure_fold(run, k, len(train_paths), val_paths, labels[held], classes)
            took = countdown.stop()
            write_json(fold_run / FOLD_METRICS, record)
            results.append(record)
            printer(f"fold {k}/{folds} done in {duration(took)}: accuracy {record['accuracy']:.3f}, "
                    f"macro F1 {record['macro_f1']:.3f}, loss {record['loss']:.4f} (best epoch {record['best_epoch']})")

    summary = summarise(results, cfg, folds, classes, plan)
    write_json(cv_dir / SUMMARY, summary)
    text = format_table(summary)
    write_text(cv_dir / TABLE, text + "\n")
    plot_boxplot(summary, cv_dir / BOXPLOT)
    printer("")
    printer(text)
    printer(f"\nSaved in {cv_dir}: {SUMMARY}, {TABLE}, {BOXPLOT}, fold_1 ... fold_{folds}")
    return CVResult(cv_dir, summary, results)


def fold_assignment(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """The held-out fold (0-based) of every image: StratifiedKFold, shuffled with the seed."""
    from sklearn.model_selection import StratifiedKFold

    out = np.full(len(labels), -1, dtype=np.int64)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (_, held_out) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
        out[held_out] = k
    return out


def _train_fold(cfg, cv_dir: Path, k: int, train_paths, train_labels, val_paths, val_labels, classes, printer):
    from ..training import train

    fold_run = cv_dir / f"fold_{k}"
    if _finished(fold_run):  # trained, but killed before it was measured
        printer(f"{fold_run.name}: training finished earlier; measuring its best model")
        return train(resume=fold_run, printer=lambda *_: None)
    if (fold_run / runs.STATE).exists():
        return train(resume=fold_run, printer=printer)
    if fold_run.exists():  # killed before its first state.json: nothing worth keeping
        shutil.rmtree(fold_run)
    data = cv_dir / "data" / f"fold_{k}"
    _materialise(data, {"train": (train_paths, train_labels), "validation": (val_paths, val_labels)}, classes)
    # test_split=0: the fold's folders hold no test/ and nothing must be carved out of train/.
    fold_cfg = dataclasses.replace(cfg, data=str(data), labels_csv=None, test_split=0.0,
                                   runs_dir=str(cv_dir), name=f"fold_{k}")
    return train(fold_cfg, printer=printer)


def _materialise(root: Path, splits: dict, classes: list[str]) -> None:
    """`root/<split>/<class>/` of links to the images (copies where links are not allowed).

    Link names carry a running number: two source folders may hold files with the same name.
    """
    if root.exists():
        shutil.rmtree(root)
    for split, (paths, labels) in splits.items():
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
        for i, (path, label) in enumerate(zip(paths, labels)):
            src = Path(path).resolve()
            dst = root / split / classes[int(label)] / f"{i:05d}_{src.name}"
            # Hard links, not symlinks: a fold folder's files must lie inside it (see retreino.safety).
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)


def _finished(run_dir: Path) -> bool:
    state = runs.RunDir(run_dir).read_state() if run_dir.is_dir() else None
    return bool(state and state.finished)


def _measure_fold(run, k: int, n_train: int, val_paths, val_labels, classes) -> dict:
    """The fold's best model (as saved, what a user would keep) scored on its held-out images."""
    from ..evaluation import compute_metrics
    from ..inference import open_predictor

    predictor = open_predictor(run.best_model, runtime="keras", resize_mode=run.config.resize)
    probs = predictor.predict_images(val_paths)
    m = compute_metrics(val_labels, probs, classes)
    history = run.history or runs.RunDir(run.dir).read_history()
    return {
        "fold": k,
        "train_images": n_train,
        "validation_images": len(val_paths),
        "accuracy": m["accuracy"],
        "macro_f1": m["per_class_avg"]["macro avg"]["f1-score"],
        "loss": m["loss"],
        "roc_auc": m.get("roc_auc"),
        "best_epoch": run.best_epoch,
        "epochs": len(history),
        # Training time from history.csv (the same on a resume); model loading and saving not included.
        "seconds": round(sum(float(r.get("seconds") or 0) for r in history), 1),
        "run_dir": str(run.dir),
    }


def summarise(results: list[dict], cfg: TrainConfig, folds: int, classes: list[str], plan: dict) -> dict:
    """cv_summary.json: every fold's metrics, then their mean and sample standard deviation (n-1)."""
    mean, std = {}, {}
    for key in METRICS:
        values = [r[key] for r in results if r.get(key) is not None and math.isfinite(r[key])]
        if len(values) != len(results):  # e.g. ROC-AUC undefined on a fold: no half-filled aggregate
            continue
        mean[key] = statistics.fmean(values)
        std[key] = statistics.stdev(values) if len(values) > 1 else 0.0
    return {
        "folds": folds,
        "seed": cfg.seed,
        "model": str(cfg.model),
        "data": str(cfg.data),
        "class_names": classes,
        "pool": plan["pool"],
        "test_images_untouched": plan["test_images_untouched"],
        "std_ddof": 1,
        "per_fold": results,
        "mean": mean,
        "std": std,
        "config": cfg.to_dict(),
    }


def format_table(summary: dict) -> str:
    keys = [k for k in METRICS if k in summary["mean"]]
    head = ["fold", "train", "val"] + keys + ["best epoch", "epochs", "time"]
    rows = []
    for r in summary["per_fold"]:
        rows.append([r["fold"], r.get("train_images") or "", r["validation_images"]]
                    + [f"{r[k]:.4f}" for k in keys] + [r.get("best_epoch") or "", r["epochs"], duration(r.get("seconds"))])
    rows.append(["mean", "", ""] + [f"{summary['mean'][k]:.4f}" for k in keys] + ["", "", ""])
    rows.append(["std (n-1)", "", ""] + [f"{summary['std'][k]:.4f}" for k in keys] + ["", "", ""])
    text = table(rows, headers=head, align="lrr" + "r" * len(keys) + "rrr").split("\n")
    rule = text[1]
    return "\n".join(text[:-2] + [rule] + text[-2:])


def plot_boxplot(summary: dict, out_path: Path) -> Path:
    """One panel per metric: the folds' spread as a box, each fold a labelled point, the mean a diamond."""
    from ..plots import TRAIN_COLOR, VAL_COLOR, new_figure, plot_style, save_figure

    keys = [k for k in METRICS if k in summary["mean"]]
    titles = {"accuracy": "Accuracy", "macro_f1": "Macro F1", "loss": "Loss (lower is better)", "roc_auc": "ROC-AUC"}
    rng = np.random.default_rng(0)
    with plot_style():
        fig = new_figure(3.0 * len(keys) + 0.6, 4.4)
        axes = np.atleast_1d(fig.subplots(1, len(keys)))
        for ax, key in zip(axes, keys):
            values = np.array([r[key] for r in summary["per_fold"]], dtype=float)
            ax.boxplot(values, widths=0.45, showfliers=False, patch_artist=True,
                       boxprops=dict(facecolor="#DCEAF5", edgecolor=TRAIN_COLOR),
                       medianprops=dict(color=TRAIN_COLOR, lw=2), whiskerprops=dict(color=TRAIN_COLOR),
                       capprops=dict(color=TRAIN_COLOR))
            x = 1 + rng.uniform(-0.12, 0.12, len(values))
            ax.scatter(x, values, s=28, color=VAL_COLOR, zorder=3, label="fold")
            for xi, v, r in zip(x, values, summary["per_fold"]):
                ax.annotate(str(r["fold"]), (xi, v), xytext=(6, 0), textcoords="offset points", va="center", fontsize=8, color="#555555")
            m, s = summary["mean"][key], summary["std"][key]
            ax.scatter([1], [m], marker="D", s=46, color="black", zorder=4, label="mean")
            ax.set_title(titles.get(key, key))
            ax.set_xticks([1], [f"mean {m:.3f} \u00b1 {s:.3f}"])
            ax.grid(axis="x", visible=False)
            lo, hi = float(values.min()), float(values.max())
            pad = max(0.02, (hi - lo) * 0.25)
            if key != "loss":
                ax.set_ylim(max(0.0, lo - pad), min(1.0, hi + pad) + 0.005)
        axes[0].legend(loc="lower left", fontsize=8)
        fig.suptitle(f"{summary['folds']}-fold cross-validation ({summary['pool']['images']} images, seed {summary['seed']})")
        return save_figure(fig, out_path)


def _what(cfg: TrainConfig) -> dict:
    return {k: v for k, v in cfg.to_dict().items() if k not in _WHERE}


def _fingerprint(paths, labels, root) -> str:
    h = hashlib.sha256()
    for p, y in sorted(zip((os.path.relpath(p, root) for p in paths), labels.tolist())):
        h.update(f"{p}\t{y}\n".encode())
    return h.hexdigest()[:16]

