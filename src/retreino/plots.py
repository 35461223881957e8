"""Figures for training and evaluation: learning curves, confusion matrix, predictions, image grids.

Every function builds a `matplotlib.figure.Figure` directly (no pyplot), so nothing here changes
the process-wide backend or leaks figures: scripts and servers render with Agg, and a notebook
displays the returned Figure inline. When `out_path` is given the figure is also saved (PNG,
atomically, 130 dpi).
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import threading
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

DPI = 130
# Colour-blind-safe pair (Okabe-Ito) for train vs validation, and for right vs wrong.
TRAIN_COLOR = "#0072B2"
VAL_COLOR = "#D55E00"
RIGHT_COLOR = "#009E73"
WRONG_COLOR = "#D62728"
WARMUP_COLOR = "#F0E442"

STYLE = {
    "font.size": 10,
    "axes.titlesize": 12,
    "axes.titleweight": "bold",
    "axes.labelsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.frameon": False,
    "figure.titlesize": 13,
    "figure.titleweight": "bold",
}


# DejaVu Sans (matplotlib's own) has no CJK, Thai, Devanagari...: class names in those scripts would be drawn as
# boxes. matplotlib draws each glyph with the first font of `font.family` that has it, so the house style lists
# after DejaVu Sans whichever of these wide-coverage fonts the machine has.
FALLBACK_FONTS = (
    "Noto Sans CJK JP", "Noto Sans CJK KR", "Noto Sans CJK SC", "Noto Sans CJK TC", "Noto Sans JP", "Noto Sans KR",
    "Noto Sans SC", "Noto Sans", "Noto Sans Thai", "Noto Sans Devanagari", "Noto Sans Arabic", "Noto Sans Hebrew",
    "NanumGothic", "UnDotum", "Droid Sans Fallback", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "Source Han Sans",
    "Arial Unicode MS", "Malgun Gothic", "Microsoft YaHei", "Yu Gothic", "Meiryo", "Leelawadee UI", "Nirmala UI", "Segoe UI",
    "Apple SD Gothic Neo", "Hiragino Sans", "PingFang SC", "Arial",
)
_families: list[str] | None = None
_glyphs_reported: set[str] = set()
_rescanned = False
_rescan_lock = threading.Lock()  # the server draws figures from worker threads: one rescan, not two
_MISSING_GLYPH = re.compile(r"Glyph (\d+) .*missing from font")


def font_families() -> list[str]:
    """`font.family` of the house style: DejaVu Sans, then the installed `FALLBACK_FONTS` (looked up once)."""
    global _families
    if _families is None:
        from matplotlib import font_manager

        installed = {f.name for f in font_manager.fontManager.ttflist}
        _families = ["DejaVu Sans"] + [name for name in FALLBACK_FONTS if name in installed]
    return _families


def _missing_glyphs(fig, target) -> tuple[list[str], list]:
    """Render; return the characters no font had (matplotlib warns once per character) and the other warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig.savefig(target, format="png", dpi=DPI, facecolor="white")
    missing, others = [], []
    for w in caught:
        match = _MISSING_GLYPH.search(str(w.message))
        if match is None:
            others.append(w)
        elif chr(int(match.group(1))) not in missing:
            missing.append(chr(int(match.group(1))))
    return missing, others


def _add_fonts_installed_since_the_cache() -> bool:
    """matplotlib's font list is a cache from its first run: a font installed later is unknown to it until rescanned."""
    global _families
    from matplotlib import font_manager

    known = {f.fname for f in font_manager.fontManager.ttflist}
    for path in font_manager.findSystemFonts():
        if path not in known:
            with contextlib.suppress(Exception):  # a broken font file is not ours to report
                font_manager.fontManager.addfont(path)
    before, _families = _families, None
    return font_families() != before


@contextlib.contextmanager
def _log_level(logger, level: int):
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


