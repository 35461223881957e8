"""Predicting classes for one image or any number of them.

Folders are streamed: paths are decoded by a small thread pool (Pillow releases the GIL while
it decodes and resizes), a bounded number of batches is in flight at once, and each batch goes
through the model as soon as it is ready. Memory stays flat whether a folder holds 50 images or
500,000; an unreadable file becomes a row with an `error`, never a crash.
"""
from __future__ import annotations

import collections
import csv
import glob as _glob
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from . import safety
from .data.images import IMAGE_EXTENSIONS, read_image
from .errors import DataError, RetreinoError
from .inference.exports import DEFAULT_RUNTIME
from .ood import UNKNOWN_LABEL

# --------------------------------------------------------------------------- models and names


def as_loaded(model, **load_kwargs):
    """A LoadedModel from a LoadedModel, a Predictor or anything `load_model` accepts (path, folder, run dir).

    Read once per file: see `retreino.inference.cache`.
    """
    from .inference import load_cached

    return load_cached(model, **load_kwargs)


def as_predictor(model, runtime: str = DEFAULT_RUNTIME, resize_mode: str | None = None, **load_kwargs):
    """A Predictor from a Predictor, LoadedModel, model path or export: `retreino.inference.open_predictor`."""
    from .inference import open_predictor

    return open_predictor(model, runtime=runtime, resize_mode=resize_mode, **load_kwargs)


def parse_names(names: str | Mapping[str, str] | Sequence[str] | None, class_names: Sequence[str]) -> list[str]:
    """Display names for the model's classes.

    `names` is a mapping {class: display}, the CLI form "cats=Gato,dogs=Cachorro", or a list of
    display names in the model's class order ("Gato,Cachorro"). Unmapped classes keep their name.

    >>> parse_names("cats=Gato,dogs=Cachorro", ["cats", "dogs"])
    ['Gato', 'Cachorro']
    >>> parse_names(["Gato", "Cachorro"], ["cats", "dogs"])
    ['Gato', 'Cachorro']
    """
    class_names = list(class_names)
    if not names:
        return class_names
    if isinstance(names, str):
        parts = [p.strip() for p in names.split(",") if p.strip()]
        if all("=" in p for p in parts):
            names = dict(p.split("=", 1) for p in parts)
            names = {k.strip(): v.strip() for k, v in names.items()}
        elif any("=" in p for p in parts):
            raise RetreinoError(f"--names: mix of 'class=name' and plain names in {names!r}; use one form")
        else:
            names = parts
    if isinstance(names, Mapping):
        unknown = sorted(set(names) - set(class_names))
        if unknown:
            raise RetreinoError(
                f"--names: unknown class(es) {', '.join(unknown)}; the model's classes are {', '.join(class_names)}"
            )
        return [names.get(c, c) for c in class_names]
    names = list(names)
    if len(names) != len(class_names):
        raise RetreinoError(f"--names: {len(names)} name(s) given for {len(class_names)} classes ({', '.join(class_names)})")
    return names


# --------------------------------------------------------------------------- one image


@dataclass
class Prediction:
    """The model's answer for one image: the top class, its confidence, the top-k and all probabilities.

    >>> p = predict(RUN, IMAGE, names="cats=Gato,dogs=Cachorro")
    >>> str(p).split()[0] in ("Gato", "Cachorro")  # print(p) shows e.g. "Gato  97.4%"
    True
    """

    class_name: str
    confidence: float
    top: list[tuple[str, float]]
    probabilities: dict[str, float]
    source: str | None = None
    unknown: bool = False  # the unknown detector rejected the image: class_name is "unknown"
    would_say: str | None = None  # the class the model would have answered
    unknown_score: float | None = None  # higher = more like the training images
    unknown_threshold: float | None = None

    @property
    def label(self) -> str:
        return self.class_name

    def __str__(self) -> str:
        names = [n for n, _ in self.top]
        pcts = [f"{p * 100:.1f}%" for _, p in self.top]
        w, pw = max(map(len, names)), max(map(len, pcts))
        lines = "\n".join(f"{n.ljust(w)}  {q.rjust(pw)}" for n, q in zip(names, pcts))
        if self.unknown:
            return (f"unknown (score {self.unknown_score:.4g} < threshold {self.unknown_threshold:.4g}; "
                    f"it would have said {self.would_say})\n{lines}")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.source,
            "predicted": self.class_name,
            "confidence": self.confidence,
            "top": [{"class": n, "probability": p} for n, p in self.top],
            "probabilities": self.probabilities,
            "unknown": self.unknown,
            "would_say": self.would_say,
            "unknown_score": self.unknown_score,
        }


