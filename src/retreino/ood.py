"""An honest "unknown": out-of-distribution scores from the model's own pooled features.

The features are the input of the classification head (the backbone's pooled vector). At the
end of training they are computed for the training and validation images, and two detectors
are fitted from them (both kept, one used, chosen by measurement: docs/unknown.md):

- `mahalanobis` (Lee et al., NeurIPS 2018): class means and one shared covariance; the score is
  minus the smallest squared Mahalanobis distance to a class mean.
- `knn` (Sun et al., ICML 2022): features normalised to unit length; the score is minus the
  distance to the k-th nearest training feature.

A higher score means "more like the training data". The threshold is the score that accepts a
chosen share (default 95%) of the validation images (for kNN on a linear-probe model, pooled with
the training images' leave-one-out scores: `fit_detector`); below it `predict` and `serve` answer
`unknown`, with the score and the class the model would have said. The arrays live in
`unknown.npz` beside the model (run directory, every export folder); `ModelInfo.unknown` holds
the method, threshold and file name. Scoring is numpy only (no TensorFlow on the prediction path).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import tta
from .errors import RetreinoError

UNKNOWN_FILE = "unknown.npz"
CALIBRATION_FILE = "calibration.json"  # how the run's temperature was fitted (fit_after_training)
DEFAULT_METHOD = "knn"  # chosen by measurement: docs/unknown.md
DEFAULT_ACCEPT = 0.95
KNN_K = 10
KNN_BLOCK = 1024  # rows of features scored at once
# The kNN bank is at most this many training features (a seeded random subset beyond it): unknown.npz
# travels with every export (10,000 x 1280 float32 = 49 MB), and Sun et al. (ICML 2022, section 4.3)
# find a random 1% of ImageNet's training set keeps kNN's detection almost unchanged.
KNN_BANK_MAX = 10_000
UNKNOWN_LABEL = "unknown"
METHODS = ("mahalanobis", "knn")


# --------------------------------------------------------------------------- scores


def _unit(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, dtype=np.float32)
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def mahalanobis_score(features: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """-min over classes of (f - mu_c)^T P (f - mu_c), P the inverse shared covariance."""
    f = np.asarray(features, dtype=np.float64)
    best = None
    for mu in np.asarray(means, dtype=np.float64):
        d = f - mu
        m = np.einsum("nd,de,ne->n", d, precision, d)
        best = m if best is None else np.minimum(best, m)
    return (-best).astype(np.float64)


def knn_score(features: np.ndarray, bank: np.ndarray, k: int = KNN_K) -> np.ndarray:
    """-distance to the k-th nearest unit-length training feature (bank rows are unit length)."""
    f = _unit(features)
    bank = np.asarray(bank, dtype=np.float32)
    k = max(1, min(int(k), len(bank)))
    kth = np.empty(len(f), np.float64)
    # In blocks of rows: the whole similarity matrix of 30,000 photos against 30,000 would be 3.6 GB.
    for i in range(0, len(f), KNN_BLOCK):
        sims = f[i:i + KNN_BLOCK] @ bank.T
        kth[i:i + KNN_BLOCK] = -np.partition(-sims, k - 1, axis=1)[:, k - 1]
    # |a - b|^2 = 2 - 2 a.b for unit vectors
    return -np.sqrt(np.maximum(2.0 - 2.0 * kth, 0.0))


def knn_leave_one_out(bank: np.ndarray, k: int = KNN_K) -> np.ndarray:
    """Each bank row's kNN score against the other rows: its own row is its nearest (distance 0)."""
    return knn_score(bank, bank, k + 1)


def msp_score(probs: np.ndarray) -> np.ndarray:
    """The maximum-softmax-probability baseline (Hendrycks & Gimpel, ICLR 2017)."""
    return np.asarray(probs, dtype=np.float64).max(axis=1)


# --------------------------------------------------------------------------- the detector


