"""Measuring a model on labelled images: metrics, classification report, plots, predictions.csv.

`evaluate(model, data)` scores any model on a folder; `evaluate(run="runs/x")` rebuilds a run's
seeded test split from its config.json and writes everything into the run directory, then
refreshes its report.html. Probabilities come from the same Predictor as `retreino predict`, so
an evaluation measures exactly what users will get.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .config import DEFAULT_SEED, DEFAULT_TEST_SPLIT, DEFAULT_VAL_SPLIT
from .errors import DataError, RetreinoError
from .inference.exports import DEFAULT_RUNTIME

EPS = 1e-7
FILES = ("metrics.json", "classification_report.txt", "classification_report.json", "predictions.csv",
         "confusion_matrix.png", "predictions_scatter.png", "misclassified.png")


# --------------------------------------------------------------------------- metrics


def compute_metrics(y_true: Sequence[int], probs: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, cross-entropy loss, per-class precision/recall/F1/support, confusion matrix,
    top-k accuracy (more than 2 classes) and ROC-AUC (2 classes), from true labels and probabilities.

    >>> m = compute_metrics([0, 1, 1], np.array([[.9, .1], [.2, .8], [.6, .4]]), ["cats", "dogs"])
    >>> round(m["accuracy"], 3), m["confusion_matrix"]
    (0.667, [[1, 0], [1, 1]])
    """
    from sklearn.metrics import classification_report, confusion_matrix, roc_auc_score, top_k_accuracy_score

    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    names = list(class_names)
    labels = list(range(len(names)))
    pred = p.argmax(axis=1) if len(p) else np.zeros(0, np.int64)
    metrics: dict[str, Any] = {"n": int(len(y)), "class_names": names}
    if len(y) == 0:
        raise DataError("no readable labelled images to evaluate")
    metrics["accuracy"] = float(np.mean(pred == y))
    metrics["loss"] = float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], EPS, 1.0))))
    report = classification_report(y, pred, labels=labels, target_names=names, output_dict=True, zero_division=0)
    metrics["per_class"] = {n: _clean(report[n]) for n in names}
    metrics["per_class_avg"] = {k: _clean(report[k]) for k in ("macro avg", "weighted avg") if k in report}
    metrics["confusion_matrix"] = confusion_matrix(y, pred, labels=labels).tolist()
    if len(names) > 2:
        metrics["top_k_accuracy"] = {
            str(k): float(top_k_accuracy_score(y, p, k=k, labels=labels)) for k in (2, 3, 5) if k < len(names)
        }
    if len(names) == 2:
        # Undefined with one class present: say so instead of crashing or inventing a number.
        metrics["roc_auc"] = float(roc_auc_score(y, p[:, 1])) if len(set(y.tolist())) == 2 else None
    return metrics


def _clean(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (int(v) if k == "support" else float(v)) for k, v in d.items()}


def format_classification_report(y_true, probs, class_names) -> str:
    from sklearn.metrics import classification_report

    pred = np.asarray(probs).argmax(axis=1)
    return classification_report(np.asarray(y_true), pred, labels=list(range(len(class_names))),
                                 target_names=list(class_names), digits=4, zero_division=0)


# --------------------------------------------------------------------------- result