def _render_png(fig, target) -> None:
    """savefig in the house style; characters no font draws are said once per process, in one line."""
    global _rescanned
    # matplotlib logs "findfont: Failed to find font weight bold for X" when a fallback font has no bold face: it
    # then uses the nearest weight, which is what we want, so the line is noise to a user.
    font_log = logging.getLogger("matplotlib.font_manager")
    with _style(), _log_level(font_log, logging.ERROR):
        missing, others = _missing_glyphs(fig, target)
        with _rescan_lock:
            rescan = bool(missing) and not _rescanned
            _rescanned = _rescanned or rescan
        if rescan:
            if _add_fonts_installed_since_the_cache():
                from matplotlib.text import Text

                for text in fig.findobj(Text):
                    text.set_fontfamily(font_families())
                if hasattr(target, "seek"):
                    target.seek(0)
                    target.truncate()
                missing, others = _missing_glyphs(fig, target)
    for w in others:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    new = [c for c in missing if c not in _glyphs_reported]
    if new:
        from .console import warn

        _glyphs_reported.update(new)
        shown = " ".join(new[:12]) + (" ..." if len(new) > 12 else "")
        warn(f"no installed font can draw {shown} (in names on the plots), so the PNGs show boxes there; "
             "install a font that has them (for CJK: Noto Sans CJK, Debian/Ubuntu package fonts-noto-cjk)")


_FIGURE_CLASS = None


def _figure(width: float, height: float):
    global _FIGURE_CLASS
    if _FIGURE_CLASS is None:
        from matplotlib.figure import Figure

        class RetreinoFigure(Figure):
            """A Figure that shows itself in Jupyter even when pyplot (and its inline hook) was never imported."""

            def _repr_png_(self) -> bytes:
                import io

                buf = io.BytesIO()
                _render_png(self, buf)
                return buf.getvalue()

        _FIGURE_CLASS = RetreinoFigure
    return _FIGURE_CLASS(figsize=(width, height), dpi=DPI, layout="constrained")


def save_figure(fig, out_path: str | os.PathLike) -> Path:
    """Save a Figure as PNG atomically (a crash never leaves half an image)."""
    from .atomic import atomic_path

    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        _render_png(fig, tmp)
    return out_path


def _style():
    import matplotlib

    return matplotlib.rc_context({**STYLE, "font.family": font_families()})


# --------------------------------------------------------------------------- learning curves

def read_history(history: Sequence[Mapping[str, Any]] | str | os.PathLike) -> list[dict[str, Any]]:
    """History rows (as in history.csv) from a list of dicts or a CSV path; numbers parsed, blanks -> None."""
    if isinstance(history, (str, os.PathLike)):
        from .runs import read_csv_rows

        raw = read_csv_rows(history)
    else:
        raw = [dict(r) for r in history]
    rows = []
    for r in raw:
        row: dict[str, Any] = {}
        for k, v in r.items():
            if k == "phase" or v is None:
                row[k] = v
                continue
            try:
                f = float(v)
                row[k] = None if math.isnan(f) else f
            except (TypeError, ValueError):
                row[k] = None if v == "" else v
        rows.append(row)
    return rows


def _series(rows: list[dict], key: str) -> np.ndarray:
    return np.array([np.nan if r.get(key) is None else float(r[key]) for r in rows], dtype=float)


def plot_learning_curves(history: Sequence[Mapping[str, Any]] | str | os.PathLike, out_path: str | os.PathLike | None = None):
    """Accuracy and loss per epoch, train vs validation, warm-up epochs shaded; the best epoch marked.

    `history` is a list of rows or the path of a `history.csv` (columns epoch, phase, loss,
    accuracy, val_loss, val_accuracy, lr, seconds). Returns `out_path` when given (the PNG is
    written there), else the Figure.

    >>> plot_learning_curves(RUN / "history.csv", RUNS / "curves.png").name
    'curves.png'
    """
    rows = read_history(history)
    fig = learning_curves_figure(rows)
    if out_path is None:
        return fig
    return save_figure(fig, out_path)


