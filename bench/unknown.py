# make bench: needs arguments (a run folder, or rows and seeds): see the docstring
"""Measure the unknown detectors (kNN, Mahalanobis) and the MSP baseline of a fitted run on an OOD folder.

Usage: python bench/unknown.py RUN_DIR OOD_DIR  (fits the run first when it has no detector)
Prints one JSON line: AUROC, share of OOD rejected, share of in-distribution test rejected, per method.
"""
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from retreino import ood
from retreino.calibration import apply_temperature, expected_calibration_error
from retreino.evaluation import labelled_images
from retreino.inference import Predictor
from retreino.models import load_model
from retreino.prediction import find_images

run, ood_dir = Path(sys.argv[1]), sys.argv[2]
if not load_model(run / "fine_tuned_model.keras").info.unknown:
    ood.fit_run(run)
cfg = json.loads((run / "config.json").read_text())["config"]
pred = Predictor(load_model(run / "fine_tuned_model.keras"), runtime="keras")
test = labelled_images(cfg["data"], "test", None, val_split=cfg["val_split"], test_split=cfg["test_split"],
                      seed=cfg["seed"])


def outputs(paths):
    raws, feats = [], []
    for i in range(0, len(paths), 32):
        x = np.stack([pred.load_pixels(p) for p in paths[i:i + 32]])
        from retreino.preprocessing import scale_pixels_np
        head, f = ood.split_outputs(pred.backend(scale_pixels_np(x, pred.info.preprocessing)), pred._head_units)
        raws.append(head)
        feats.append(f)
    return np.concatenate(raws), np.concatenate(feats)


names = pred.class_names
y = np.array([names.index(test.class_names[int(label)]) for label in test.labels])
p_in, f_in = outputs(test.paths)
p_out, f_out = outputs(find_images(ood_dir))
T = pred.info.temperature
res = {"run": str(run), "ood": ood_dir, "n_in": len(y), "n_ood": len(p_out), "temperature": T,
       "test_ece_before": expected_calibration_error(p_in, y),
       "test_ece_after": expected_calibration_error(apply_temperature(p_in, T), y),
       "test_accuracy": float(np.mean(p_in.argmax(1) == y))}
det = pred.unknown
for m in ("knn", "mahalanobis", "msp"):
    if m == "msp":
        s_in, s_out = ood.msp_score(apply_temperature(p_in, T)), ood.msp_score(apply_temperature(p_out, T))
        val_thr = None
        thr = float(np.quantile(s_in, 0.05))  # MSP: threshold at the same 95% acceptance, set on test itself
    else:
        s_in, s_out = det.score(f_in, m), det.score(f_out, m)
        thr = det.thresholds[m]
    auroc = roc_auc_score(np.r_[np.ones(len(s_in)), np.zeros(len(s_out))], np.r_[s_in, s_out])
    kept = s_in >= thr
    res[m] = {"auroc": round(float(auroc), 4), "ood_rejected": round(float(np.mean(s_out < thr)), 4),
              "in_rejected": round(float(np.mean(~kept)), 4),
              "accuracy_kept": round(float(np.mean(p_in[kept].argmax(1) == y[kept])), 4)}
print(json.dumps(res))