def _top(probs: np.ndarray, names: Sequence[str], k: int) -> list[tuple[str, float]]:
    order = np.argsort(-probs, kind="stable")[: max(1, min(k, len(names)))]
    return [(names[i], float(probs[i])) for i in order]


def predict(model, image, top_k: int = 1, names: str | Mapping[str, str] | Sequence[str] | None = None,
            runtime: str = DEFAULT_RUNTIME, resize_mode: str | None = None, unknown: bool = True) -> Prediction:
    """Classify one image: a path, bytes, a PIL image or uint8 pixels (H, W, 3).

    `model` is a LoadedModel, a Predictor or a path (run directory, .keras, Teachable Machine folder).

    >>> p = predict(RUN, IMAGE, names="cats=Gato,dogs=Cachorro")
    >>> p.class_name in ("Gato", "Cachorro"), str(p).endswith("%")
    (True, True)
    """
    predictor = as_predictor(model, runtime=runtime, resize_mode=resize_mode)
    display = parse_names(names, predictor.class_names)
    pixels = _pixels(image, predictor)
    full = predictor.predict_pixels_full(pixels[None])
    probs = full["probabilities"][0]
    top = _top(probs, display, top_k)
    source = str(image) if isinstance(image, (str, os.PathLike)) else None
    p = Prediction(top[0][0], top[0][1], top, {n: float(p) for n, p in zip(display, probs)}, source)
    if full["unknown_score"] is not None:
        p.unknown_score, p.unknown_threshold = float(full["unknown_score"][0]), predictor.unknown.threshold
        if unknown and p.unknown_score < p.unknown_threshold:
            p.unknown, p.would_say, p.class_name = True, p.class_name, UNKNOWN_LABEL
    return p


def _pixels(image, predictor) -> np.ndarray:
    from .data.images import resize, to_rgb

    if isinstance(image, np.ndarray):
        from PIL import Image

        arr = image
        if arr.dtype != np.uint8:
            arr = np.clip(arr, 0, 255).astype(np.uint8)
        image = Image.fromarray(arr)
    if hasattr(image, "mode") and hasattr(image, "size"):  # a PIL image
        return np.asarray(resize(to_rgb(image), predictor.info.input_size, predictor.resize_mode,
                                 predictor.interpolation), dtype=np.uint8)
    if isinstance(image, (str, os.PathLike)) and not Path(image).is_file():
        raise DataError(f"{image}: no such file")
    return predictor.load_pixels(image)


# --------------------------------------------------------------------------- many images