@dataclass
class EvaluationResult:
    """What `evaluate` measured, with the per-image predictions behind it.

    >>> r = evaluate(RUN / "fine_tuned_model.keras", DATA / "test")
    >>> 0.0 <= r.metrics["accuracy"] <= 1.0, "precision" in r.classification_report
    (True, True)
    >>> fig = r.plot_confusion_matrix()
    """

    metrics: dict[str, Any]
    classification_report: str
    class_names: list[str]
    paths: list[str]
    y_true: np.ndarray
    probs: np.ndarray
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, why) of unreadable images
    out: Path | None = None

    @property
    def y_pred(self) -> np.ndarray:
        return self.probs.argmax(axis=1)

    @property
    def confidence(self) -> np.ndarray:
        return self.probs.max(axis=1)

    @property
    def accuracy(self) -> float:
        return float(self.metrics["accuracy"])

    @property
    def confusion_matrix(self) -> np.ndarray:
        return np.asarray(self.metrics["confusion_matrix"])

    def plot_confusion_matrix(self, path: str | os.PathLike | None = None):
        """Heatmap with counts and row percentages; saved to `path` (or the output folder) too."""
        from .plots import confusion_matrix_figure

        fig = confusion_matrix_figure(self.confusion_matrix, self.class_names)
        return self._save(fig, path, "confusion_matrix.png")

    def plot_scatter(self, path: str | os.PathLike | None = None):
        """True vs predicted class per image, jittered; errors in red."""
        from .plots import scatter_figure

        fig = scatter_figure(self.y_true, self.y_pred, self.class_names, self.confidence)
        return self._save(fig, path, "predictions_scatter.png")

    def misclassified(self, n: int | None = None) -> list[int]:
        """Indices of the wrong predictions, the most confident first."""
        wrong = np.flatnonzero(self.y_pred != self.y_true)
        order = wrong[np.argsort(-self.confidence[wrong], kind="stable")]
        return order[:n].tolist() if n else order.tolist()

    def plot_misclassified(self, path: str | os.PathLike | None = None, n: int = 16):
        """A grid of the `n` most confident errors: true class, predicted class, confidence."""
        from .plots import WRONG_COLOR, image_grid_figure, thumbnail

        items = []
        for i in self.misclassified(n):
            name = Path(self.paths[i]).name
            name = name if len(name) <= 22 else name[:10] + "..." + name[-9:]
            items.append({
                "image": thumbnail(self.paths[i]),
                "caption": f"true: {self.class_names[self.y_true[i]]}\n"
                           f"pred: {self.class_names[self.y_pred[i]]} {self.confidence[i] * 100:.1f}%\n{name}",
                "color": WRONG_COLOR, "frame": True,
            })
        wrong = int((self.y_pred != self.y_true).sum())
        title = (f"Most confident errors ({len(items)} of {wrong} misclassified)" if wrong
                 else f"No misclassified images ({len(self.y_true)} correct)")
        fig = image_grid_figure(items, title=title, cols=min(4, max(1, len(items))))
        return self._save(fig, path, "misclassified.png")

    def _save(self, fig, path, default_name):
        from .plots import save_figure

        target = Path(path) if path is not None else (self.out / default_name if self.out else None)
        if target is not None:
            save_figure(fig, target)
        return fig

    def prediction_rows(self) -> list[dict[str, Any]]:
        rows = []
        for i, path in enumerate(self.paths):
            rows.append({
                "path": path, "true": self.class_names[self.y_true[i]], "predicted": self.class_names[self.y_pred[i]],
                "confidence": float(self.confidence[i]),
                "probabilities": {c: float(p) for c, p in zip(self.class_names, self.probs[i])}, "error": None,
            })
        for path, why in self.errors:
            rows.append({"path": path, "true": None, "predicted": None, "confidence": None,
                         "probabilities": {}, "error": why})
        return rows

    def save(self, out: str | os.PathLike) -> Path:
        """Write metrics.json, the classification report (text and JSON), predictions.csv and the plots."""
        from .atomic import write_json, write_text
        from .prediction import RowWriter

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self.out = out
        write_json(out / "metrics.json", self.metrics)
        write_text(out / "classification_report.txt", self.classification_report)
        write_json(out / "classification_report.json",
                   {**self.metrics["per_class"], **self.metrics["per_class_avg"], "accuracy": self.metrics["accuracy"]})
        with RowWriter(out / "predictions.csv", self.class_names) as w:
            for row in self.prediction_rows():
                w.write(row)
        self.plot_confusion_matrix()
        self.plot_scatter()
        self.plot_misclassified()
        if self.metrics.get("calibration"):
            from .calibration import reliability_figure

            self._save(reliability_figure(self.metrics["calibration"]), None, "reliability.png")
        return out

    def summary(self) -> str:
        """Metrics and the classification report as terminal text."""
        m = self.metrics
        lines = [f"accuracy  {m['accuracy']:.4f}   loss  {m['loss']:.4f}   images  {m['n']}"]
        if m.get("roc_auc") is not None:
            lines[0] += f"   ROC-AUC  {m['roc_auc']:.4f}"
        for k, v in (m.get("top_k_accuracy") or {}).items():
            lines[0] += f"   top-{k}  {v:.4f}"
        if self.errors:
            lines.append(f"skipped {len(self.errors)} unreadable image(s)")
        if m.get("calibration"):
            lines.append(calibration_line(m["calibration"]))
        if m.get("ood"):
            lines.append(ood_line(m["ood"]))
        return "\n".join(lines) + "\n\n" + self.classification_report

    def _repr_html_(self) -> str:
        """The headline metrics and per-class table when a notebook cell shows the result."""
        import html

        m = self.metrics
        head = [("images", f"{m['n']:,}"), ("accuracy", f"{m['accuracy']:.2%}"), ("loss", f"{m['loss']:.4f}")]
        if m.get("roc_auc") is not None:
            head.append(("ROC-AUC", f"{m['roc_auc']:.4f}"))
        head += [(f"top-{k} accuracy", f"{v:.2%}") for k, v in (m.get("top_k_accuracy") or {}).items()]
        rows = "".join(
            f"<tr><td>{html.escape(c)}</td><td>{v['precision']:.3f}</td><td>{v['recall']:.3f}</td>"
            f"<td>{v['f1-score']:.3f}</td><td>{v['support']}</td></tr>"
            for c, v in {**m["per_class"], **m["per_class_avg"]}.items()
        )
        return ("<div><b>EvaluationResult</b> " + ", ".join(f"{k} <b>{v}</b>" for k, v in head)
                + "<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>"
                + rows + "</table></div>")

    def __repr__(self) -> str:
        return (f"<EvaluationResult {self.metrics['n']} images, accuracy {self.metrics['accuracy']:.4f}, "
                f"loss {self.metrics['loss']:.4f}, classes={self.class_names}>")


