"""Which of my images carry the wrong label? Out-of-fold probabilities, then confident learning.

Every labelled image of a dataset (train, validation and test: a wrong test label misstates the
accuracy as surely as a wrong training label caps it) goes once through the model's frozen
feature extractor. A small linear head (scikit-learn's LogisticRegression on the pooled
features) is fitted k times, each time without one fold, and predicts the fold it did not see:
every image gets class probabilities from a head that never saw its label. That takes seconds,
where k fine-tunes would take hours. cleanlab's `find_label_issues` (confident learning,
Northcutt et al., JAIR 2021) then compares those probabilities with the given labels, estimates
how many labels of each class are wrong, and names the images it is most sure about.

Nothing here moves or renames a user's file: `write_fix_plan` writes a CSV of moves (or of new
labels, for a labels CSV) that the user reads and applies.
"""
from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import DataError, RetreinoError
from .scan import Problem

DEFAULT_FOLDS = 5
KIND = "suspect_label"


@dataclass
class LabelIssue:
    """One image whose given label the out-of-fold head disputes."""

    path: str
    split: str
    given: str
    likely: str
    confidence: float  # out-of-fold probability of `likely`
    given_probability: float  # out-of-fold probability of the label it has
    rank: int  # 1 = the most certain suspect

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class LabelIssues:
    """The suspects of a dataset, most certain first, and the probabilities behind them."""

    issues: list[LabelIssue]
    class_names: list[str]
    paths: list[str]
    splits: list[str]
    labels: np.ndarray  # given labels, indices into class_names
    pred_probs: np.ndarray  # out-of-fold probabilities, (N, classes)
    folds: int
    root: str = ""

    def __len__(self) -> int:
        return len(self.issues)

    @property
    def oof_accuracy(self) -> float:
        """Accuracy of the out-of-fold head against the given labels (wrong labels included)."""
        return float(np.mean(self.pred_probs.argmax(axis=1) == self.labels)) if len(self.labels) else 0.0

    def rel(self, path: str) -> str:
        try:
            return os.path.relpath(path, self.root) if self.root else path
        except ValueError:
            return path

    def problems(self) -> list[Problem]:
        """One `suspect label` warning per suspect, for check-data's report."""
        return [Problem(KIND, i.path, f"labelled {i.given}, looks like {i.likely} ({i.confidence:.0%}; "
                                      f"{i.given} {i.given_probability:.0%})") for i in self.issues]

    def summary(self) -> str:
        n = len(self.labels)
        return (f"{len(self.issues)} suspect label(s) among {n:,} images ({len(self.issues) / max(n, 1):.1%}); "
                f"out-of-fold accuracy of a linear head on the model's features: {self.oof_accuracy:.1%} "
                f"({self.folds} folds)")

    def write_csv(self, path: str | os.PathLike) -> Path:
        """`label_issues.csv`: rank, file, split, given label, likely label, confidences."""
        from ..atomic import atomic_path

        path = Path(path)
        with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["rank", "path", "split", "given", "likely", "confidence", "given_probability"])
            for i in self.issues:
                w.writerow([i.rank, self.rel(i.path), i.split, i.given, i.likely, f"{i.confidence:.4f}",
                            f"{i.given_probability:.4f}"])
        return path

    def plot(self, path: str | os.PathLike | None = None, n: int = 24):
        """A thumbnail grid of the `n` most certain suspects, captioned given -> likely."""
        from ..plots import WRONG_COLOR, image_grid_figure, save_figure, thumbnail

        items = []
        for i in self.issues[:n]:
            name = Path(i.path).name
            name = name if len(name) <= 22 else name[:10] + "..." + name[-9:]
            items.append({"image": thumbnail(i.path), "frame": True, "color": WRONG_COLOR,
                          "caption": f"given: {i.given}\nlikely: {i.likely} {i.confidence:.0%}\n{name}"})
        title = (f"Suspect labels: {len(items)} of {len(self.issues)} (most certain first)" if self.issues
                 else f"No suspect labels among {len(self.labels):,} images")
        fig = image_grid_figure(items, title=title, cols=min(6, max(1, len(items))))
        if path is not None:
            save_figure(fig, path)
        return fig