@dataclass
class UnknownDetector:
    """Scores features and says which are `unknown` (score below `threshold`)."""

    method: str
    threshold: float
    arrays: dict[str, np.ndarray]
    k: int = KNN_K
    accept: float = DEFAULT_ACCEPT
    thresholds: dict[str, float] | None = None
    threshold_from: dict[str, int] | None = None  # the in-distribution scores the thresholds come from

    @property
    def feature_dim(self) -> int:
        return int(self.arrays["bank"].shape[1])

    def score(self, features: np.ndarray, method: str | None = None) -> np.ndarray:
        method = method or self.method
        if method == "mahalanobis":
            return mahalanobis_score(features, self.arrays["means"], self.arrays["precision"])
        if method == "knn":
            return knn_score(features, self.arrays["bank"], self.k)
        raise RetreinoError(f"unknown out-of-distribution method {method!r}: use one of {', '.join(METHODS)}")

    def is_unknown(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) < self.threshold

    def metadata(self) -> dict[str, Any]:
        return {"method": self.method, "threshold": float(self.threshold), "accept": self.accept, "k": self.k,
                "file": UNKNOWN_FILE, "feature_dim": self.feature_dim, "thresholds": self.thresholds,
                "threshold_from": self.threshold_from}

    def save(self, folder: str | Path) -> Path:
        from .atomic import atomic_path

        path = Path(folder) / UNKNOWN_FILE
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **self.arrays)
        return path


def fit_detector(train_features: np.ndarray, train_labels: np.ndarray, val_features: np.ndarray,
                 num_classes: int, method: str = DEFAULT_METHOD, accept: float = DEFAULT_ACCEPT,
                 k: int = KNN_K, pool_training: bool = False) -> UnknownDetector:
    """Both detectors from training features; thresholds accept `accept` of the validation images.

    `pool_training`: the features come from weights that never learnt from the training photos
    (the frozen backbone of a linear-probe model), so a training photo's kNN score against the
    *other* training photos is drawn like a new photo's: those leave-one-out scores join the
    validation scores in the kNN threshold, 4-6x more scores than validation alone, whose 5%
    quantile is noisy (docs/unknown.md). Mahalanobis keeps validation alone: its means and
    covariance are fitted on the training photos, which sit closer to them than new photos do.
    """
    if method not in METHODS:
        raise RetreinoError(f"unknown out-of-distribution method {method!r}: use one of {', '.join(METHODS)}")
    if not 0.0 < accept <= 1.0:
        raise RetreinoError(f"the accepted share of validation images must be in (0, 1], not {accept}")
    # float32 features, float64 sums in blocks: memory stays near one copy of the features at any size.
    f = np.asarray(train_features, dtype=np.float32)
    y = np.asarray(train_labels, dtype=np.int64)
    means = np.stack([f[y == c].mean(axis=0, dtype=np.float64) if np.any(y == c) else f.mean(axis=0, dtype=np.float64)
                      for c in range(num_classes)])
    cov = np.zeros((f.shape[1], f.shape[1]))
    for i in range(0, len(f), KNN_BLOCK):
        centred = f[i:i + KNN_BLOCK] - means[y[i:i + KNN_BLOCK]]
        cov += centred.T @ centred
    cov /= max(1, len(f))
    # A few hundred images cannot fill a 1280-dim covariance: shrink towards its mean variance so it inverts.
    shrink = 0.1
    cov = (1 - shrink) * cov + shrink * np.eye(len(cov)) * np.trace(cov) / len(cov)
    in_bank = np.ones(len(f), bool)
    if len(f) > KNN_BANK_MAX:
        in_bank[:] = False
        in_bank[np.random.default_rng(0).choice(len(f), KNN_BANK_MAX, replace=False)] = True
    arrays = {"means": means.astype(np.float32), "precision": np.linalg.inv(cov).astype(np.float32),
              "bank": _unit(f[in_bank]).astype(np.float32)}
    det = UnknownDetector(method, 0.0, arrays, k=k, accept=accept)
    scores = {m: det.score(val_features, m) for m in METHODS}
    training = np.empty(0)
    if pool_training:  # bank rows against the other bank rows; training rows outside the bank like new photos
        training = np.r_[knn_leave_one_out(arrays["bank"], k), knn_score(f[~in_bank], arrays["bank"], k)]
    scores["knn"] = np.r_[scores["knn"], training]
    det.thresholds = {m: float(np.quantile(scores[m], 1.0 - accept)) for m in METHODS}
    det.threshold_from = {"validation": int(len(val_features)), "knn_training": int(len(training))}
    det.threshold = det.thresholds[method]
    return det


def load_detector(info, folder: str | Path | None = None) -> UnknownDetector | None:
    """The detector recorded in a ModelInfo, from `unknown.npz` beside the model; None when it has none."""
    meta = getattr(info, "unknown", None)
    if not meta:
        return None
    base = Path(folder) if folder is not None else Path(str(info.source)).parent
    path = base / meta.get("file", UNKNOWN_FILE)
    if not path.is_file():
        raise RetreinoError(f"{path} is missing: the model's metadata names an unknown-detector file beside it")
    with np.load(path, allow_pickle=False) as z:
        arrays = {name: z[name] for name in z.files}
    return UnknownDetector(meta["method"], float(meta["threshold"]), arrays, k=int(meta.get("k", KNN_K)),
                           accept=float(meta.get("accept", DEFAULT_ACCEPT)), thresholds=meta.get("thresholds"),
                           threshold_from=meta.get("threshold_from"))


# --------------------------------------------------------------------------- model outputs


def head_units(info, runtime_units: int | None = None) -> int:
    """Width of the head's own output: classes, or 1 for a 1-unit sigmoid."""
    n = len(info.class_names or [])
    if info.head == "sigmoid" and n == 2 and runtime_units in (1, 1 + int((info.unknown or {}).get("feature_dim", 0))):
        return 1
    return n


