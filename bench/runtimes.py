"""Batch-1 latency and batch-32 throughput of each runtime, side by side, on this machine.

    .venv/bin/python bench/runtimes.py [--model PATH] [--runs 50] [--images DIR]

Exports the model (default: the real Teachable Machine water_bottles model) to onnx, tflite
and tflite-int8 in a temporary folder, then times every runtime on the same real images in one
process, so the ratios compare like with like. Latency is the median of `--runs` single-image
calls after warm-up; throughput is images per second over batches of 32.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(SHARED / "models" / "teachable_machine" / "water_bottles"))
    ap.add_argument("--images", default=str(SHARED / "datasets" / "cats_vs_dogs" / "test"))
    ap.add_argument("--runs", type=int, default=50, help="batch-1 calls timed per runtime")
    ap.add_argument("--batches", type=int, default=5, help="batches of 32 timed per runtime")
    args = ap.parse_args()
    os.environ.setdefault("RETREINO_QUIET", "1")

    import numpy as np

    from retreino import load_model
    from retreino.data.images import read_image
    from retreino.export import export_models
    from retreino.preprocessing import scale_pixels_np
    from retreino.runtimes import KerasRuntime, load_runtime

    loaded = load_model(args.model)
    images = sorted(p for p in Path(args.images).rglob("*.jpg"))
    pixels = np.stack([read_image(p, loaded.info.input_size) for p in images[:: max(1, len(images) // 32)][:32]])
    x = scale_pixels_np(pixels, loaded.info.preprocessing)

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        results = export_models(loaded, ["onnx", "tflite", "tflite-int8"], tmp, images=args.images, measure=False)
        print(f"exported onnx, tflite, tflite-int8 in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        runtimes = [("keras", KerasRuntime(loaded.model, loaded.info), None)]
        runtimes += [(r.format, load_runtime(r.folder), r) for r in results]

        rows = []
        for name, rt, result in runtimes:
            lat = _latency(rt, x[:1], args.runs)
            thr = _throughput(rt, x, args.batches)
            size = result.file.stat().st_size / 1e6 if result else _keras_size(loaded)
            check = "-" if result is None else (
                f"top-1 {result.parity['top1_agreement']:.0%}" if name == "tflite-int8"
                else f"max |diff| {result.parity['max_abs_diff']:.1e}")
            rows.append((name, lat, thr, size, check))

    keras_lat, keras_thr = rows[0][1], rows[0][2]
    from retreino.console import table

    print(f"model: {Path(args.model).name} ({loaded.info.input_size[0]}x{loaded.info.input_size[1]}), "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"median of {args.runs} batch-1 calls, {args.batches} batches of 32")
    print(table(
        [(n, f"{lat:.2f}", f"{keras_lat / lat:.1f}x", f"{thr:.0f}", f"{thr / keras_thr:.1f}x", f"{size:.2f}", c)
         for n, lat, thr, size, c in rows],
        ["runtime", "batch-1 ms", "vs keras", "batch-32 img/s", "vs keras", "file MB", "parity vs keras"],
        align="lrrrrrl",
    ))
    return 0


def _latency(rt, x1, runs: int) -> float:
    from retreino.export import median_latency_ms

    return median_latency_ms(rt, x1, runs, warmup=5)


def _throughput(rt, x, batches: int) -> float:
    rt(x)
    t = time.perf_counter()
    for _ in range(batches):
        rt(x)
    return batches * len(x) / (time.perf_counter() - t)


def _keras_size(loaded) -> float:
    source = Path(loaded.info.source)
    return source.stat().st_size / 1e6 if source.is_file() else float("nan")


if __name__ == "__main__":
    sys.exit(main())
