"""Calibrated confidence: temperature scaling (Guo et al., ICML 2017) and expected calibration error.

A network's top probability is often not its real hit rate (fine-tuned networks are usually
over-confident; a strongly regularised linear probe is under-confident). One scalar T, fitted by
minimising the negative log-likelihood, rescales the logits (z / T); it never changes which class
wins, only how sure the model says it is. Everything works from probabilities: a softmax's logits
are log(p) up to a constant, so softmax(log(p) / T) equals softmax(z / T), and a 1-unit sigmoid
shown as [1 - p, p] is the same formula.

What T is fitted on (ood.fit_after_training): a few hundred validation images make T noisy, so
when the best model is the recipe's linear probe, T is fitted on out-of-fold probabilities of
train + validation (`probe_out_of_fold`); and T is kept only when, cross-fitted, it lowers the
ECE of held-out rows (`fit_temperature_checked`). docs/unknown.md has the measurements.
The prediction path needs numpy only; the fitting helpers import scipy and scikit-learn.
"""
from __future__ import annotations

import numpy as np

TINY = 1e-30  # float32 softmax outputs can be exactly 0; log(0) would poison the sum
ECE_BINS = 15
# Out of fold only up to this many train + validation images: it exists because a few hundred validation
# answers fit T noisily, and beyond it the refits and the mirrored features would cost memory in proportion.
OUT_OF_FOLD_MAX = 10_000
PROBE_MATCH = 0.02  # probe_out_of_fold: largest gap between a refitted probe and the model's own probabilities


def apply_temperature(probs: np.ndarray, temperature: float | None) -> np.ndarray:
    """softmax(log(p) / T), row by row; T = 1 (or None) returns the probabilities unchanged."""
    p = np.asarray(probs, dtype=np.float64)
    if temperature is None or temperature == 1.0 or p.size == 0:
        return np.asarray(probs, dtype=np.float32)
    z = np.log(np.clip(p, TINY, 1.0)) / float(temperature)
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def nll(probs: np.ndarray, y: np.ndarray) -> float:
    p = np.asarray(probs, dtype=np.float64)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], TINY, 1.0))))


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """The T > 0 minimising the validation NLL of softmax(log(p) / T) (a bounded 1-D search on log T)."""
    from scipy.optimize import minimize_scalar

    y = np.asarray(y, dtype=np.int64)
    if len(y) == 0:
        return 1.0
    res = minimize_scalar(lambda log_t: nll(apply_temperature(probs, float(np.exp(log_t))), y),
                          bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(res.x))


