"""Accuracy: the notebook's recipe vs a linear probe vs `retreino train` defaults, same splits, side by side.

For each starting model (the `water_bottles` Teachable Machine export, MobileNetV2 alpha 0.35; Keras'
`mobilenet_v2` with the ImageNet weights in ../shared) and each dataset of ../shared
(cats_vs_dogs with its own splits; flowers, 5 classes, split by the tool; cat_breeds, labels from
labels.csv), three ways to train a classifier, each scored on the same untouched test split:

- **notebook**: `retreino train --head-init warmup --resize stretch --tta off --unfreeze 5 --lr 1e-5`, i.e.
  the defaults before issue 15 (the notebook's settings: 3 head-only warm-up epochs at 1e-3, then the last 5
  layers at 1e-5 for 10 epochs with EarlyStopping / ReduceLROnPlateau / best checkpoint, photos stretched);
- **linear probe**: scikit-learn `LogisticRegression` on the backbone's pooled features (photos
  fitted by the model's own contract: center crop for Teachable Machine), C chosen on the
  validation split's log loss, no augmentation;
- **defaults**: `retreino train` with its defaults (linear probe head, then fine-tuning; see
  docs/accuracy.md), then `retreino evaluate --run`;
- **lp-ft-5** (not in the default set): the defaults of Dec 2 2026, the linear probe then the notebook's last 5
  layers at 1e-5 (`--unfreeze 5 --lr 1e-5`): the "today's" that the deeper defaults' wall time is held to.

Each `retreino train` row also records the best epoch's validation accuracy and loss (the figures the recipe
was chosen on), and whether the head was refitted after fine-tuning won (`head_refit`, with its validation
figures in `refit_val`: docs/accuracy.md).

Test accuracy, test loss (mean cross-entropy) and training wall time for each; a markdown table on
stdout and one JSON line per result in --out (appended as they finish, so a long run keeps its rows).

    .venv/bin/python bench/accuracy.py                              # every row (long: ~1 h on 2 busy cores)
    .venv/bin/python bench/accuracy.py --rows water_bottles:cats_vs_dogs --methods probe,defaults

`--resplit 1,2,3` measures the same rows on fresh splits instead: each dataset's images pooled and drawn again at
random (stratified by class, the split sizes kept, scikit-learn `train_test_split` with that seed), written as
train/validation/test folders of hard links; every method of a row sees the same draw. The table then gives, per
row and method, the mean and standard deviation over the draws, and how often defaults >= the probe. On test
splits of 124-300 photos one photo is 0.3-0.8 points; a mean over draws says which recipe is better, one draw
says little.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RETREINO_QUIET", "1")
ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT / "src"))

BACKBONES = {
    "water_bottles": dict(model=str(SHARED / "models" / "teachable_machine" / "water_bottles")),
    "mobilenet_v2": dict(model="mobilenet_v2",
                         weights=str(SHARED / "models" / "imagenet" / "mobilenet_v2_1.0_224_no_top.weights.h5")),
}
DATASETS = {name: str(SHARED / "datasets" / name) for name in ("cats_vs_dogs", "flowers", "cat_breeds")}
METHODS = ("notebook", "probe", "defaults")
EXTRA_METHODS = ("lp-ft-5",)


def linear_probe(backbone: dict, data: str) -> dict:
    """LogisticRegression on pooled features, C by validation log loss -> test accuracy and loss."""
    import numpy as np

    from retreino.data import load_dataset
    from retreino.data.pipeline import decode_all
    from retreino.evaluation import compute_metrics
    from retreino.models import load_model
    from retreino.models.surgery import feature_extractor
    from retreino.preprocessing import scale_pixels_np
    from retreino.recipe import C_GRID, fit_probe, full_probs

    start, cpu = time.perf_counter(), time.process_time()
    loaded = load_model(backbone["model"], weights=backbone.get("weights"))
    info = loaded.info
    features = feature_extractor(loaded.model)
    ds = load_dataset(data, warn=False)

    def pooled(split):
        pixels = decode_all(split.paths, info.input_size, info.resize, info.interpolation)
        out = [np.asarray(features(scale_pixels_np(pixels[i:i + 64], info.preprocessing), training=False))
               for i in range(0, len(pixels), 64)]
        return np.concatenate(out), np.asarray(split.labels)

    (tx, ty), (vx, vy) = pooled(ds.train), pooled(ds.validation)
    n = len(ds.class_names)
    lr, c, _ = fit_probe(tx, ty, vx, vy, n, grid=C_GRID)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    ex, ey = pooled(ds.test)
    m = compute_metrics(ey, full_probs(lr, ex, n), list(ds.class_names))
    return {"accuracy": m["accuracy"], "loss": m["loss"], "wall_s": wall, "cpu_s": cpu, "C": c, "resize": info.resize}


def retreino_run(backbone: dict, data: str, runs: Path, name: str, **overrides) -> dict:
    from retreino import evaluate, train

    start, cpu = time.perf_counter(), time.process_time()
    run = train(model=backbone["model"], weights=backbone.get("weights"), data=data, runs_dir=str(runs), name=name,
                printer=None, **overrides)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    m = evaluate(run=run.dir, progress=False, report=False).metrics
    best = run.history[run.best_epoch - 1] if run.best_epoch else {}
    calibration = run.dir / "calibration.json"  # the head refitted after fine-tuning won (recipe.refit_head)
    refit = (json.loads(calibration.read_text()).get("head_refit") if calibration.exists() else None) or {}
    return {"accuracy": m["accuracy"], "loss": m["loss"], "wall_s": wall, "cpu_s": cpu, "best_epoch": run.best_epoch,
            "epochs": len(run.history), "best_phase": best.get("phase"), "tta": run.best_model.info.tta,
            "val_accuracy": best.get("val_accuracy"), "val_loss": best.get("val_loss"),
            "head_refit": refit.get("kept"), **({"refit_val": refit["after"]} if refit.get("kept") else {})}


def resplit(data: str, seed: int, into: Path) -> str:
    """`data`'s images split again at random (same sizes, stratified), as folders of hard links under `into`."""
    import shutil

    import numpy as np
    from sklearn.model_selection import train_test_split

    from retreino.data import load_dataset

    ds = load_dataset(data, warn=False)
    paths = [p for s in (ds.train, ds.validation, ds.test) for p in s.paths]
    labels = np.concatenate([ds.train.labels, ds.validation.labels, ds.test.labels])
    rest, test, rest_y, test_y = train_test_split(paths, labels, test_size=len(ds.test), stratify=labels,
                                                  random_state=seed)
    train, val, train_y, val_y = train_test_split(rest, rest_y, test_size=len(ds.validation), stratify=rest_y,
                                                  random_state=seed)
    root = into / f"{Path(data).name}-split{seed}"
    shutil.rmtree(root, ignore_errors=True)
    for split, files, ys in (("train", train, train_y), ("validation", val, val_y), ("test", test, test_y)):
        for i, (src, y) in enumerate(zip(files, ys)):
            folder = root / split / ds.class_names[y]
            folder.mkdir(parents=True, exist_ok=True)
            dst = folder / f"{i:05d}-{Path(src).name}"  # numbered: two classes' folders may hold the same file name
            try:
                os.link(src, dst)
            except OSError:  # another file system
                shutil.copyfile(src, dst)
    return str(root)