def learning_curves_figure(rows: list[dict]):
    """The Figure behind `plot_learning_curves` (for notebooks)."""
    with _style():
        fig = _figure(11, 4.2)
        axes = fig.subplots(1, 2)
        if not rows:
            for ax in axes:
                ax.text(0.5, 0.5, "no epochs recorded", ha="center", va="center", transform=ax.transAxes, color="grey")
            fig.suptitle("Learning curves")
            return fig
        # Epoch numbers may restart per phase (warm-up, then fine-tuning): plot a running count.
        x = np.arange(1, len(rows) + 1)
        phases = [str(r.get("phase") or "") for r in rows]
        warm = [i for i, p in enumerate(phases) if p.lower() == "warmup"]
        best = None
        val_acc = _series(rows, "val_accuracy")
        if np.isfinite(val_acc).any():
            best = int(np.nanargmax(val_acc))
        for ax, metric, title in ((axes[0], "accuracy", "Accuracy"), (axes[1], "loss", "Loss")):
            if warm:
                ax.axvspan(min(warm) + 0.5, max(warm) + 1.5, color=WARMUP_COLOR, alpha=0.25, lw=0,
                           label="warm-up (head only)")
            for key, color, label in ((metric, TRAIN_COLOR, "train"), (f"val_{metric}", VAL_COLOR, "validation")):
                y = _series(rows, key)
                if np.isfinite(y).any():
                    ax.plot(x, y, marker="o", ms=4, lw=2, color=color, label=label)
            if best is not None:
                ax.axvline(best + 1, color="grey", ls="--", lw=1, label=f"best (epoch {best + 1})")
            ax.set_title(title)
            ax.set_xlabel("epoch")
            ax.set_ylabel(metric)
            ax.set_xlim(0.5, len(rows) + 0.5)
            ax.xaxis.get_major_locator().set_params(integer=True)
            if metric == "accuracy":
                ax.set_ylim(max(0.0, float(np.nanmin(np.r_[_series(rows, "accuracy"), val_acc, [1.0]])) - 0.05), 1.01)
                # Whole-percent ticks only: the default 2.5% steps print as 82%, 85%, 88% after rounding.
                from matplotlib.ticker import MaxNLocator

                ax.yaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 5, 10]))
                ax.yaxis.set_major_formatter(_percent())
            ax.legend(loc="lower right" if metric == "accuracy" else "upper right", fontsize=9)
        title = "Learning curves"
        if best is not None:
            title += f"  -  best validation accuracy {val_acc[best]:.1%} at epoch {best + 1}"
        fig.suptitle(title)
        return fig


def _percent():
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(1.0, decimals=0)


# The public helpers for other modules' figures (cv, tune): the same size, style and axis format as these.
new_figure = _figure  # new_figure(width, height): a Figure not tied to pyplot (thread-safe, no GUI)
plot_style = _style  # `with plot_style():` the house style (fonts, grid, colours)
percent_axis = _percent  # a 0-100 % tick formatter for fractions


# --------------------------------------------------------------------------- evaluation plots

def confusion_matrix_figure(cm: np.ndarray, class_names: Sequence[str], title: str = "Confusion matrix"):
    """Heatmap of counts, each cell also showing its share of the true class (row percentage)."""
    cm = np.asarray(cm, dtype=np.int64)
    n = len(class_names)
    size = min(max(4.8, 1.0 + 0.85 * n), 16)
    row_sums = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, row_sums, out=np.zeros(cm.shape, float), where=row_sums > 0)
    with _style():
        fig = _figure(size + 1.2, size)
        ax = fig.subplots()
        ax.grid(False)
        # Colour by row share so a small class's errors are as visible as a large one's.
        im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, format=_percent())
        cbar.set_label("share of the true class")
        fs = 11 if n <= 6 else 9 if n <= 12 else 7
        for i in range(n):
            for j in range(n):
                color = "white" if share[i, j] > 0.55 else "#222222"
                text = f"{cm[i, j]:,}\n{share[i, j]:.1%}" if n <= 15 else f"{cm[i, j]}"
                ax.text(j, i, text, ha="center", va="center", color=color, fontsize=fs,
                        fontweight="bold" if i == j else "normal")
        ax.set_xticks(range(n), labels=list(class_names), rotation=30 if n > 3 else 0, ha="right" if n > 3 else "center")
        ax.set_yticks(range(n), labels=list(class_names))
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        total = int(cm.sum())
        acc = np.trace(cm) / total if total else 0.0
        ax.set_title(f"{title}  ({total:,} images, accuracy {acc:.1%})")
        return fig