def cross_fitted(probs: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Each row scaled by a T fitted on the *other* folds: what temperature scaling does to images it
    was not fitted on (the honest check of a 1-parameter fit on a few hundred images)."""
    from sklearn.model_selection import KFold, StratifiedKFold

    y = np.asarray(y, dtype=np.int64)
    counts = np.bincount(y)
    split = (StratifiedKFold if counts[counts > 0].min() >= folds else KFold)(folds, shuffle=True, random_state=seed)
    out = np.zeros(np.shape(probs), np.float32)
    for fit, held in split.split(np.zeros(len(y)), y):
        out[held] = apply_temperature(probs[held], fit_temperature(probs[fit], y[fit]))
    return out


def fit_temperature_checked(probs: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0) -> tuple[float, dict]:
    """(T, check): T fitted on all of `probs`, kept only when cross-fitted T lowers the ECE of held-out rows.

    A model that is already calibrated (its ECE at the noise floor of its calibration images)
    gets T = 1: a fitted T would then only move confidences by the noise of the fit, which the
    test split shows as a higher ECE (docs/unknown.md measures both cases).
    """
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    t = fit_temperature(probs, y)
    check = {"fitted": t, "n": int(len(y)), "folds": folds}
    if len(y) < 2 * folds:
        check.update(kept=True, reason="too few images for a held-out check")
        return t, check
    before = expected_calibration_error(probs, y)
    after = expected_calibration_error(cross_fitted(probs, y, folds, seed), y)
    kept = after < before
    check.update(heldout_ece_raw=before, heldout_ece_scaled=after, kept=bool(kept))
    return (t if kept else 1.0), check


def probe_out_of_fold(train_x, train_y, val_x, val_y, val_probs, n_classes: int, c: float | None = None,
                      folds: int = 5, seed: int = 0, train_mirror=None, val_mirror=None,
                      fit_mirror: bool = True, average_mirror: bool = False) -> np.ndarray | None:
    """Out-of-fold probabilities of train + validation for a model whose head is the linear probe.

    For a run whose best epoch is the probe's (recipe.py): its head is a LogisticRegression with
    inverse regularisation C on the frozen backbone's pooled features. The same estimator refitted
    k times on the other folds of train + validation gives every one of those images a probability
    from a head that never saw it: 5-6x more images to fit T on than the validation split alone
    (whose T is a noisy 1-parameter fit). The check that the head IS that probe: the probe refitted
    on the training features must reproduce the model's own validation probabilities (else None).
    `c` is the probe's C when the run recorded it; else the recipe's validation grid chooses it again.

    Mirrored features (`train_mirror`, `val_mirror`, row for row) serve two cases. `fit_mirror`: the
    probe learnt from the photos and their mirror images (recipe.py, `probe_mirrored`), so each fold
    is fitted on its photos and their mirrors, and a held-out photo's mirror never trains the head
    that answers it. `average_mirror` (the model's flip TTA) answers each held-out photo as
    predictions will: the mean of its own and its mirror's probabilities.
    """
    import warnings

    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold, StratifiedKFold

    from .recipe import fit_probe, full_probs

    train_y, val_y = np.asarray(train_y, np.int64), np.asarray(val_y, np.int64)
    mirrored = train_mirror is not None and val_mirror is not None
    if (average_mirror or train_mirror is not None or val_mirror is not None) and not mirrored:
        raise ValueError("probe_out_of_fold: mirrored answers need both train_mirror and val_mirror")

    def fit_rows(rows_x, rows_y, rows_mirror):  # what the probe learns from: the photos (and their mirrors)
        if rows_mirror is None or not fit_mirror:
            return rows_x, rows_y
        return np.r_[rows_x, rows_mirror], np.r_[rows_y, rows_y]

    if c is None:
        lr, c, refit_val = fit_probe(*fit_rows(train_x, train_y, train_mirror), val_x, val_y, n_classes)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lr = LogisticRegression(C=c, max_iter=2000).fit(*fit_rows(train_x, train_y, train_mirror))
        refit_val = full_probs(lr, val_x, n_classes)
    # lbfgs stops at a tolerance: features equal to 1e-5 refit to probabilities within ~3e-3 (measured).
    # The check compares single-pass answers: `val_probs` are the model's own, before any flip average.
    if np.abs(refit_val - np.asarray(val_probs, np.float64)).max() > PROBE_MATCH:
        return None  # not the probe's head after all: its folds would say nothing about this model
    x, y = np.r_[train_x, val_x], np.r_[train_y, val_y]
    x_mirror = np.r_[train_mirror, val_mirror] if mirrored else None
    counts = np.bincount(y, minlength=n_classes)
    split = (StratifiedKFold if counts[counts > 0].min() >= folds else KFold)(folds, shuffle=True, random_state=seed)
    out = np.zeros((len(y), n_classes), np.float64)
    for fit, held in split.split(x, y):
        if len(np.unique(y[fit])) < 2:
            return None  # a fold with one class cannot be fitted: too few images for this
        # sklearn's C weighs the summed loss against the penalty: scale it so that a fold's fit
        # regularises each image as much as the probe's fit on the whole training split did.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lr = LogisticRegression(C=c * len(train_y) / len(fit), max_iter=2000).fit(
                *fit_rows(x[fit], y[fit], None if x_mirror is None else x_mirror[fit]))
        out[held] = full_probs(lr, x[held], n_classes)
        if average_mirror:
            out[held] = (out[held] + full_probs(lr, x_mirror[held], n_classes)) / 2
    return out


def reliability_bins(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> list[dict]:
    """Equal-width confidence bins: count, mean confidence and accuracy of the top-1 answers in each."""
    p = np.asarray(probs, dtype=np.float64)
    conf, right = p.max(axis=1), (p.argmax(axis=1) == np.asarray(y))
    edges = np.linspace(0.0, 1.0, bins + 1)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
        n = int(inside.sum())
        rows.append({"low": float(lo), "high": float(hi), "count": n,
                     "confidence": float(conf[inside].mean()) if n else None,
                     "accuracy": float(right[inside].mean()) if n else None})
    return rows


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: the count-weighted mean |accuracy - confidence| over equal-width confidence bins."""
    n = len(y)
    if n == 0:
        return float("nan")
    return float(sum(b["count"] / n * abs(b["accuracy"] - b["confidence"]) for b in reliability_bins(probs, y, bins)
                     if b["count"]))


def calibration_metrics(raw_probs: np.ndarray, y: np.ndarray, temperature: float | None) -> dict:
    """What `evaluate` records under `calibration`: T and the ECE/NLL before and after it."""
    after = apply_temperature(raw_probs, temperature)
    return {
        "temperature": None if temperature is None else float(temperature),
        "ece_before": expected_calibration_error(raw_probs, y),
        "ece_after": expected_calibration_error(after, y),
        "nll_before": nll(raw_probs, y),
        "nll_after": nll(after, y),
        "bins_before": reliability_bins(raw_probs, y),
        "bins_after": reliability_bins(after, y),
    }


def reliability_figure(cal: dict):
    """Reliability diagram: accuracy against confidence per bin, before and after temperature scaling."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2, 4.6), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], color="#888888", linestyle="--", linewidth=1, label="perfect calibration")
    for key, label, color in (("bins_before", f"raw (ECE {cal['ece_before']:.3f})", "#d62728"),
                              ("bins_after", f"T = {cal['temperature'] or 1:.2f} (ECE {cal['ece_after']:.3f})",
                               "#1f77b4")):
        pts = [(b["confidence"], b["accuracy"]) for b in cal[key] if b["count"]]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", color=color, label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence of the top answer")
    ax.set_ylabel("share of those answers that were right")
    ax.set_title("Reliability diagram (test split)")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig
