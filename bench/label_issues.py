"""Does `check-data --model` find real wrong labels? Seeded noisy copies of two real datasets, recall and precision.

Usage: python bench/label_issues.py [--out /tmp/retreino-label-bench] [--seed 19] [--fraction 0.05]
                                    [--model cats_vs_dogs=MODEL] [--model cat_breeds=MODEL] [--folds 5]

It builds, in --out (never in the repository, never in ../shared):
- cats_vs_dogs/: a copy of ../shared/datasets/cats_vs_dogs/train (700 + 700 real photos) with a
  seeded 5% of its files moved to the other class's folder;
- cat_breeds/: a copy of ../shared/datasets/cat_breeds (801 photos, labels.csv) whose labels.csv has a
  seeded 5% of its rows given another breed (drawn at random among the other four).

then runs the real `retreino check-data DIR --model MODEL --write-fixes plan.csv` on each and compares
its `label_issues.csv` with what was changed: recall = changed files among the suspects / changed
files, precision = changed files among the suspects / suspects. It also checks that no file of the copy
was moved or altered and that the plan proposes the true label for the changed files it names.
Prints one line per dataset side by side and one JSON line with every figure.

The default model is the Teachable Machine water_bottles export for both (the issue's acceptance);
`--model cat_breeds=mobilenet_v2` measures the larger ImageNet MobileNetV2 (the shared weights file is
passed with --weights). Beside what check-data names, it prints the ceiling of the ranking: the best
precision any cut of the out-of-fold self-confidence ranking could reach at 80% recall (cut with the
answer key in hand), which says whether a better cut could ever pass, or only better features.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import random
import shutil
import sys
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CATS_VS_DOGS = SHARED / "datasets" / "cats_vs_dogs" / "train"
CAT_BREEDS = SHARED / "datasets" / "cat_breeds"
WATER_BOTTLES = SHARED / "models" / "teachable_machine" / "water_bottles"
IMAGENET_MOBILENET_V2 = SHARED / "models" / "imagenet" / "mobilenet_v2_1.0_224_no_top.weights.h5"
DEFAULT_MODELS = {"cats_vs_dogs": str(WATER_BOTTLES), "cat_breeds": str(WATER_BOTTLES)}


def noisy_cats_vs_dogs(dst: Path, seed: int = 19, fraction: float = 0.05) -> tuple[Path, dict[str, str]]:
    """dst/{cats,dogs}/: a copy of the real train folder, `fraction` of its files (seeded) in the other folder.

    Returns the folder and {resolved path of each moved file: its true class}.
    """
    if dst.exists():
        shutil.rmtree(dst)
    files = []
    for cls in ("cats", "dogs"):
        (dst / cls).mkdir(parents=True)
        for f in sorted((CATS_VS_DOGS / cls).iterdir()):
            if f.is_file():
                files.append(Path(shutil.copy2(f, dst / cls / f.name)))
    changed = {}
    for f in random.Random(seed).sample(files, round(fraction * len(files))):
        true = f.parent.name
        other = "dogs" if true == "cats" else "cats"
        moved = dst / other / f.name
        if moved.exists():  # the same file name in both classes: keep both, under a new name
            moved = dst / other / f"moved_{f.name}"
        f.rename(moved)
        changed[str(moved.resolve())] = true
    return dst, changed


def noisy_cat_breeds(dst: Path, seed: int = 19, fraction: float = 0.05) -> tuple[Path, dict[str, str]]:
    """dst/images/ + dst/labels.csv: a copy whose labels.csv has `fraction` of its rows (seeded) relabelled.

    Only rows whose image exists are drawn (a row without an image is no label to find). Returns the
    folder and {resolved path of each relabelled image: its true breed}.
    """
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(CAT_BREEDS / "images", dst / "images")
    with open(CAT_BREEDS / "labels.csv", newline="", encoding="utf-8") as fh:
        header, *rows = list(csv.reader(fh))
    breeds = sorted({r[1] for r in rows})
    usable = [i for i, r in enumerate(rows) if (dst / "images" / r[0]).is_file()]
    rng = random.Random(seed)
    changed = {}
    for i in rng.sample(usable, round(fraction * len(usable))):
        name, true = rows[i]
        rows[i] = [name, rng.choice([b for b in breeds if b != true])]
        changed[str((dst / "images" / name).resolve())] = true
    with open(dst / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([header, *rows])
    return dst, changed


def _listing(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if p.is_file()}


def measure(name: str, root: Path, changed: dict[str, str], model: str, out: Path, folds: int,
            weights: str | None) -> dict:
    """Run `retreino check-data ROOT --model MODEL` and score its suspects against the changed files."""
    from retreino.cli import main

    report = out / f"{name}-report"
    shutil.rmtree(report, ignore_errors=True)
    report.mkdir(parents=True)
    plan = report / "plan.csv"
    cache = out / "feature-cache"
    argv = ["check-data", str(root), "--model", model, "--out", str(report), "--write-fixes", str(plan),
            "--folds", str(folds), "--feature-cache", str(cache)]
    if weights:
        argv += ["--weights", weights]
    before = _listing(root)
    t0 = time.perf_counter()
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = main(argv)
    seconds = time.perf_counter() - t0
    summary = next((line for line in err.getvalue().splitlines() if "suspect label(s)" in line), "")
    untouched = _listing(root) == before
    with open(report / "label_issues.csv", newline="", encoding="utf-8") as fh:
        suspects = {str((root / r["path"]).resolve()): r for r in csv.DictReader(fh)}
    found = set(suspects) & set(changed)
    with open(plan, newline="", encoding="utf-8") as fh:
        plan_rows = list(csv.DictReader(fh))
    proposes_truth = sum(suspects[f]["likely"] == changed[f] for f in found)
    ceiling = _ceiling(root, changed, model, weights, folds, cache)
    return {"dataset": name, "model": Path(model).name if Path(model).exists() else model, "rc": rc,
            "images": len(before) - (1 if (root / "labels.csv").exists() else 0), "changed": len(changed),
            "suspects": len(suspects), "found": len(found), "recall": len(found) / max(len(changed), 1),
            "precision": len(found) / max(len(suspects), 1), "true_label_proposed": proposes_truth,
            "plan_rows": len(plan_rows), "plan_actions": sorted({r["action"] for r in plan_rows}),
            "files_untouched": untouched, "seconds": round(seconds, 1), "summary": summary, **ceiling}


def _ceiling(root: Path, changed: dict[str, str], model: str, weights: str | None, folds: int, cache: Path,
             recall: float = 0.8) -> dict:
    """The same out-of-fold probabilities (features from the cache): the best precision at `recall` of any cut."""
    import numpy as np

    from retreino.data.label_issues import find_label_issues
    from retreino.prediction import as_loaded

    issues = find_label_issues(root, as_loaded(model, weights=weights), folds=folds, cache_dir=cache,
                               progress=False)
    noisy = np.array([str(Path(p).resolve()) in changed for p in issues.paths])
    self_confidence = issues.pred_probs[np.arange(len(noisy)), issues.labels]
    hits = np.cumsum(noisy[np.argsort(self_confidence, kind="stable")])
    need = int(np.ceil(recall * noisy.sum()))
    cut = int(np.argmax(hits >= need)) + 1
    true = np.array([issues.class_names.index(changed[str(Path(p).resolve())]) if n else int(y)
                     for p, y, n in zip(issues.paths, issues.labels, noisy)])
    return {"oof_accuracy_given": issues.oof_accuracy,
            "oof_accuracy_true": float(np.mean(issues.pred_probs.argmax(axis=1) == true)),
            "ceiling_cut": cut, "ceiling_precision": need / cut}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/retreino-label-bench", help="scratch folder for the noisy copies")
    ap.add_argument("--seed", type=int, default=19)
    ap.add_argument("--fraction", type=float, default=0.05)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--model", action="append", default=[], metavar="DATASET=MODEL",
                    help=f"model per dataset (default: {DEFAULT_MODELS})")
    ap.add_argument("--only", choices=sorted(DEFAULT_MODELS), help="measure one dataset")
    args = ap.parse_args(argv)
    models = dict(DEFAULT_MODELS)
    for item in args.model:
        key, _, value = item.partition("=")
        if key not in models or not value:
            ap.error(f"--model {item!r}: expected one of {', '.join(models)}=MODEL")
        models[key] = value
    out = Path(args.out)
    makers = {"cats_vs_dogs": noisy_cats_vs_dogs, "cat_breeds": noisy_cat_breeds}
    rows = []
    for name, make in makers.items():
        if args.only and name != args.only:
            continue
        root, changed = make(out / name, seed=args.seed, fraction=args.fraction)
        model = models[name]
        weights = str(IMAGENET_MOBILENET_V2) if not Path(model).exists() else None
        rows.append(measure(name, root, changed, model, out, args.folds, weights))
    print(f"{'dataset':<13} {'model':<14} {'images':>6} {'changed':>7} {'suspects':>8} {'found':>5} "
          f"{'recall':>6} {'precision':>9} {'true label':>10} {'untouched':>9} {'seconds':>7} "
          f"{'acc(true)':>9} {'ceiling@0.8':>11}")
    for r in rows:
        print(f"{r['dataset']:<13} {r['model']:<14} {r['images']:>6} {r['changed']:>7} {r['suspects']:>8} "
              f"{r['found']:>5} {r['recall']:>6.2f} {r['precision']:>9.2f} {r['true_label_proposed']:>10} "
              f"{str(r['files_untouched']):>9} {r['seconds']:>7} {r['oof_accuracy_true']:>9.3f} "
              f"{r['ceiling_precision']:>6.2f} ({r['ceiling_cut']})")
    for r in rows:
        print(f"  {r['dataset']}: {r['summary']}")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
