# make bench: needs arguments (a run folder, or rows and seeds): see the docstring
"""How steady is the unknown threshold? Re-split a probe run's frozen features and count test rejections.

Usage: python bench/unknown_threshold.py RUN_DIR [SPLITS]

For a run whose best model is the linear probe (frozen backbone: the pooled features do not depend on
the split), the train/validation/test features are computed once, then pooled and re-split at random
SPLITS times (default 200) with the run's split sizes. Each time the kNN threshold is set to accept 95%
of (a) the validation images alone, (b) validation + the training images scored leave-one-out
(ood.fit_detector(pool_training=True)), and the share of the test images it rejects is recorded.
Prints, per way: mean, standard deviation, the 5-95% range and the share of splits rejecting over 6%.
"""
import json
import sys
from pathlib import Path

import numpy as np

from retreino import ood
from retreino.evaluation import labelled_images
from retreino.inference import Predictor
from retreino.models import load_model
from retreino.preprocessing import scale_pixels_np

run = Path(sys.argv[1])
splits = int(sys.argv[2]) if len(sys.argv) > 2 else 200
cfg = json.loads((run / "config.json").read_text())["config"]
pred = Predictor(load_model(run / "fine_tuned_model.keras"), runtime="keras")


def features(paths):
    out = []
    for i in range(0, len(paths), 32):
        x = np.stack([pred.load_pixels(p) for p in paths[i:i + 32]])
        out.append(ood.split_outputs(pred.backend(scale_pixels_np(x, pred.info.preprocessing)), pred._head_units)[1])
    return np.concatenate(out)


parts = [features(labelled_images(cfg["data"], split, None, val_split=cfg["val_split"],
                                  test_split=cfg["test_split"], seed=cfg["seed"]).paths)
         for split in ("train", "validation", "test")]
sizes = [len(p) for p in parts]
pool = np.concatenate(parts)
rng = np.random.default_rng(1)
rejected = {"validation alone": [], "validation + leave-one-out training": []}
for _ in range(splits):
    idx = rng.permutation(len(pool))
    tr, va, te = np.split(pool[idx], np.cumsum(sizes)[:2])
    bank = ood._unit(tr)
    s_val, s_test = ood.knn_score(va, bank), ood.knn_score(te, bank)
    for way, scores in zip(rejected, (s_val, np.r_[s_val, ood.knn_leave_one_out(bank)])):
        rejected[way].append(np.mean(s_test < np.quantile(scores, 1 - ood.DEFAULT_ACCEPT)))
print(f"{run}: train/validation/test {sizes}, {splits} random re-splits, kNN k={ood.KNN_K}, accept 95%")
print(f"{'threshold from':40s} {'mean':>7s} {'sd':>7s} {'5%-95% of splits':>18s} {'splits > 6%':>12s}")
for way, r in rejected.items():
    r = np.array(r)
    lo, hi = np.quantile(r, [0.05, 0.95])
    print(f"{way:40s} {r.mean():7.2%} {r.std():7.2%} {lo:8.1%} - {hi:6.1%} {np.mean(r > 0.06):12.0%}")
