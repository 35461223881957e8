"""A 10,000-image studio project, end to end through the studio's HTTP API: open, list, thumbnails, train.

    .venv/bin/python bench/studio.py [--images 10000] [--epochs 1] [--keep DIR]

The project is `cats/` and `dogs/` filled with hard links to the 2,000 photos of ../shared's
cats_vs_dogs under distinct names (5 names per photo for 10,000: duplicates, so the validation
figure says nothing about accuracy; the point is that such a project opens and trains). Prints, side
by side: building the project, the studio's start, the class listing, the first page of names,
100 cold and 100 cached thumbnails, and the training job's wall time with its epochs.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
PHOTOS = SHARED / "datasets" / "cats_vs_dogs"
MODEL = SHARED / "models" / "teachable_machine" / "water_bottles"


def build(project: Path, n: int) -> None:
    photos = sorted(PHOTOS.glob("*/*/*.jpg"))
    for cls in ("cats", "dogs"):
        (project / cls).mkdir(parents=True)
    for i in range(n):
        src = photos[i % len(photos)]
        os.link(src, project / src.parent.name / f"{i:05d}-{src.name}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--keep", metavar="DIR", help="build the project here and keep it (default: a temporary folder)")
    args = ap.parse_args()
    where = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="retreino-studio-bench-"))
    project = where / "project"
    rows = []
    t = time.perf_counter()
    build(project, args.images)
    rows.append(("build the project (hard links)", time.perf_counter() - t, f"{args.images:,} images"))
    log = where / "studio.log"
    env = {**os.environ, "RETREINO_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}
    t = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "retreino", "studio", str(project), "--port", "0", "--model", str(MODEL)],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        while not re.search(r"page\s+(http://\S+)/", log.read_text()):
            if proc.poll() is not None:
                raise SystemExit(log.read_text())
            time.sleep(0.05)
        url = re.search(r"page\s+(http://\S+)/", log.read_text()).group(1)
        with httpx.Client(base_url=url, timeout=600) as c:
            c.get("/api/project").raise_for_status()
            rows.append(("studio start to first answer", time.perf_counter() - t, ""))
            t = time.perf_counter()
            classes = c.get("/api/classes").json()
            rows.append(("GET /api/classes", time.perf_counter() - t, ", ".join(f"{x['name']} {x['count']:,}" for x in classes)))
            t = time.perf_counter()
            names = c.get("/api/classes/cats/images?offset=0&limit=500").json()["names"]
            rows.append(("GET first 500 names", time.perf_counter() - t, ""))
            for label in ("100 thumbnails, cold", "100 thumbnails, cached"):
                t = time.perf_counter()
                for name in names[:100]:
                    c.get(f"/api/classes/cats/images/{name}/thumb").raise_for_status()
                rows.append((label, time.perf_counter() - t, "one after another"))
            t = time.perf_counter()
            job = c.post("/api/train", json={"epochs": args.epochs, "name": "bench"}).json()["job"]
            while True:
                try:
                    snap = c.get("/api/runs").json()
                except httpx.TransportError:  # an idle keep-alive connection closed by the server as we sent: ask again
                    time.sleep(1)
                    continue
                if snap["job"]["status"] != "running":
                    break
                time.sleep(2)
            wall = time.perf_counter() - t
            run = next(r for r in snap["runs"] if r["name"] == job["run"])
            epochs = "; ".join(f"{h['phase']} {h['seconds']:.0f} s val_acc {h['val_accuracy']:.3f}" for h in run["history"])
            rows.append((f"train job ({snap['job']['status']})", wall, epochs))
    finally:
        proc.terminate()
        proc.wait(30)
        if not args.keep:
            shutil.rmtree(where, ignore_errors=True)
    width = max(len(r[0]) for r in rows)
    print(f"{'step'.ljust(width)}  {'seconds':>8}  notes")
    for name, seconds, note in rows:
        print(f"{name.ljust(width)}  {seconds:8.2f}  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