def calibration_line(cal: dict) -> str:
    """One terminal line: the model's temperature and what it does to the expected calibration error."""
    t = cal.get("temperature")
    what = f"T {t:.3f}" if t is not None else "T 1 (none fitted)"
    return (f"calibration  {what}   ECE {cal['ece_before']:.4f} -> {cal['ece_after']:.4f}   "
            f"NLL {cal['nll_before']:.4f} -> {cal['nll_after']:.4f}")


def ood_line(ood: dict) -> str:
    """One terminal line for `--ood`: the detector's AUROC, the share of the other images answered unknown,
    and what it costs on the evaluated images (share rejected, accuracy on those kept); MSP for comparison."""
    row = ood["methods"][ood["method"]]
    kept = "n/a" if row["accuracy_kept"] is None else f"{row['accuracy_kept']:.1%}"
    line = (f"unknown ({ood['method']})  AUROC {row['auroc']:.4f}   {row['ood_rejected']:.1%} of {ood['n_ood']} "
            f"other images rejected   {row['in_rejected']:.1%} of the evaluated images rejected, "
            f"accuracy on the rest {kept}")
    msp = ood["methods"].get("msp (baseline)")
    if msp:
        line += f"   (max-probability baseline: AUROC {msp['auroc']:.4f}, {msp['ood_rejected']:.1%} rejected)"
    return line


# --------------------------------------------------------------------------- data


@dataclass
class LabelledImages:
    paths: list[str]
    labels: np.ndarray  # indices into class_names
    class_names: list[str]
    description: str
    split: str  # the split actually used: train | validation | test | all


def labelled_images(data: str | os.PathLike, split: str = "auto", labels_csv: str | os.PathLike | None = None,
                    val_split: float = DEFAULT_VAL_SPLIT, test_split: float = DEFAULT_TEST_SPLIT,
                    seed: int = DEFAULT_SEED) -> LabelledImages:
    """The images to evaluate on and their labels.

    `split="auto"`: a dataset with a test/ folder gives its test split; a folder of class
    sub-folders (or a labels CSV) gives all of its images. "train"/"validation"/"test" pick that
    split (carved with `val_split`, `test_split`, `seed` exactly as training did); "all" takes everything.
    """
    from .data import load_dataset

    root = Path(data).expanduser()
    if not root.exists():
        raise DataError(f"{data}: no such folder")
    has_splits = root.is_dir() and any(
        d.is_dir() and d.name.lower() in ("train", "training", "validation", "val", "valid", "test", "testing")
        for d in root.iterdir()
    )
    if split == "auto":
        split = "test" if has_splits else "all"
    if split == "all" and not has_splits:
        ds = load_dataset(root, val_split=0.0, test_split=0.0, seed=seed, labels_csv=labels_csv, allow_fatal=True)
        parts = [ds.train]
    elif split == "all":
        ds = load_dataset(root, val_split=val_split, test_split=test_split, seed=seed, labels_csv=labels_csv,
                          allow_fatal=True)
        parts = ds.splits()
    else:
        if split not in ("train", "validation", "test"):
            raise RetreinoError(f"unknown split {split!r}: use auto, all, train, validation or test")
        ds = load_dataset(root, val_split=val_split, test_split=test_split, seed=seed, labels_csv=labels_csv,
                          allow_fatal=True)
        parts = [getattr(ds, split)]
    parts = [p for p in parts if p is not None and len(p)]
    if not parts:
        raise DataError(f"{data}: no readable images in the {split} split")
    paths = [p for s in parts for p in s.paths]
    labels = np.concatenate([s.labels for s in parts]).astype(np.int64)
    what = "all images" if split == "all" else f"{split} split"
    return LabelledImages(paths, labels, list(ds.class_names), f"{what} of {root}", split)


def map_classes(data_classes: Sequence[str], model_classes: Sequence[str],
                names: Mapping[str, str] | None = None) -> list[int]:
    """For each dataset class, the index of the model output it corresponds to.

    Names are matched exactly, then case-insensitively; `names` maps a dataset class (a folder
    name) to a model class when they differ ({"cats": "Gato"}).
    """
    model_classes = list(model_classes)
    names = dict(names or {})
    exact = {c: i for i, c in enumerate(model_classes)}
    lower = {c.lower(): i for i, c in enumerate(model_classes)}
    out, missing = [], []
    for c in data_classes:
        target = names.get(c, c)
        i = exact.get(target, lower.get(target.lower()))
        if i is None:
            missing.append(c)
        out.append(i)
    if missing:
        raise RetreinoError(
            f"the data's class(es) {', '.join(missing)} are not classes of the model ({', '.join(model_classes)}); "
            f"map them with --names, e.g. --names {missing[0]}={model_classes[0]}"
        )
    return out


# --------------------------------------------------------------------------- evaluate


def _read_run_config(run: Path) -> dict:
    from .runs import RunDir

    return RunDir(run).require_config()


