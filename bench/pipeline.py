"""Input pipeline throughput: retreino's tf.data pipeline vs the notebook's ImageDataGenerator.

    .venv/bin/python bench/pipeline.py [--data ../shared/datasets/cats_vs_dogs/train] [--epochs 2]

Every line decodes, resizes to 224x224 and augments with the notebook's settings (rotation 20,
width/height shift 0.2, horizontal flip) one full epoch of the training folder, batch 32, and
only consumes the batches (no model), all in this one process so the figures are comparable.
Lines:

- ImageDataGenerator.flow_from_directory (Keras 2, tf_keras): the notebook's reference;
- retreino streaming (cache=False): every epoch decodes the files again;
- retreino cached, first epoch: decoding the split into memory plus one augmented epoch;
- retreino cached, next epochs: augmented batches from the in-memory uint8 images;
- the same cached epochs with the warp on TensorFlow's ImageProjectiveTransformV3 kernel
  (RETREINO_AUGMENT_BACKEND=tf) and with Keras 3 preprocessing layers (one resampling per
  layer), to show where the speed comes from.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("RETREINO_QUIET", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from retreino import _env  # noqa: E402

tf = _env.import_tensorflow()

from retreino.config import AugmentConfig  # noqa: E402
from retreino.data import load_dataset, make_pipeline  # noqa: E402

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cats_vs_dogs" / "train"


def drain(batches) -> int:
    n = 0
    for b in batches:
        x = b[0] if isinstance(b, tuple) else b
        n += int(x.shape[0])
    return n


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed(fn):
    """(images, wall seconds, CPU seconds of this process, all threads)."""
    t, c = time.perf_counter(), cpu_seconds()
    n = fn()
    return n, time.perf_counter() - t, cpu_seconds() - c


def image_data_generator(root: Path, limit: int):
    from tf_keras.preprocessing.image import ImageDataGenerator

    gen = ImageDataGenerator(rescale=1.0 / 255, rotation_range=20, width_shift_range=0.2,
                             height_shift_range=0.2, horizontal_flip=True)
    flow = gen.flow_from_directory(str(root), target_size=(224, 224), batch_size=32, class_mode="categorical", seed=1)
    steps = min(len(flow), -(-limit // 32))
    n = 0
    for _ in range(steps):
        x, _ = next(flow)
        n += len(x)
    return n


def keras_layers_epoch(ds, cfg: AugmentConfig):  # -> timed(...)
    """Cached uint8 images through Keras 3 RandomRotation + RandomTranslation + RandomFlip."""
    import keras

    aug = keras.Sequential([
        keras.layers.RandomRotation(cfg.rotation / 360.0, fill_mode="nearest"),
        keras.layers.RandomTranslation(cfg.height_shift, cfg.width_shift, fill_mode="nearest"),
        keras.layers.RandomFlip("horizontal"),
    ])
    pipe = make_pipeline(ds.train, training=True, augment=None, preprocessing="raw", batch_size=32)
    pipe = pipe.map(lambda x, y: (aug(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    drain(pipe)  # fill caches, trace
    return timed(lambda: drain(pipe))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT), help="folder of class sub-folders (default: cats_vs_dogs/train)")
    ap.add_argument("--epochs", type=int, default=2, help="cached epochs to average (default 2)")
    ap.add_argument("--idg-images", type=int, default=100_000, help="stop ImageDataGenerator after this many images")
    args = ap.parse_args()
    root = Path(args.data)
    cfg = AugmentConfig()  # the notebook's rotation/shift/flip

    ds = load_dataset(root, val_split=0.0, test_split=0.0, warn=False)
    n_files = len(ds.train)
    print(f"data: {root}  ({n_files} images, {ds.num_classes} classes), 224x224, batch 32, "
          f"augmentation: rotation {cfg.rotation:g}, shifts {cfg.width_shift:g}/{cfg.height_shift:g}, flip")
    print(f"machine: {os.cpu_count()} CPU cores, TensorFlow {tf.__version__}")
    rows = []

    idg = timed(lambda: image_data_generator(root, args.idg_images))
    rows.append(("ImageDataGenerator.flow_from_directory (Keras 2)", *idg))
    idg_rate, idg_cpu = idg[0] / idg[1], idg[2] / idg[0]

    stream = make_pipeline(ds.train, training=True, augment=cfg, cache=False)
    rows.append(("retreino streaming (cache=False), per epoch", *timed(lambda: drain(stream))))

    def first_epoch():
        global cached
        cached = make_pipeline(ds.train, training=True, augment=cfg, cache=True)
        return drain(cached)

    rows.append(("retreino cached, first epoch (decode + epoch)", *timed(first_epoch)))
    total, secs, cpu = 0, 0.0, 0.0
    for _ in range(args.epochs):
        n, dt, c = timed(lambda: drain(cached))
        total, secs, cpu = total + n, secs + dt, cpu + c
    rows.append((f"retreino cached, next epochs (mean of {args.epochs})", total, secs, cpu))

    os.environ["RETREINO_AUGMENT_BACKEND"] = "tf"
    tf_warp = make_pipeline(ds.train, training=True, augment=cfg, cache=True)
    drain(tf_warp)
    rows.append(("  same, warp on TF ImageProjectiveTransformV3", *timed(lambda: drain(tf_warp))))
    del os.environ["RETREINO_AUGMENT_BACKEND"]
    rows.append(("  same, Keras 3 layers (Rotation+Translation+Flip)", *keras_layers_epoch(ds, cfg)))

    width = max(len(r[0]) for r in rows)
    print()
    print(f"{'pipeline'.ljust(width)}  {'images':>7}  {'seconds':>8}  {'images/s':>9}  {'vs IDG':>7}  {'CPU ms/img':>10}  {'vs IDG':>7}")
    print(f"{'-' * width}  {'-' * 7}  {'-' * 8}  {'-' * 9}  {'-' * 7}  {'-' * 10}  {'-' * 7}")
    for name, n, dt, cpu in rows:
        rate, per = n / dt, cpu / n
        print(f"{name.ljust(width)}  {n:>7}  {dt:>8.2f}  {rate:>9.0f}  {rate / idg_rate:>6.1f}x  {per * 1000:>10.2f}  {idg_cpu / per:>6.1f}x")
    load = os.getloadavg()[0]
    print("\nimages/s is wall-clock throughput; CPU ms/img is this process's CPU time per image (all threads),")
    print(f"which other work on the machine barely moves. Load average at the end: {load:.1f} on {os.cpu_count()} cores.")


if __name__ == "__main__":
    main()
