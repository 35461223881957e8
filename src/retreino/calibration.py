"""Calibrated confidence: temperature scaling (Guo et al., ICML 2017) and expected calibration error.

A network's top probability is usually higher than its real hit rate. One scalar T, fitted on
the validation split by minimising the negative log-likelihood, rescales the logits (z / T); it
never changes which class wins, only how sure the model says it is. Everything works from
probabilities: a softmax's logits are log(p) up to a constant, so softmax(log(p) / T) equals
softmax(z / T), and a 1-unit sigmoid shown as [1 - p, p] is the same formula. numpy/scipy only.
"""
from __future__ import annotations

import numpy as np

TINY = 1e-30  # float32 softmax outputs can be exactly 0; log(0) would poison the sum
ECE_BINS = 15


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