def evaluate(model_or_path=None, data: str | os.PathLike | None = None, *, run: str | os.PathLike | None = None,
             out: str | os.PathLike | None = None, split: str = "auto", labels_csv: str | os.PathLike | None = None,
             names: str | Mapping[str, str] | None = None, batch_size: int = 32, runtime: str = DEFAULT_RUNTIME,
             resize_mode: str | None = None, workers: int | None = None, progress: bool = True,
             report: bool = True, ood: str | os.PathLike | None = None) -> EvaluationResult:
    """Score a model on labelled images; write the metrics, report and plots when there is somewhere to.

    - `evaluate(model, "data/")`: a folder of class sub-folders (all its images), or a dataset with
      a test/ folder (its test split). Files go to `out` when given.
    - `evaluate(run="runs/cats")`: the run's best model on the run's own test split, rebuilt from
      config.json (seeded, so identical); files go into the run directory and report.html is rewritten.

    `names` maps dataset class names to the model's ("cats=Gato,dogs=Cachorro") when they differ.

    >>> r = evaluate(run=RUN)                               # the run's best model on its test split
    >>> r.metrics["n"], sorted(r.metrics["per_class"])
    (8, ['cats', 'dogs'])
    >>> r = evaluate(RUN / "fine_tuned_model.keras", DATA / "test", out=RUNS / "eval")
    >>> sorted(p.name for p in (RUNS / "eval").glob("*.png"))
    ['confusion_matrix.png', 'misclassified.png', 'predictions_scatter.png', 'reliability.png']
    """
    from .inference import open_predictor
    from .prediction import iter_decoded_batches

    run_dir = Path(run) if run is not None else None
    cfg_settings: dict = {}
    if run_dir is not None:
        if not run_dir.is_dir():
            raise RetreinoError(f"no such run directory: {run_dir}")
        cfg_settings = _read_run_config(run_dir).get("config", {})
        if model_or_path is None:
            model_or_path = run_dir
        if data is None:
            data = cfg_settings.get("data")
            if not data:
                raise RetreinoError(f"{run_dir}/config.json names no data folder; pass --data")
            if split == "auto":
                split = "test"
        if labels_csv is None:
            labels_csv = cfg_settings.get("labels_csv")
        if resize_mode is None:
            resize_mode = cfg_settings.get("resize")
        if out is None:
            out = run_dir
    if model_or_path is None:
        raise RetreinoError("nothing to evaluate: give a model (or run=...)")
    if data is None:
        raise RetreinoError("no data to evaluate on: pass a folder of labelled images (--data)")

    predictor = open_predictor(model_or_path, runtime=runtime, resize_mode=resize_mode)
    model_classes = predictor.class_names
    images = labelled_images(data, split, labels_csv,
                             val_split=float(cfg_settings.get("val_split", DEFAULT_VAL_SPLIT)),
                             test_split=float(cfg_settings.get("test_split", DEFAULT_TEST_SPLIT)),
                             seed=int(cfg_settings.get("seed", DEFAULT_SEED)))
    if isinstance(names, str):
        pairs = [p for p in names.split(",") if p.strip()]
        if not all("=" in p for p in pairs):
            raise RetreinoError("--names for evaluate maps data classes to model classes: folder=model_class,...")
        names = {k.strip(): v.strip() for k, v in (p.split("=", 1) for p in pairs)}
    index = map_classes(images.class_names, model_classes, names)
    y_all = np.asarray([index[label] for label in images.labels], dtype=np.int64)

    kept_paths: list[str] = []
    kept_y: list[int] = []
    probs: list[np.ndarray] = []
    raw_probs: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    errors: list[tuple[str, str]] = []
    pos = 0
    for chunk, pixels, ok, errs in iter_decoded_batches(images.paths, predictor.info.input_size,
                                                        resize_mode or predictor.resize_mode, batch_size, workers,
                                                        interpolation=predictor.interpolation,
                                                        progress="evaluating" if progress else None):
        if ok:
            full = predictor.predict_pixels_full(pixels)
            probs.append(full["probabilities"])
            raw_probs.append(full["raw"])
            if full["unknown_score"] is not None:
                scores.append(full["unknown_score"])
        for i, path in enumerate(chunk):
            if errs[i] is None:
                kept_paths.append(str(path))
                kept_y.append(int(y_all[pos + i]))
            else:
                errors.append((str(path), errs[i]))
        pos += len(chunk)
    if errors:
        from .console import warn

        warn(f"skipped {len(errors)} unreadable image(s): {', '.join(p for p, _ in errors[:5])}"
             + (" ..." if len(errors) > 5 else ""))
    P = np.concatenate(probs) if probs else np.zeros((0, len(model_classes)), np.float32)
    y = np.asarray(kept_y, dtype=np.int64)
    metrics = compute_metrics(y, P, model_classes)
    metrics.update({
        "split": images.split,
        "data": images.description,
        "model": str(predictor.info.source),
        "runtime": predictor.runtime,
        "errors": len(errors),
    })
    if len(y):
        from .calibration import calibration_metrics

        metrics["calibration"] = calibration_metrics(np.concatenate(raw_probs), y, predictor.info.temperature)
    if ood is not None:
        from .ood import measure_ood

        metrics["ood"] = measure_ood(predictor, ood, np.concatenate(scores) if scores else None, P, y,
                                     batch_size=batch_size, workers=workers)
    result = EvaluationResult(
        metrics=metrics,
        classification_report=format_classification_report(y, P, model_classes),
        class_names=list(model_classes),
        paths=kept_paths,
        y_true=y,
        probs=P,
        errors=errors,
    )
    if out is not None:
        result.save(out)
        if report:
            from .report import write_report

            write_report(out)
    return result