def scatter_figure(true_idx: Sequence[int], pred_idx: Sequence[int], class_names: Sequence[str],
                   confidence: Sequence[float] | None = None, seed: int = 0):
    """True vs predicted class per sample, jittered so overlapping points show; errors in red."""
    t = np.asarray(true_idx, dtype=float)
    p = np.asarray(pred_idx, dtype=float)
    n = len(class_names)
    rng = np.random.default_rng(seed)
    jt = t + rng.uniform(-0.32, 0.32, size=t.shape)
    jp = p + rng.uniform(-0.32, 0.32, size=p.shape)
    right = t == p
    conf = np.asarray(confidence, dtype=float) if confidence is not None else np.ones_like(t)
    size = min(max(4.8, 1.0 + 1.0 * n), 14)
    with _style():
        fig = _figure(size + 0.8, size)
        ax = fig.subplots()
        for k in range(n + 1):
            ax.axhline(k - 0.5, color="#dddddd", lw=1)
            ax.axvline(k - 0.5, color="#dddddd", lw=1)
        ax.grid(False)
        alpha = 0.55 if len(t) < 2000 else 0.25
        ax.scatter(jt[right], jp[right], s=14 + 26 * conf[right], c=RIGHT_COLOR, alpha=alpha, lw=0,
                   label=f"correct ({int(right.sum()):,})")
        ax.scatter(jt[~right], jp[~right], s=14 + 26 * conf[~right], c=WRONG_COLOR, alpha=min(1.0, alpha + 0.25),
                   lw=0, marker="X", label=f"wrong ({int((~right).sum()):,})")
        ax.set_xticks(range(n), labels=list(class_names), rotation=30 if n > 3 else 0, ha="right" if n > 3 else "center")
        ax.set_yticks(range(n), labels=list(class_names))
        ax.set_xlim(-0.5, n - 0.5)
        ax.set_ylim(-0.5, n - 0.5)
        ax.set_xlabel("true class")
        ax.set_ylabel("predicted class")
        ax.set_title("True vs predicted class per image\n(jittered; marker size = confidence)")
        fig.legend(loc="outside lower center", ncol=2)
        return fig


def image_grid_figure(items: Sequence[Mapping[str, Any]], title: str = "", cols: int | None = None,
                      thumb: int = 160):
    """A grid of thumbnails, each with a caption; items hold `image` (uint8 HxWx3 or None), `caption`,
    and `color` (caption colour: green/red when the truth is known)."""
    n = len(items)
    with _style():
        if n == 0:
            fig = _figure(7, 0.9)
            if title:
                fig.suptitle(title)
            return fig
        cols = cols or min(n, 6 if n > 8 else max(1, min(n, 4)))
        rows = math.ceil(n / cols)
        cell = 2.1
        fig = _figure(cols * cell, rows * (cell + 0.45) + (0.4 if title else 0))
        axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
        for ax in axes:
            ax.axis("off")
        for ax, item in zip(axes, items):
            img = item.get("image")
            color = item.get("color") or "#222222"
            if img is not None:
                ax.imshow(img)
            else:
                ax.text(0.5, 0.5, "unreadable", ha="center", va="center", color=WRONG_COLOR, transform=ax.transAxes)
            ax.set_title(item.get("caption", ""), fontsize=8.5, color=color, fontweight="bold", loc="center")
            if item.get("frame"):
                ax.axis("on")
                ax.set_xticks([])
                ax.set_yticks([])
                for s in ax.spines.values():
                    s.set_visible(True)
                    s.set_color(color)
                    s.set_linewidth(3)
        if title:
            fig.suptitle(title)
        return fig


def thumbnail(path: str | os.PathLike, size: int = 192) -> np.ndarray | None:
    """A small RGB thumbnail keeping the aspect ratio, or None when the file cannot be read."""
    from .data.images import open_image

    try:
        im = open_image(str(path))
        im.thumbnail((size, size))
        return np.asarray(im)
    except Exception:  # a grid must never fail because of one bad file
        return None