def split_outputs(raw: np.ndarray, units: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(head output, features or None): exports with a detector emit [head | features] as one tensor."""
    raw = np.asarray(raw)
    if raw.shape[-1] > units:
        return raw[:, :units], raw[:, units:]
    return raw, None


def with_features(model):
    """A Keras model whose one output is [head output | head input]: classes and pooled features in one pass.

    One concatenated output (not two outputs) keeps every converter's output order out of the
    question: ONNX and TFLite runtimes read output 0 and split it by width.
    """
    import keras

    head = model.layers[-1]
    if not isinstance(head, keras.layers.Dense):
        raise RetreinoError(f"the model's last layer is {type(head).__name__}, not a Dense head: no pooled features")
    features = head.input
    out = keras.layers.Concatenate(axis=-1, name="retreino_head_and_features")([model.outputs[0], features])
    from .models.graph import model_inputs

    both = keras.Model(model_inputs(model), out, name=f"{model.name}_with_features")
    both(np.zeros((1, *model.input_shape[1:]), np.float32))  # exporters want a model that has been called
    return both


# --------------------------------------------------------------------------- end of training


def fit_after_training(trainer, accept: float = DEFAULT_ACCEPT, method: str = DEFAULT_METHOD) -> dict:
    """Temperature + unknown detector for a finished run, stored with its best model.

    Reads the best model back, computes probabilities and pooled features of the training split
    (file order, no augmentation) and the validation split, fits T (on the probe's out-of-fold
    train + validation probabilities when the probe is the best model, else on validation; kept
    only when it lowers held-out ECE: calibration.py), fits the detectors, writes `unknown.npz` and
    `calibration.json` and re-saves the model files with the new metadata.
    """
    from . import runs
    from .calibration import OUT_OF_FOLD_MAX, expected_calibration_error, fit_temperature_checked, probe_out_of_fold
    from .models import load_model, save_model

    run_dir = Path(trainer.run_dir)
    best = run_dir / runs.BEST_KERAS
    loaded = load_model(best)
    train_ds, val_ds = trainer.pipelines(ordered_train=True)
    info = loaded.info
    units = head_units(info, int(loaded.model.output_shape[-1]))
    both = with_features(loaded.model)

    def forward(ds, flip: bool = False):
        from .inference.predictor import head_probabilities

        outs, labels = [], []
        for x, y in ds:
            outs.append(np.asarray(both(tta.flip_pixels(x) if flip else x, training=False)))
            y = np.asarray(y)
            labels.append(y.argmax(axis=1) if y.ndim == 2 else y.astype(np.int64).reshape(-1))
        probs, feats = head_probabilities(np.concatenate(outs), info.head, units)
        return probs, feats, np.concatenate(labels)

    trainer.printer("Calibrating: temperature and unknown detector from the training and validation features")
    _, train_f, train_y = forward(train_ds)
    val_p, val_f, val_y = forward(val_ds)
    state = runs.RunDir(run_dir).read_state()
    from .recipe import MIRROR_TRAINING, best_is_probe, describe_refit, refit_head

    probe_is_best = best_is_probe(run_dir, state)
    refit = None
    if state.new_head and getattr(trainer.cfg, "head_init", None) == "linear-probe" and not probe_is_best:
        # Fine-tuning won over the recipe's probe: refit its head on the new features (recipe.refit_head).
        mirror_train_f = forward(train_ds, flip=True)[1] if MIRROR_TRAINING else None
        refit = refit_head(loaded.model, train_f, train_y, val_f, val_y, val_p, len(info.class_names), mirror_train_f)
        trainer.printer(describe_refit(refit))
        if refit["kept"]:
            val_p = refit["probs"](val_f)
    single_val_p = val_p
    # Flip TTA first: the temperature calibrates the answers predictions will really give.
    choice = getattr(trainer.cfg, "tta", "auto")
    mirror_val_p, mirror_val_f, _ = forward(val_ds, flip=True) if choice != "off" else (val_p, None, None)
    if refit is not None and refit["kept"] and mirror_val_f is not None:
        mirror_val_p = refit["probs"](mirror_val_f)
    info.tta, tta_record = tta.decide(choice, val_p, mirror_val_p, val_y)
    trainer.printer(tta.describe(tta_record))
    if info.tta:
        val_p = tta.average(val_p, mirror_val_p)
    oof = None
    if probe_is_best and len(train_y) + len(val_y) <= OUT_OF_FOLD_MAX:
        # A probe that learnt from mirror images, or a flip-averaged model, needs the mirrored
        # features in its folds too (calibration.probe_out_of_fold).
        mirrors = {}
        if state.extra.get("probe_mirrored") or info.tta:
            if mirror_val_f is None:
                mirror_val_f = forward(val_ds, flip=True)[1]
            mirrors = {"train_mirror": forward(train_ds, flip=True)[1], "val_mirror": mirror_val_f,
                       "fit_mirror": bool(state.extra.get("probe_mirrored"))}
        oof = probe_out_of_fold(train_f, train_y, val_f, val_y, single_val_p, len(info.class_names),
                                c=state.extra.get("probe_c"), average_mirror=bool(info.tta), **mirrors)
    if oof is not None:  # the head is the linear probe: T from its out-of-fold train + validation probabilities
        cal_p, cal_y, source = oof, np.r_[train_y, val_y], "out-of-fold train+validation"
    else:
        cal_p, cal_y, source = val_p, val_y, "validation"
    temperature, check = fit_temperature_checked(cal_p, cal_y)
    check["source"] = source
    det = fit_detector(train_f, train_y, val_f, len(info.class_names), method=method, accept=accept,
                       pool_training=probe_is_best)
    det.save(run_dir)
    info.temperature = temperature
    info.unknown = det.metadata()
    save_model(loaded, best, write_labels=False)
    if (run_dir / runs.BEST_H5).exists():
        save_model(loaded, run_dir / runs.BEST_H5, write_labels=False)
    from .calibration import apply_temperature

    record = {"temperature": temperature, "fit": check, "tta": tta_record,
              "head_refit": None if refit is None else {k: v for k, v in refit.items() if k != "probs"},
              "validation_ece_before": expected_calibration_error(val_p, val_y),
              "validation_ece_after": expected_calibration_error(apply_temperature(val_p, temperature), val_y),
              "unknown": info.unknown}
    runs.RunDir(run_dir).write_json(CALIBRATION_FILE, record)
    if check["kept"]:
        how = f"fitted on {check['n']:,} {source} probabilities"
    else:
        how = (f"T {check['fitted']:.3f} fitted on {check['n']:,} {source} probabilities did not lower their held-out "
               f"ECE ({check['heldout_ece_raw']:.4f} -> {check['heldout_ece_scaled']:.4f}): kept 1")
    trainer.printer(f"Temperature {temperature:.3f} ({how}; validation ECE {record['validation_ece_before']:.3f} -> "
                    f"{record['validation_ece_after']:.3f}); unknown below {det.method} score {det.threshold:.4g} "
                    f"(accepts {accept:.0%} of {_threshold_source(det)})")
    return record


def _threshold_source(det: UnknownDetector) -> str:
    """What the threshold was set on, for the training log."""
    source = det.threshold_from or {}
    text = f"{source.get('validation', 0):,} validation images"
    if det.method == "knn" and source.get("knn_training"):
        text += f" and {source['knn_training']:,} training images, each scored against the others"
    return text


def fit_run(run_dir: str | Path, printer=print, **kw) -> dict:
    """`fit_after_training` for a run trained before (rebuilds its data from config.json)."""
    from .training import _Trainer

    return fit_after_training(_Trainer.reopen(Path(run_dir), printer=printer), **kw)


# --------------------------------------------------------------------------- evaluate --ood


def measure_ood(predictor, folder, in_scores, in_probs, in_labels, batch_size: int = 32, workers=None) -> dict:
    """AUROC, share of `folder` answered unknown, share of the test images rejected, accuracy kept; per score."""
    from sklearn.metrics import roc_auc_score

    from .prediction import find_images, iter_decoded_batches

    det = predictor.unknown
    if det is None:
        raise RetreinoError("--ood: this model has no unknown detector (train it with this version of retreino)")
    paths = find_images(folder)
    out_scores, out_probs = [], []
    for _, pixels, ok, _ in iter_decoded_batches(paths, predictor.info.input_size, predictor.resize_mode, batch_size,
                                                 workers, interpolation=predictor.interpolation):
        if ok:
            full = predictor.predict_pixels_full(pixels)
            out_scores.append(full["unknown_score"])
            out_probs.append(full["probabilities"])
    s_out, p_out = np.concatenate(out_scores), np.concatenate(out_probs)
    in_probs, in_labels = np.asarray(in_probs), np.asarray(in_labels)
    truth = np.r_[np.ones(len(in_scores)), np.zeros(len(s_out))]
    right = in_probs.argmax(axis=1) == in_labels

    def row(s_in, s_o, thr):
        kept = s_in >= thr
        return {"auroc": float(roc_auc_score(truth, np.r_[s_in, s_o])), "threshold": float(thr),
                "ood_rejected": float(np.mean(s_o < thr)), "in_rejected": float(np.mean(~kept)),
                "accuracy_kept": float(np.mean(right[kept])) if kept.any() else None}

    methods = {det.method: row(np.asarray(in_scores), s_out, det.threshold)}
    # The baseline, thresholded to accept the same share of the in-distribution images.
    msp_in, msp_out = msp_score(in_probs), msp_score(p_out)
    methods["msp (baseline)"] = row(msp_in, msp_out, float(np.quantile(msp_in, 1.0 - det.accept)))
    return {"folder": str(folder), "n_ood": int(len(s_out)), "n_in": int(len(in_scores)), "method": det.method,
            "accept": det.accept, "methods": methods}