def find_images(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Image files of a folder (recursive, sorted), a glob pattern, a single file, or a list of those.

    In a folder only files with an image extension count; a glob or an explicit file is taken as
    the user named it, so a broken file there shows up as an error row instead of vanishing.
    """
    if isinstance(source, (list, tuple)):
        return [p for s in source for p in find_images(s)]
    text = str(source)
    path = Path(text)
    if path.is_dir():
        found, special = [], []
        # Regular files only, loop-safe: a FIFO named photo.jpg would block the first read forever.
        for dirpath, filenames in safety.walk_files(path, skipped=special):
            found.extend(Path(dirpath) / f for f in filenames if Path(f).suffix.lower() in IMAGE_EXTENSIONS)
        if special:
            from .console import warn

            warn(f"skipping {len(special)} non-regular file(s) (FIFO, socket, device), never opened: "
                 + ", ".join(special[:5]) + (" ..." if len(special) > 5 else ""))
        if not found:
            raise DataError(f"{text}: no image files found ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        return found
    if path.is_file():
        return [path]
    if _glob.has_magic(text):
        found = sorted(Path(p) for p in _glob.glob(os.path.expanduser(text), recursive=True) if os.path.isfile(p))
        if not found:
            raise DataError(f"{text}: the pattern matches no files")
        return found
    raise DataError(f"{text}: no such file, folder or pattern")


def read_image_or_error(path, size, mode, interpolation="bilinear"):
    """(pixels, None) for a readable image, (None, one line why) for any other: never raises."""
    try:
        return read_image(path, size, mode, interpolation), None
    except DataError as exc:
        return None, str(exc)
    except Exception as exc:  # one bad file must never stop a run over thousands
        return None, f"{path}: {type(exc).__name__}: {exc}"


def iter_decoded_batches(paths: Sequence, size: tuple[int, int], mode: str = "stretch", batch_size: int = 32,
                         workers: int | None = None, prefetch: int = 3, interpolation: str = "bilinear",
                         progress: str | None = None) -> Iterator[tuple[list, np.ndarray, list[int], list[str | None]]]:
    """Yield (paths, pixels of the readable ones, their positions in the batch, per-path error or None).

    At most `prefetch` batches are decoded ahead of the consumer, so memory is bounded by
    (prefetch + 1) * batch_size images at the model's input size. `progress` names a bar
    ("predicting", "evaluating" ...) that counts images as the consumer finishes each batch.
    """
    bar = None
    if progress:
        from .console import progress as progress_bar

        bar = progress_bar(total=len(paths), desc=progress, unit="img")
    try:
        for batch in _decoded_batches(paths, size, mode, batch_size, workers, prefetch, interpolation):
            yield batch
            if bar is not None:
                bar.update(len(batch[0]))
    finally:
        if bar is not None:
            bar.close()


def _decoded_batches(paths, size, mode, batch_size, workers, prefetch, interpolation):
    workers = workers or min(8, max(2, os.cpu_count() or 2))
    chunks = (list(paths[i : i + batch_size]) for i in range(0, len(paths), batch_size))
    pending: collections.deque = collections.deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="retreino-decode") as pool:
        def submit(chunk):
            pending.append((chunk, [pool.submit(read_image_or_error, p, size, mode, interpolation) for p in chunk]))

        try:
            for chunk in chunks:
                submit(chunk)
                if len(pending) > prefetch:
                    break
            while pending:
                chunk, futures = pending.popleft()
                nxt = next(chunks, None)
                if nxt is not None:
                    submit(nxt)
                results = [f.result() for f in futures]
                ok = [i for i, (px, _) in enumerate(results) if px is not None]
                pixels = np.stack([results[i][0] for i in ok]) if ok else np.zeros((0, *size, 3), np.uint8)
                yield chunk, pixels, ok, [err for _, err in results]
        finally:
            # Stopped early (Ctrl-C, an error downstream): drop the decodes nobody will read.
            for _, futures in pending:
                for f in futures:
                    f.cancel()


def true_class_from_path(path: Path, class_names: Sequence[str], display: Sequence[str]) -> str | None:
    """The true class when a parent folder is named after one (`.../cats/x.jpg`), else None."""
    lookup = {}
    for raw, shown in zip(class_names, display):
        lookup[raw.lower()] = shown
        lookup[shown.lower()] = shown
    for parent in (path.parent, path.parent.parent):
        hit = lookup.get(parent.name.lower())
        if hit is not None:
            return hit
    return None


def iter_predict_folder(model, folder_or_glob, batch_size: int = 32, top_k: int = 1,
                        names: str | Mapping[str, str] | Sequence[str] | None = None,
                        runtime: str = DEFAULT_RUNTIME, resize_mode: str | None = None, workers: int | None = None,
                        progress: bool = True, paths: Sequence[Path] | None = None,
                        unknown: bool = True) -> Iterator[dict[str, Any]]:
    """Stream one row per image (see `predict_folder`), in file order, as batches complete."""
    predictor = as_predictor(model, runtime=runtime, resize_mode=resize_mode)
    display = parse_names(names, predictor.class_names)
    files = list(paths) if paths is not None else find_images(folder_or_glob)
    for chunk, pixels, ok, errors in iter_decoded_batches(files, predictor.info.input_size,
                                                         resize_mode or predictor.resize_mode, batch_size, workers,
                                                         interpolation=predictor.interpolation,
                                                         progress="predicting" if progress else None):
        full = predictor.predict_pixels_full(pixels) if len(ok) else None
        probs = full["probabilities"] if full else np.zeros((0, len(display)), np.float32)
        scores = full["unknown_score"] if full else None
        by_pos = dict(zip(ok, probs))
        score_at = dict(zip(ok, scores)) if scores is not None else {}
        for i, path in enumerate(chunk):
            row = _row(Path(path), by_pos.get(i), errors[i], predictor.class_names, display, top_k)
            if i in score_at:
                _mark_unknown(row, float(score_at[i]), predictor.unknown.threshold, unknown)
            yield row


def _row(path: Path, probs, error, class_names, display, top_k) -> dict[str, Any]:
    row: dict[str, Any] = {"path": str(path), "true": true_class_from_path(path, class_names, display)}
    if probs is None:
        row.update(predicted=None, confidence=None, correct=None, top=[], probabilities={n: None for n in display},
                   error=error or "unreadable")
        return row
    top = _top(probs, display, top_k)
    row.update(predicted=top[0][0], confidence=top[0][1],
               correct=None if row["true"] is None else row["true"] == top[0][0],
               top=top, probabilities={n: float(p) for n, p in zip(display, probs)}, error=None)
    return row


def _mark_unknown(row: dict[str, Any], score: float, threshold: float, enabled: bool) -> None:
    """Record the unknown score; below the threshold (and enabled) the answer becomes `unknown`."""
    row.update(unknown_score=score, unknown=False, would_say=None)
    if enabled and score < threshold:
        row.update(unknown=True, would_say=row["predicted"], predicted=UNKNOWN_LABEL,
                   correct=None if row["true"] is None else False)


class RowWriter:
    """Writes prediction rows as CSV or JSON lines, one at a time, atomically on close.

    CSV columns: path, true, predicted, confidence, prob_<class>..., [top_k], error.
    """

    def __init__(self, out: str | os.PathLike, class_names: Sequence[str], top_k: int = 1, fmt: str | None = None):
        from .atomic import atomic_path

        self.out = Path(out)
        self.fmt = fmt or ("jsonl" if self.out.suffix.lower() in (".jsonl", ".json", ".ndjson") else "csv")
        if self.fmt not in ("csv", "jsonl"):
            raise RetreinoError(f"unknown output format {self.fmt!r}: use csv or jsonl")
        self.class_names = list(class_names)
        self.top_k = top_k
        safety.remove_dead_temps(self.out)  # what a killed predict left behind
        self._ctx = atomic_path(self.out)
        self._tmp = self._ctx.__enter__()
        self._fh = open(self._tmp, "w", newline="", encoding="utf-8")
        safety.hold(self._fh)
        self.count = 0
        if self.fmt == "csv":
            self.columns = ["path", "true", "predicted", "confidence"] + [f"prob_{c}" for c in self.class_names]
            if top_k > 1:
                self.columns.append("top_k")
            self.columns.append("error")
            self._csv = csv.writer(self._fh)
            self._csv.writerow(self.columns)

    def write(self, row: Mapping[str, Any]) -> None:
        self.count += 1
        if self.fmt == "jsonl":
            rec = {"path": row["path"], "true": row.get("true"), "predicted": row.get("predicted"),
                   "confidence": _round(row.get("confidence")),
                   "probabilities": {k: _round(v) for k, v in row.get("probabilities", {}).items()},
                   "error": row.get("error")}
            if row.get("unknown_score") is not None:
                rec.update(unknown=row["unknown"], would_say=row["would_say"], unknown_score=_round(row["unknown_score"]))
            if self.top_k > 1:
                rec["top"] = [{"class": n, "probability": _round(p)} for n, p in row.get("top", [])]
            self._fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            return
        probs = row.get("probabilities", {})
        values = [row["path"], row.get("true") or "", row.get("predicted") or "", _fmt_prob(row.get("confidence"))]
        values += [_fmt_prob(probs.get(c)) for c in self.class_names]
        if self.top_k > 1:
            values.append("; ".join(f"{n} {p:.4f}" for n, p in row.get("top", [])))
        values.append(row.get("error") or "")
        self._csv.writerow(values)

    def close(self, ok: bool = True) -> None:
        self._fh.close()
        if ok:
            self._ctx.__exit__(None, None, None)
        else:
            self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(ok=exc_type is None)
        return False


def _round(v):
    return None if v is None else float(f"{float(v):.9g}")


def _fmt_prob(v) -> str:
    # Significant digits, not decimals: a 3e-9 probability must survive for log-loss to be recomputable.
    return "" if v is None else f"{float(v):.9g}"


def predict_folder(model, folder_or_glob, out: str | os.PathLike | None = None, batch_size: int = 32,
                   grid: str | os.PathLike | None = None, top_k: int = 1,
                   names: str | Mapping[str, str] | Sequence[str] | None = None,
                   runtime: str = DEFAULT_RUNTIME, resize_mode: str | None = None, workers: int | None = None,
                   fmt: str | None = None, progress: bool = True, keep_rows: bool = True, grid_size: int = 36,
                   on_row: Callable[[dict[str, Any]], None] | None = None,
                   summary: "RowSummary | None" = None, paths: Sequence[Path] | None = None,
                   unknown: bool = True) -> list[dict[str, Any]]:
    """Predict every image of a folder (recursive) or glob, in batches, with bounded memory.

    Each row holds `path`, `true` (from the parent folder's name when it is a class, else None),
    `predicted`, `confidence`, `correct`, `top` (k pairs), `probabilities` and `error` (None, or why
    the file could not be read). With `out` the rows are streamed to CSV (or JSON lines for
    .jsonl); with `grid` a thumbnail sheet of the first `grid_size` images is drawn.
    `keep_rows=False` returns no rows (for folders too big to hold even their rows); `on_row` is
    called with each row as it is ready (what `retreino predict` prints), and `summary` (a
    `RowSummary`) counts them, in constant memory.

    >>> rows = predict_folder(RUN, DATA / "test", out=RUNS / "preds.csv", grid=RUNS / "grid.png")
    >>> len(rows), rows[0]["true"], (RUNS / "grid.png").is_file()
    (8, 'cats', True)
    """
    predictor = as_predictor(model, runtime=runtime, resize_mode=resize_mode)
    display = parse_names(names, predictor.class_names)
    files = list(paths) if paths is not None else find_images(folder_or_glob)
    rows: list[dict[str, Any]] = []
    shown: list[dict[str, Any]] = []
    grid_at = spread(len(files), grid_size) if grid else set()
    writer = RowWriter(out, display, top_k, fmt) if out else None
    try:
        for i, row in enumerate(iter_predict_folder(predictor, None, batch_size, top_k, names, runtime, resize_mode,
                                                    workers, progress, paths=files, unknown=unknown)):
            if writer:
                writer.write(row)
            if on_row is not None:
                on_row(row)
            if summary is not None:
                summary.add(row)
            if keep_rows:
                rows.append(row)
            if i in grid_at:
                shown.append(row)
    except BaseException:
        if writer:
            writer.close(ok=False)
        raise
    if writer:
        writer.close()
    if grid:
        show_predictions(shown, grid, max_images=grid_size, total=len(files))
    return rows


def spread(n: int, k: int) -> set[int]:
    """k indices spread evenly over n, so a grid samples the whole folder, not its first sub-folder."""
    if n <= k:
        return set(range(n))
    return {round(i * (n - 1) / (k - 1)) for i in range(k)} if k > 1 else {0}


class RowSummary:
    """Running counts over prediction rows (constant memory): per predicted class, unreadable, accuracy.

    >>> s = RowSummary.of([{"predicted": "cats", "correct": True}, {"predicted": "dogs", "correct": False}])
    >>> s.line()
    '2 image(s): cats 1, dogs 1; accuracy 50.0% on the 2 in a class folder'
    """

    def __init__(self):
        self.images = self.unreadable = self.known = self.correct = 0
        self.predicted: collections.Counter = collections.Counter()

    @classmethod
    def of(cls, rows: Iterable[Mapping[str, Any]]) -> "RowSummary":
        summary = cls()
        for row in rows:
            summary.add(row)
        return summary

    def add(self, row: Mapping[str, Any]) -> None:
        self.images += 1
        if row.get("error"):
            self.unreadable += 1
        if row.get("predicted"):
            self.predicted[row["predicted"]] += 1
        if row.get("correct") is not None:
            self.known += 1
            self.correct += bool(row["correct"])

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.known if self.known else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "unreadable": self.unreadable,
            "predicted": dict(sorted(self.predicted.items())),
            "with_known_class": self.known,
            "accuracy": self.accuracy,
        }

    def line(self) -> str:
        text = f"{self.images} image(s): " + ", ".join(f"{k} {v}" for k, v in sorted(self.predicted.items()))
        if self.unreadable:
            text += f", unreadable {self.unreadable}"
        if self.known:
            text += f"; accuracy {self.accuracy:.1%} on the {self.known} in a class folder"
        return text


def summarize_rows(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts per predicted class, errors, and accuracy where the true class is known."""
    return RowSummary.of(rows).as_dict()


def show_predictions(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike | None = None, max_images: int = 36,
                     title: str | None = None, total: int | None = None):
    """A thumbnail grid labelled with prediction and confidence; green/red when the true class is known.

    Returns the Figure (shown inline in a notebook); also saved as PNG when `path` is given.

    >>> fig = show_predictions(predict_folder(RUN, DATA / "test"), RUNS / "shown.png")
    >>> (RUNS / "shown.png").is_file()
    True
    """
    from .plots import RIGHT_COLOR, WRONG_COLOR, image_grid_figure, save_figure, thumbnail

    rows = list(rows)
    total = total or len(rows)
    if len(rows) > max_images:
        rows = [rows[i] for i in sorted(spread(len(rows), max_images))]
    items = []
    for r in rows:
        name = Path(r["path"]).name
        name = name if len(name) <= 22 else name[:10] + "..." + name[-9:]
        if r.get("error"):
            items.append({"image": None, "caption": f"{name}\nunreadable", "color": WRONG_COLOR})
            continue
        caption = f"{r['predicted']}  {r['confidence'] * 100:.1f}%\n{name}"
        color, frame = "#222222", False
        if r.get("correct") is not None:
            color, frame = (RIGHT_COLOR, True) if r["correct"] else (WRONG_COLOR, True)
            if not r["correct"]:
                caption = f"{r['predicted']}  {r['confidence'] * 100:.1f}%\n(true: {r['true']}) {name}"
        items.append({"image": thumbnail(r["path"]), "caption": caption, "color": color, "frame": frame})
    if title is None:
        known = [r for r in rows if r.get("correct") is not None]
        title = f"Predictions ({len(rows)} images" if total <= len(rows) else f"Predictions ({len(rows)} of {total:,} images"
        if known:
            title += f"; {sum(bool(r['correct']) for r in known)}/{len(known)} shown are correct"
        title += ")"
    fig = image_grid_figure(items, title=title)
    if path is not None:
        save_figure(fig, path)
    return fig