def measure(method: str, bb: str, dname: str, runs: Path, overrides: dict | None = None, data: str | None = None) -> dict:
    backbone, data = BACKBONES[bb], data or DATASETS[dname]
    if overrides:  # a candidate default, measured on the same rows (docs/accuracy.md: chosen on validation)
        return retreino_run(backbone, data, runs, f"{bb}-{dname}-candidate", **overrides)
    if method == "probe":
        return linear_probe(backbone, data)
    if method == "notebook":
        return retreino_run(backbone, data, runs, f"{bb}-{dname}-notebook", head_init="warmup", resize="stretch",
                            tta="off", unfreeze=5, learning_rate=1e-5)
    if method == "lp-ft-5":
        return retreino_run(backbone, data, runs, f"{bb}-{dname}-lp-ft-5", unfreeze=5, learning_rate=1e-5)
    return retreino_run(backbone, data, runs, f"{bb}-{dname}-defaults")


def table(results: list[dict]) -> str:
    rows = {}
    for r in results:
        rows.setdefault((r["backbone"], r["data"]), {})[r["method"]] = r
    seen = list(dict.fromkeys(r["method"] for r in results))
    methods = METHODS + tuple(m for m in seen if m not in METHODS)
    titles = {"notebook": "notebook's recipe", "probe": "linear probe", "defaults": "`retreino train` defaults",
              "lp-ft-5": "probe + last 5 at 1e-5 (Dec 2 defaults)"}
    lines = ["| starting model | data | " + " | ".join(f"{titles.get(m, m)}: acc / loss / wall / CPU" for m in methods) + " |",
             "|---|---|" + "---|" * len(methods)]
    for (bb, dname), by in rows.items():
        cells = []
        for method in methods:
            r = by.get(method)
            cpu = f" / {r['cpu_s']:.0f} s" if r and r.get("cpu_s") is not None else ""
            cells.append(f"{r['accuracy']:.3f} / {r['loss']:.4f} / {r['wall_s']:.0f} s{cpu}" if r else "-")
        lines.append(f"| {bb} | {dname} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def resplit_table(results: list[dict]) -> str:
    """Mean +- sd over the draws of --resplit, per row and method, and defaults >= probe counted per draw."""
    import numpy as np

    by: dict = {}
    for r in results:
        if r.get("split_seed") is not None:
            by.setdefault((r["backbone"], r["data"]), {}).setdefault(r["method"], {})[r["split_seed"]] = r
    lines = ["| starting model | data | method | draws | test accuracy mean (sd) | test loss mean (sd) | wall mean |",
             "|---|---|---|---|---|---|---|"]
    for (bb, dname), methods in by.items():
        for method, draws in methods.items():
            acc = np.array([d["accuracy"] for d in draws.values()])
            loss = np.array([d["loss"] for d in draws.values()])
            wall = np.mean([d["wall_s"] for d in draws.values()])
            lines.append(f"| {bb} | {dname} | {method} | {len(draws)} | {acc.mean():.4f} ({acc.std(ddof=1) if len(acc) > 1 else 0:.4f}) "
                         f"| {loss.mean():.4f} ({loss.std(ddof=1) if len(loss) > 1 else 0:.4f}) | {wall:.0f} s |")
        if "probe" in methods and "defaults" in methods:
            both = sorted(set(methods["probe"]) & set(methods["defaults"]))
            d, p = methods["defaults"], methods["probe"]
            wins_acc = sum(d[s]["accuracy"] >= p[s]["accuracy"] for s in both)
            wins_loss = sum(d[s]["loss"] <= p[s]["loss"] for s in both)
            lines.append(f"| {bb} | {dname} | defaults vs probe, per draw | {len(both)} | accuracy >= probe in {wins_acc} "
                         f"| loss <= probe in {wins_loss} | |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", help="comma-separated backbone:dataset pairs (default: all six)")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS + EXTRA_METHODS)}")
    ap.add_argument("--out", default="accuracy.jsonl", help="JSON lines, appended (default accuracy.jsonl)")
    ap.add_argument("--table-only", action="store_true", help="print the table of --out and stop")
    ap.add_argument("--keep", metavar="DIR", help="keep the run folders in DIR (default: a temporary folder, deleted), "
                    "e.g. to evaluate the same runs again with --ood")
    ap.add_argument("--resplit", metavar="SEEDS", help="comma-separated seeds: measure on fresh random splits of the "
                    "same images (same sizes, stratified), one per seed, and print mean and sd over them")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="a candidate default: TrainConfig fields over the defaults, run as the one method "
                         "'defaults[FIELD=VALUE,...]' (repeatable; values parsed as JSON, else strings)")
    args = ap.parse_args()
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    out = Path(args.out)
    if not args.table_only:
        pairs = ([tuple(p.split(":")) for p in args.rows.split(",")] if args.rows
                 else [(b, d) for b in BACKBONES for d in DATASETS])
        methods = [m for m in args.methods.split(",") if m]
        if overrides:
            methods = ["defaults[" + ",".join(args.set) + "]"]
        keep = contextlib.nullcontext(args.keep) if args.keep else None
        with keep or tempfile.TemporaryDirectory(prefix="retreino-bench-acc-") as tmp:
            seeds = [int(s) for s in args.resplit.split(",")] if args.resplit else [None]
            for seed in seeds:
                for bb, dname in pairs:
                    data = resplit(DATASETS[dname], seed, Path(tmp)) if seed is not None else None
                    for method in methods:
                        r = {"backbone": bb, "data": dname, "method": method,
                             **({"split_seed": seed} if seed is not None else {}),
                             **measure(method, bb, dname, Path(tmp) / (f"split{seed}" if seed is not None else ""),
                                       overrides, data)}
                        with out.open("a", encoding="utf-8") as fh:
                            fh.write(json.dumps(r) + "\n")
                        print(json.dumps(r), flush=True)
    results = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines() if line.strip()]
    if any(r.get("split_seed") is not None for r in results):
        print(resplit_table(results))
    else:
        print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
