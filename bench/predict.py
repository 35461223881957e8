"""Folder prediction throughput vs the notebook's one-image-at-a-time loop, measured in one run.

The baseline is what the notebook and Teachable Machine's sample code do: for each file, load it,
scale it, and call `model.predict` on a batch of one. `retreino predict FOLDER` streams the same
real photos in batches with parallel decoding, on each runtime asked for (`auto` picks the
fastest checked export when `retreino export` has made one, else Keras).

    .venv/bin/python bench/predict.py                      # water_bottles TM model, real cats/dogs photos
    .venv/bin/python bench/predict.py --model runs/cats --runtimes keras,auto,onnx,tflite
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RETREINO_QUIET", "1")
ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT / "src"))


def per_image_loop(loaded, paths) -> float:
    """The notebook's way: decode, scale, model.predict on one image, for every file. Returns seconds."""
    import numpy as np

    from retreino.data.images import read_image
    from retreino.preprocessing import scale_pixels_np

    model, info = loaded.model, loaded.info
    model.predict(np.zeros((1, *info.input_size, 3), np.float32), verbose=0)  # warm-up, not timed
    start = time.perf_counter()
    for p in paths:
        x = scale_pixels_np(read_image(p, info.input_size)[None].astype(np.float32), info.preprocessing)
        model.predict(x, verbose=0)
    return time.perf_counter() - start


def folder_prediction(loaded, folder, runtime: str, batch_size: int) -> tuple[float, int, str]:
    from retreino.inference import Predictor
    from retreino.prediction import predict_folder

    predictor = Predictor(loaded, runtime=runtime)
    import numpy as np

    predictor.predict_pixels(np.zeros((batch_size, *loaded.info.input_size, 3), np.uint8))  # warm-up / tracing
    start = time.perf_counter()
    rows = predict_folder(predictor, folder, batch_size=batch_size, progress=False, keep_rows=False)
    elapsed = time.perf_counter() - start
    del rows
    return elapsed, batch_size, predictor.runtime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(SHARED / "models" / "teachable_machine" / "water_bottles"))
    ap.add_argument("--images", type=int, default=1000, help="images in the folder to predict")
    ap.add_argument("--loop-images", type=int, default=100, help="images for the (slow) per-image loop")
    ap.add_argument("--runtimes", default="keras,auto", help="comma-separated runtimes to measure")
    ap.add_argument("--batch-size", type=int, default=32, help="the CLI's default")
    args = ap.parse_args()

    from retreino import load_model
    from retreino.errors import RetreinoError

    photos = sorted((SHARED / "datasets" / "cats_vs_dogs").glob("*/*/*.jpg"))
    loaded = load_model(args.model)
    print(f"model    {args.model} ({loaded.info.format}, input {loaded.info.input_size[0]}x{loaded.info.input_size[1]})")
    print(f"machine  {os.cpu_count()} CPU(s); photos: real cats_vs_dogs JPEGs (median about 400x374)")

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        for i in range(args.images):
            os.symlink(photos[i % len(photos)].resolve(), folder / f"{i:06d}.jpg")

        results = []
        loop_s = per_image_loop(loaded, photos[: args.loop_images])
        loop_rate = args.loop_images / loop_s
        results.append(("per-image loop: model.predict(1 image)", args.loop_images, loop_s, loop_rate))
        for runtime in [r.strip() for r in args.runtimes.split(",") if r.strip()]:
            try:
                secs, bs, used = folder_prediction(loaded, folder, runtime, args.batch_size)
            except RetreinoError as exc:
                print(f"skip     runtime {runtime}: {exc}")
                continue
            label = f"retreino predict FOLDER --runtime {runtime}" + (f" ({used})" if used != runtime else "")
            results.append((label + f", batch {bs}", args.images, secs, args.images / secs))

    width = max(len(r[0]) for r in results)
    print()
    print(f"{'method'.ljust(width)}  {'images':>6}  {'seconds':>8}  {'images/s':>8}  {'vs loop':>7}")
    for name, n, secs, rate in results:
        print(f"{name.ljust(width)}  {n:>6}  {secs:>8.2f}  {rate:>8.1f}  {rate / loop_rate:>6.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
