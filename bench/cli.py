"""Wall time of the commands a user types, side by side: the Keras model against its ONNX and TFLite exports.

    .venv/bin/python bench/cli.py [--model PATH] [--exports DIR] [--repeat 3]

Each figure is a fresh `python -m retreino ...` process, timed from launch to exit (or, for
`serve`, from launch to the first `200` on `/health`), as a user would wait for it: Python start,
imports, model loading and the answer. The median of `--repeat` runs is shown with the targets:
one-image predict with an export <= 2 s, serve start with an export <= 5 s, every argument error
<= 1.5 s. The model (default: the real Teachable Machine water_bottles model) is copied to a
temporary folder and exported there to onnx and tflite, unless `--exports` names a folder that
already holds `onnx/` and `tflite/` exports of it.
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
PREDICT_TARGET_S, SERVE_TARGET_S, ERROR_TARGET_S = 2.0, 5.0, 1.5


def retreino(*args: str) -> list[str]:
    return [sys.executable, "-m", "retreino", *args]


def timed(cmd: list[str]) -> tuple[float, int, str]:
    start = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    return time.perf_counter() - start, r.returncode, (r.stderr.strip().splitlines() or [""])[-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_start(model: str, runtime: str | None) -> tuple[float, int, str]:
    """Seconds from launching `retreino serve` to its first healthy answer."""
    port = free_port()
    extra = ["--runtime", runtime] if runtime else []
    start = time.perf_counter()
    proc = subprocess.Popen(retreino("serve", model, "--port", str(port), "--quiet", *extra), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while True:
            if proc.poll() is not None:
                last = (proc.stderr.read().strip().splitlines() or [""])[-1]
                return time.perf_counter() - start, proc.returncode, last
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return time.perf_counter() - start, 0, "healthy"
            except OSError:
                time.sleep(0.05)
            if time.perf_counter() - start > 300:
                return time.perf_counter() - start, -1, "not healthy after 300 s"
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def median_of(repeat: int, fn, *args) -> tuple[float, int, str]:
    runs = [fn(*args) for _ in range(repeat)]
    return statistics.median(r[0] for r in runs), runs[-1][1], runs[-1][2]


def verdict(seconds: float, target: float | None) -> str:
    if target is None:
        return "-"
    return "ok" if seconds <= target else "MISSED"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(SHARED / "models" / "teachable_machine" / "water_bottles"))
    cats = SHARED / "datasets" / "cats_vs_dogs" / "test" / "cats"
    ap.add_argument("--image", default=str(min(cats.glob("*.jpg"), default=cats / "cat.jpg")))
    ap.add_argument("--exports", help="a folder holding onnx/ and tflite/ exports of --model (skips exporting)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure (the median is shown)")
    args = ap.parse_args()
    os.environ.setdefault("RETREINO_QUIET", "1")
    os.environ.setdefault("RETREINO_OFFLINE", "1")

    with tempfile.TemporaryDirectory(prefix="retreino-bench-cli-") as tmp:
        model = Path(args.model)
        if args.exports:
            exports = Path(args.exports)
        else:
            copy = Path(tmp) / model.name
            shutil.copytree(model, copy) if model.is_dir() else shutil.copy(model, copy)
            exports = Path(tmp) / "exports"
            images = str(Path(args.image).parent)
            t = time.perf_counter()
            r = subprocess.run(retreino("export", str(copy), "--format", "onnx,tflite", "--out", str(exports),
                                        "--images", images, "--parity-images", "20", "--no-timing"),
                               capture_output=True, text=True, cwd=ROOT)
            if r.returncode:
                print(r.stderr, file=sys.stderr)
                return 1
            print(f"exported onnx, tflite in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        targets = [("keras", str(model), "keras"), ("onnx", str(exports / "onnx"), None),
                   ("tflite", str(exports / "tflite"), None)]

        rows = []
        for name, path, runtime in targets:
            extra = ["--runtime", runtime] if runtime else []
            target = None if name == "keras" else PREDICT_TARGET_S
            s, rc, last = median_of(args.repeat, timed, retreino("predict", path, args.image, *extra))
            rows.append((f"predict 1 image, {name}", s, target, rc, last))
        for name, path, runtime in targets:
            target = None if name == "keras" else SERVE_TARGET_S
            s, rc, last = median_of(args.repeat, serve_start, path, runtime)
            rows.append((f"serve start to /health, {name}", s, target, rc, last))
        missing = str(Path(tmp) / "no-such-model.onnx")
        for label, cmd in (
            ("error: predict, missing model", retreino("predict", missing, args.image)),
            ("error: predict, missing image", retreino("predict", str(exports / "onnx"), "no-such-photo.jpg")),
            ("error: evaluate, missing --data", retreino("evaluate", str(exports / "onnx"), "--data", "no-such-dir")),
            ("error: serve, missing model", retreino("serve", missing, "--port", "0")),
        ):
            s, rc, last = median_of(args.repeat, timed, cmd)
            rows.append((label, s, ERROR_TARGET_S, rc, last))

    width = max(len(r[0]) for r in rows)
    print(f"retreino CLI wall times on {os.cpu_count()} CPU(s), median of {args.repeat} "
          f"(python {sys.version.split()[0]})")
    print(f"{'command'.ljust(width)}  {'wall s':>7}  {'target':>6}  {'':6}  exit  last line")
    for label, s, target, rc, last in rows:
        t = f"<= {target:g}" if target else "-"
        print(f"{label.ljust(width)}  {s:7.2f}  {t:>6}  {verdict(s, target):6}  {rc:>4}  {last[:90]}")
    return 0 if all(verdict(s, t) != "MISSED" for _, s, t, _, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
