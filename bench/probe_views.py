"""Does a linear probe fitted on augmented views of the training photos beat one fitted on the photos?

Issue 15's recipe fits its probe on the frozen backbone's pooled features of the training photos,
or of the photos plus their mirror images (validation chooses). This bench asks whether more views
help: K augmented copies of each training photo, drawn by the training augmentation itself
(`data.augment.augment_batch`: the notebook's rotation 20 / shifts 0.2 / flip, "notebook"), or a
milder one (rotation 10 / shifts 0.1 / zoom 0.1 / flip, "mild"). Each probe's C is chosen on the
validation split's log loss as the recipe does, and each is scored with and without flip TTA.

It prints VALIDATION figures only (accuracy / log loss): the choice of a recipe is made here, and
`bench/accuracy.py` then measures the chosen recipe on the test split.

    .venv/bin/python bench/probe_views.py                                   # every row
    .venv/bin/python bench/probe_views.py --rows water_bottles:cats_vs_dogs --views 8
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("RETREINO_QUIET", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "src"))

from accuracy import BACKBONES, DATASETS  # noqa: E402

AUGMENTS = {
    "notebook": dict(rotation=20.0, width_shift=0.2, height_shift=0.2, horizontal_flip=True),
    "mild": dict(rotation=10.0, width_shift=0.1, height_shift=0.1, zoom=0.1, horizontal_flip=True),
}


def row(bb: str, dname: str, views: int) -> list[tuple[str, float, float]]:
    import numpy as np

    from retreino.config import AugmentConfig
    from retreino.data import load_dataset
    from retreino.data.augment import augment_batch
    from retreino.data.pipeline import decode_all
    from retreino.models import load_model
    from retreino.models.surgery import feature_extractor
    from retreino.preprocessing import scale_pixels_np
    from retreino.recipe import fit_probe, full_probs, log_loss_over

    loaded = load_model(BACKBONES[bb]["model"], weights=BACKBONES[bb].get("weights"))
    info = loaded.info
    features = feature_extractor(loaded.model)
    ds = load_dataset(DATASETS[dname], warn=False)
    n = len(ds.class_names)

    def pooled(pixels):
        pixels = np.asarray(pixels, np.float32)
        return np.concatenate([np.asarray(features(scale_pixels_np(pixels[i:i + 64], info.preprocessing),
                                                   training=False)) for i in range(0, len(pixels), 64)])

    t0 = time.monotonic()
    train_px = decode_all(ds.train.paths, info.input_size, info.resize, info.interpolation)
    val_px = decode_all(ds.validation.paths, info.input_size, info.resize, info.interpolation)
    ty, vy = np.asarray(ds.train.labels), np.asarray(ds.validation.labels)
    tx, tfx = pooled(train_px), pooled(train_px[:, :, ::-1])
    vx, vfx = pooled(val_px), pooled(val_px[:, :, ::-1])
    aug = {}
    for name, kw in AUGMENTS.items():
        cfg = AugmentConfig(**kw)
        aug[name] = [pooled(np.asarray(augment_batch(train_px, [11, k], cfg))) for k in range(views)]
    print(f"  features of {len(ty)} train / {len(vy)} val photos, {views} views x {len(AUGMENTS)} augmentations: "
          f"{time.monotonic() - t0:.0f} s", flush=True)

    candidates = {"photos": ([tx], 1), "photos+mirror": ([tx, tfx], 2)}
    for name, feats in aug.items():
        candidates[f"photos+mirror+{views} {name}"] = ([tx, tfx, *feats], 2 + views)
        candidates[f"{views} {name} only"] = (feats, views)
    out = []
    for label, (parts, copies) in candidates.items():
        lr, c, probs = fit_probe(np.concatenate(parts), np.tile(ty, copies), vx, vy, n)
        tta = (probs + full_probs(lr, vfx, n)) / 2
        out.append((label, c, float(np.mean(probs.argmax(1) == vy)), log_loss_over(vy, probs, n),
                    float(np.mean(tta.argmax(1) == vy)), log_loss_over(vy, tta, n)))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default=",".join(f"{b}:{d}" for b in BACKBONES for d in DATASETS))
    p.add_argument("--views", type=int, default=8)
    args = p.parse_args()
    for spec in args.rows.split(","):
        bb, dname = spec.split(":")
        print(f"## {bb} {dname} (validation accuracy / log loss)", flush=True)
        print("| probe fitted on | C | as is | flip TTA |\n|---|---|---|---|")
        for label, c, acc, loss, tacc, tloss in row(bb, dname, args.views):
            print(f"| {label} | {c:g} | {acc:.3f} / {loss:.4f} | {tacc:.3f} / {tloss:.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