# --------------------------------------------------------------------------- features


def _model_key(loaded, resize_mode: str) -> str:
    """Identifies the feature extractor for the cache: model file (path, size, mtime) and input handling."""
    src = Path(str(loaded.info.source))
    stamp = ""
    if src.exists():
        files = [src] if src.is_file() else sorted(p for p in src.iterdir() if p.is_file())
        stamp = ";".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
    where = src.resolve() if src.exists() else src
    text = f"{where}|{stamp}|{loaded.info.preprocessing}|{loaded.info.input_size}|{resize_mode}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _file_key(path: str) -> str:
    st = os.stat(path)
    return f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}"


def pooled_features(loaded, paths: Sequence[str], *, resize_mode: str = "stretch", batch_size: int = 32,
                    cache_dir: str | os.PathLike | None = None, progress: bool = True) -> np.ndarray:
    """The model's frozen, pooled features of each image, (N, D) float32.

    With `cache_dir`, features are kept in `<cache_dir>/features-<model key>.npz`, keyed by each
    file's path, size and modification time: a second check of the same folder decodes nothing.
    An unreadable file raises DataError (check-data drops those before calling this).
    """
    from ..models.surgery import feature_extractor
    from ..prediction import iter_decoded_batches
    from ..preprocessing import scale_pixels_np

    keys = [_file_key(p) for p in paths]
    cache: dict[str, np.ndarray] = {}
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"features-{_model_key(loaded, resize_mode)}.npz"
        if cache_file.is_file():
            with np.load(cache_file, allow_pickle=False) as z:
                cache = dict(zip(z["keys"].tolist(), z["features"]))
    todo = [i for i, k in enumerate(keys) if k not in cache]
    if todo:
        extractor = feature_extractor(loaded.model)
        pos = 0
        for chunk, pixels, ok, errors in iter_decoded_batches([paths[i] for i in todo], loaded.info.input_size,
                                                             resize_mode, batch_size,
                                                             progress="features" if progress else None):
            bad = [e for e in errors if e]
            if bad:
                raise DataError(bad[0])
            x = scale_pixels_np(pixels, loaded.info.preprocessing)
            out = np.asarray(extractor(x, training=False), dtype=np.float32).reshape(len(chunk), -1)
            for j, f in enumerate(out):
                cache[keys[todo[pos + j]]] = f
            pos += len(chunk)
        if cache_file is not None:
            from ..atomic import atomic_path

            cache_file.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(cache_file) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, keys=np.array(list(cache)), features=np.stack(list(cache.values())))
    return np.stack([cache[k] for k in keys]).astype(np.float32)


# --------------------------------------------------------------------------- out-of-fold probabilities


def out_of_fold_probabilities(features: np.ndarray, labels: np.ndarray, folds: int = DEFAULT_FOLDS,
                              seed: int = 42, C: float = 0.01) -> np.ndarray:
    """Each image's class probabilities from a linear head fitted on the other folds (stratified, seeded).

    The head is scikit-learn's LogisticRegression on standardised features: on a MobileNetV2's
    1,280 pooled features it fits in well under a second per fold.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    labels = np.asarray(labels, dtype=np.int64)
    smallest = int(np.bincount(labels).min()) if len(labels) else 0
    if smallest < 2:
        raise DataError("every class needs at least 2 images to find label issues")
    k = max(2, min(folds, smallest))
    head = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
    cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return cross_val_predict(head, features, labels, cv=cv, method="predict_proba")


def rank_label_issues(labels: np.ndarray, pred_probs: np.ndarray) -> np.ndarray:
    """Indices of the likely wrong labels, most certain first: cleanlab's confident learning."""
    from cleanlab.filter import find_label_issues

    return np.asarray(find_label_issues(labels=np.asarray(labels, dtype=np.int64), pred_probs=pred_probs, n_jobs=1,
                                        return_indices_ranked_by="self_confidence"), dtype=np.int64)


