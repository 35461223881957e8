"""Peak memory and throughput of `train` (1 epoch) and `predict` as the number of images grows.

    python bench/scale.py                       # 2,000, 10,000 and 30,000 images (heavy: hours on 2 cores)
    python bench/scale.py --sizes 200,1000      # a quick look
    python bench/scale.py --cache-mb 64         # force the over-budget path (memory-mapped spill)
    python bench/scale.py --skip-predict        # train only (--skip-train: predict only)

A folder of N images is made of the shared cats_vs_dogs photos repeated under distinct names
(hard links where the file system allows, else symbolic links), half cats and half dogs, with a
validation/ split of 10%. Each measurement is a fresh `python -m retreino ...` process; its peak RSS
is the child's ru_maxrss as seen by a small launcher process, so the bench's own memory never
counts. The acceptance target: peak RSS at the largest size within 1.2x of the smallest.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
PHOTOS = SHARED / "datasets" / "cats_vs_dogs"
MODEL = SHARED / "models" / "teachable_machine" / "water_bottles"

LAUNCHER = r"""
import json, resource, subprocess, sys, time
t0 = time.monotonic()
rc = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(json.dumps({"rc": rc, "seconds": time.monotonic() - t0,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def make_folder(root: Path, n: int) -> Path:
    """root/{train,validation}/{cats,dogs}/ with n images in all (90% train)."""
    sources = {c: sorted((PHOTOS / "train" / c).glob("*.jpg")) for c in ("cats", "dogs")}
    for i in range(n):
        cls = "cats" if i % 2 == 0 else "dogs"
        split = "validation" if i % 10 == 9 else "train"
        src = sources[cls][(i // 2) % len(sources[cls])]
        dst = root / split / cls / f"{i:06d}_{src.name}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            os.symlink(src, dst)
    return root


def measure(cmd: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-c", LAUNCHER, *cmd], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="2000,10000,30000")
    ap.add_argument("--cache-mb", type=int, default=None, help="--cache-mb for train (default: retreino's)")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--skip-predict", action="store_true")
    ap.add_argument("--out", default=None, help="also write the rows as JSON")
    args = ap.parse_args()
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        with tempfile.TemporaryDirectory(prefix="retreino-scale-") as tmp:
            data = make_folder(Path(tmp) / "data", n)
            py = [sys.executable, "-m", "retreino"]
            if not args.skip_predict:
                pred = measure(py + ["predict", str(MODEL), str(data), "--out", f"{tmp}/p.csv"])
                rows.append({"images": n, "job": "predict", **pred, "images_per_s": n / pred["seconds"]})
                print(json.dumps(rows[-1]), flush=True)
            if not args.skip_train:
                cmd = py + ["train", "--model", str(MODEL), "--data", str(data), "--epochs", "1",
                            "--warmup-epochs", "0", "--runs-dir", f"{tmp}/runs", "--no-augment", "--test-split", "0"]
                if args.cache_mb is not None:
                    cmd += ["--cache-mb", str(args.cache_mb)]
                tr = measure(cmd)
                rows.append({"images": n, "job": "train", **tr, "images_per_s": n / tr["seconds"]})
                print(json.dumps(rows[-1]), flush=True)
    for job in ("predict", "train"):
        mine = [r for r in rows if r["job"] == job]
        if len(mine) > 1:
            ratio = mine[-1]["peak_rss_mb"] / mine[0]["peak_rss_mb"]
            print(f"{job}: peak RSS {mine[-1]['images']} vs {mine[0]['images']} images: {ratio:.2f}x "
                  f"({'within' if ratio <= 1.2 else 'OVER'} 1.2x)")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