# --------------------------------------------------------------------------- the whole job


def find_label_issues(dataset, model, *, folds: int = DEFAULT_FOLDS, seed: int = 42, resize_mode: str = "stretch",
                      cache_dir: str | os.PathLike | None = None, progress: bool = True,
                      printer: Callable[[str], None] | None = None) -> LabelIssues:
    """Suspect labels of a dataset (a `Dataset`, or a folder `load_dataset` reads) under a model's features.

    `model` is a LoadedModel or anything `load_model` accepts; only its feature extractor is used,
    so a Teachable Machine export trained on other classes works as well as a run's own model.

    >>> issues = find_label_issues(DATA, MODEL)             # doctest: +SKIP
    >>> issues.issues[0].given, issues.issues[0].likely     # doctest: +SKIP
    ('cats', 'dogs')
    """
    from ..prediction import as_loaded
    from .sources import load_dataset

    if isinstance(dataset, (str, os.PathLike)):
        dataset = load_dataset(dataset, warn=False)
    loaded = as_loaded(model)
    if loaded.model is None:
        raise RetreinoError("finding label issues needs a Keras model (its features), not an export alone")
    parts = [s for s in dataset.splits() if len(s)]
    paths = [p for s in parts for p in s.paths]
    splits = [s.name for s in parts for _ in s.paths]
    labels = np.concatenate([s.labels for s in parts]).astype(np.int64) if parts else np.zeros(0, np.int64)
    if len(paths) < 2 * len(dataset.class_names):
        raise DataError(f"too few images ({len(paths)}) to find label issues")
    if printer:
        printer(f"label issues: features of {len(paths):,} images from {Path(str(loaded.info.source)).name}, "
                f"then {folds}-fold out-of-fold probabilities and confident learning (cleanlab)")
    features = pooled_features(loaded, paths, resize_mode=resize_mode, cache_dir=cache_dir, progress=progress)
    pred_probs = out_of_fold_probabilities(features, labels, folds=folds, seed=seed)
    ranked = rank_label_issues(labels, pred_probs)
    names = list(dataset.class_names)
    issues = []
    for rank, i in enumerate(ranked, start=1):
        likely = int(np.argmax(pred_probs[i]))
        if likely == labels[i]:  # cleanlab may flag an image whose best guess is its own label; no move to offer
            continue
        issues.append(LabelIssue(path=paths[i], split=splits[i], given=names[labels[i]], likely=names[likely],
                                 confidence=float(pred_probs[i, likely]),
                                 given_probability=float(pred_probs[i, labels[i]]), rank=len(issues) + 1))
    return LabelIssues(issues, names, paths, splits, labels, pred_probs, folds, root=dataset.root)


def write_fix_plan(issues: LabelIssues, dataset, path: str | os.PathLike) -> Path:
    """A relabel plan the user applies: one row per suspect.

    Folder layouts get `move,SOURCE,DESTINATION` rows (the same split, the likely class's folder);
    a labels CSV gets `relabel,FILENAME,NEW_LABEL` rows (the CSV's own filename column). Nothing is
    moved here.
    """
    from ..atomic import atomic_path

    path = Path(path)
    csv_layout = getattr(dataset, "source", "") == "csv"
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["action", "source", "destination", "given", "likely", "confidence"])
        for i in issues.issues:
            src = Path(i.path)
            if csv_layout:
                w.writerow(["relabel", src.name, i.likely, i.given, i.likely, f"{i.confidence:.4f}"])
                continue
            if src.parent.name != i.given:
                raise RetreinoError(f"{src}: not inside a folder named {i.given!r}; cannot plan a move")
            w.writerow(["move", str(src), str(src.parent.parent / i.likely / src.name), i.given, i.likely,
                        f"{i.confidence:.4f}"])
    return path
