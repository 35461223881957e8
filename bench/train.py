"""Training speed: the notebook's Keras 2 approach vs retreino's `train` vs TensorFlow's bare step, in one run.

Same data (../shared/datasets/cats_vs_dogs), same model (the water_bottles Teachable Machine export,
MobileNetV2 alpha 0.35, re-headed to cats/dogs), same trainable layers (the last 5 with weights:
block_16_project, Conv_1 and the head; BatchNorm frozen) and batch size 32:

(a) the notebook's approach: Keras 2 (`tf_keras`) `ImageDataGenerator.flow_from_directory` with its
    augmentation (rotation 20, shifts 0.2, horizontal flip, rescale 1/255) feeding `model.fit`;
(b) retreino's `train` with those layers, `--unfreeze 5` (its other settings the defaults: augmentation on,
    frozen prefix in ONNX Runtime, validation cache);
(c) the bare Keras 3 forward + backward step on preloaded tensors, oneDNN on;
(d) retreino's default `train`, whose last 30 layers with weights train (issue 15): the price of the deeper
    default per epoch, beside (b).

Throughput is training images per second in a steady fine-tuning epoch (the epoch's training part,
validation excluded), the best of three timed epochs after an untimed one, each of (a), (b), (c) in a
process of its own.
`--full` adds the whole 10-epoch comparison: the notebook's recipe literally (its 2-unit head, `model.layers[-5:]` unfrozen, rescale 1/255, Adam 1e-5, EarlyStopping,
ReduceLROnPlateau, best checkpoint) against `retreino train` with its defaults; wall time and test
accuracy of each.

    .venv/bin/python bench/train.py            # throughput, a few minutes
    .venv/bin/python bench/train.py --full     # plus the 10-epoch runs (long)
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RETREINO_QUIET", "1")
ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "datasets" / "cats_vs_dogs"
MODEL = SHARED / "models" / "teachable_machine" / "water_bottles"
sys.path.insert(0, str(ROOT / "src"))

import retreino._env  # noqa: E402,F401  (oneDNN on, before TensorFlow is imported)

BATCH = 32
UNFREEZE = 5
AUGMENT = dict(rotation_range=20, width_shift_range=0.2, height_shift_range=0.2, horizontal_flip=True)


def _keras2_tm(path: Path):
    """The TM export in Keras 2 with the `groups` patch its users are told to apply."""
    import tf_keras

    class DepthwiseConv2D(tf_keras.layers.DepthwiseConv2D):
        def __init__(self, *args, groups=None, **kwargs):
            super().__init__(*args, **kwargs)

    return tf_keras, tf_keras.models.load_model(path / "keras_model.h5", custom_objects={"DepthwiseConv2D": DepthwiseConv2D}, compile=False)


def _keras2_leaves(model):
    out = []
    for layer in model.layers:
        out.extend(_keras2_leaves(layer) if hasattr(layer, "layers") else [layer])
    return out


def _time_epoch(fit_one_epoch, images: int, repeats: int = 3) -> float:
    """images/s of the fastest of `repeats` timed calls, after one untimed call (tracing). The best
    of several, as timeit does: on a shared machine the slower ones measure the neighbours."""
    fit_one_epoch()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fit_one_epoch()
        best = min(best, time.perf_counter() - start)
    return images / best


def notebook_throughput(steps: int) -> float:
    """(a): Keras 2 + ImageDataGenerator, the same trainable layers as (b), `steps` batches per epoch."""
    tf_keras, model = _keras2_tm(MODEL)
    from tf_keras.preprocessing.image import ImageDataGenerator

    # Same configuration as (b): a new 2-way softmax head on the pooled features, last 5 weighted layers.
    features = model.layers[0]
    head = tf_keras.layers.Dense(2, activation="softmax")(features.output)
    model = tf_keras.Model(features.input, head)
    leaves = _keras2_leaves(model)
    weighted = [layer for layer in leaves if layer.weights][-UNFREEZE:]
    for layer in leaves:
        layer.trainable = any(layer is w for w in weighted) and not isinstance(layer, tf_keras.layers.BatchNormalization)
    for sub in model.layers:
        if hasattr(sub, "layers"):
            sub.trainable = True
            for layer in _keras2_leaves(sub):
                layer.trainable = any(layer is w for w in weighted) and not isinstance(layer, tf_keras.layers.BatchNormalization)
    model.compile(optimizer=tf_keras.optimizers.Adam(1e-5), loss="categorical_crossentropy", metrics=["accuracy"])
    gen = ImageDataGenerator(rescale=1 / 255, **AUGMENT).flow_from_directory(
        DATA / "train", target_size=(224, 224), batch_size=BATCH, class_mode="categorical", seed=0)
    return _time_epoch(lambda: model.fit(gen, steps_per_epoch=steps, epochs=1, verbose=0), steps * BATCH)


class _Timer:
    """Per-epoch training seconds and validation seconds, from Keras callbacks (passed to `train`)."""

    def __new__(cls):
        import keras

        class Timer(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.train_s, self.val_s = [], []

            def on_epoch_begin(self, epoch, logs=None):
                self.t0 = time.perf_counter()

            def on_test_begin(self, logs=None):
                self.train_s.append(time.perf_counter() - self.t0)
                self.v0 = time.perf_counter()

            def on_test_end(self, logs=None):
                self.val_s.append(time.perf_counter() - self.v0)

        return Timer()


def retreino_train(data: Path, runs: Path, name: str, **kw):
    from retreino.training import train

    timer = _Timer()
    start = time.perf_counter()
    run = train(model=str(MODEL), data=str(data), runs_dir=str(runs), name=name, printer=lambda *a: None,
                callbacks=[timer], **kw)
    return run, timer, time.perf_counter() - start


def bare_keras_throughput(n: int) -> float:
    """(c): Keras 3 forward + backward on preloaded tensors, the same trainable layers, oneDNN on."""
    import numpy as np

    from retreino import load_model
    from retreino.data import decode_all
    from retreino.models.surgery import freeze_all_but_last, prepare_for_classes
    from retreino.preprocessing import scale_pixels_np

    paths = sorted((DATA / "train" / "cats").glob("*.jpg"))[: n // 2] + sorted((DATA / "train" / "dogs").glob("*.jpg"))[: n // 2]
    x = scale_pixels_np(decode_all(paths).astype("float32"), "tf").astype("float32")
    y = np.eye(2, dtype="float32")[[0] * (n // 2) + [1] * (n // 2)]
    model = prepare_for_classes(load_model(MODEL), ["cats", "dogs"]).loaded.model
    freeze_all_but_last(model, UNFREEZE)
    import keras

    model.compile(optimizer=keras.optimizers.Adam(1e-5), loss="categorical_crossentropy", metrics=["accuracy"])
    return _time_epoch(lambda: model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, shuffle=False), len(x))


def notebook_full(epochs: int, runs: Path) -> tuple[float, float]:
    """The notebook's recipe literally, in Keras 2: -> (wall seconds, test accuracy of the best checkpoint)."""
    start = time.perf_counter()
    tf_keras, model = _keras2_tm(MODEL)
    from tf_keras.preprocessing.image import ImageDataGenerator

    for layer in model.layers[-5:]:  # a TM export has 2 top-level layers: this unfreezes everything
        layer.trainable = True
    model.compile(optimizer=tf_keras.optimizers.Adam(1e-5), loss="categorical_crossentropy", metrics=["accuracy"])
    train = ImageDataGenerator(rescale=1 / 255, **AUGMENT).flow_from_directory(
        DATA / "train", target_size=(224, 224), batch_size=BATCH, class_mode="categorical")
    plain = ImageDataGenerator(rescale=1 / 255)
    val = plain.flow_from_directory(DATA / "validation", target_size=(224, 224), batch_size=BATCH, class_mode="categorical")
    best = str(runs / "notebook_best.h5")
    cb = tf_keras.callbacks
    model.fit(train, validation_data=val, epochs=epochs, verbose=0, callbacks=[
        cb.EarlyStopping(monitor="val_accuracy", patience=5),
        cb.ReduceLROnPlateau(monitor="val_accuracy", factor=0.5, patience=3),
        cb.ModelCheckpoint(best, monitor="val_accuracy", save_best_only=True)])
    wall = time.perf_counter() - start
    model.load_weights(best)
    test = plain.flow_from_directory(DATA / "test", target_size=(224, 224), batch_size=BATCH, class_mode="categorical", shuffle=False)
    import numpy as np

    pred = model.predict(test, verbose=0).argmax(1)
    return wall, float(np.mean(pred == test.classes))


def test_accuracy(run) -> float:
    import numpy as np

    from retreino.data import decode_all
    from retreino.preprocessing import scale_pixels_np

    loaded = run.best_model
    names = loaded.class_names
    paths, labels = [], []
    for i, cls in enumerate(names):
        files = sorted((DATA / "test" / cls).glob("*.jpg"))
        paths += files
        labels += [i] * len(files)
    x = scale_pixels_np(decode_all(paths).astype("float32"), loaded.info.preprocessing).astype("float32")
    pred = np.asarray(loaded.model.predict(x, batch_size=64, verbose=0)).argmax(1)
    return float(np.mean(pred == np.array(labels)))


def _part(name: str, args) -> dict:
    """Run one measurement in a fresh process: threads, caches and memory of the others stay out of it."""
    import json
    import subprocess

    cmd = [sys.executable, __file__, "--part", name, "--steps", str(args.steps), "--bare-images", str(args.bare_images)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"bench part {name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _run_part(name: str, args) -> None:
    import json

    if name == "a":
        result = {"ips": notebook_throughput(args.steps)}
    elif name == "c":
        result = {"ips": bare_keras_throughput(args.bare_images)}
    else:
        tmp = Path(tempfile.mkdtemp(prefix="retreino-bench-train-"))
        layers = {"unfreeze": UNFREEZE} if name == "b" else {}  # (d): the default depth
        try:
            run, timer, wall = retreino_train(DATA, tmp, name, epochs=4, warmup_epochs=0, **layers)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        result = {"ips": 1400 / min(timer.train_s[1:]), "val_s": timer.val_s}  # epoch 1 traces, untimed
    print(json.dumps(result))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20, help="batches per timed epoch for (a) (default 20)")
    ap.add_argument("--bare-images", type=int, default=320, help="preloaded images for (c) (default 320)")
    ap.add_argument("--full", action="store_true", help="also the 10-epoch runs: wall time and test accuracy")
    ap.add_argument("--only-full", action="store_true", help="only the 10-epoch runs")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--part", choices=("a", "b", "c", "d"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.part:
        _run_part(args.part, args)
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="retreino-bench-train-"))
    print(f"data {DATA} (train 1400, validation 300, test 300), model {MODEL.name}, batch {BATCH}, last {UNFREEZE} layers; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS')}")
    try:
        if not args.only_full:
            a = _part("a", args)["ips"]
            print(f"(a) notebook: Keras 2 ImageDataGenerator + fit    {a:7.1f} images/s", flush=True)
            c = _part("c", args)["ips"]
            print(f"(c) bare Keras 3 step on preloaded tensors         {c:7.1f} images/s", flush=True)
            rb = _part("b", args)
            b = rb["ips"]
            print(f"(b) retreino train --unfreeze {UNFREEZE} (augmentation on)  {b:7.1f} images/s", flush=True)
            d = _part("d", args)["ips"]
            from retreino.config import TrainConfig

            print(f"(d) retreino train defaults (last {TrainConfig.unfreeze} layers)      {d:7.1f} images/s", flush=True)
            print(f"ratios: b/a = {b / a:.1f}x   b/c = {b / c:.1f}x   d/a = {d / a:.1f}x   d/b = {d / b:.2f}x")
            v = rb["val_s"]
            print(f"validation pass (300 images): epoch 1 {v[0]:.2f}s, later epochs at most {max(v[1:]):.2f}s "
                  f"({100 * max(v[1:]) / v[0]:.0f}% of epoch 1)", flush=True)
        if args.full or args.only_full:
            run, timer, wb = retreino_train(DATA, tmp, "full", epochs=args.epochs)
            acc_b = test_accuracy(run)
            warm = sum(r["phase"] == "warmup" for r in run.history)
            print(f"(b) retreino train, {len(run.history)} epochs ({warm} warm-up + {len(run.history) - warm} fine-tuning of "
                  f"{args.epochs}):  wall {wb:7.0f}s  test accuracy {acc_b:.3f}", flush=True)
            wa, acc_a = notebook_full(args.epochs, tmp)
            print(f"(a) notebook recipe, {args.epochs} epochs:  wall {wa:7.0f}s  test accuracy {acc_a:.3f}", flush=True)
            print(f"full run: b/a = {wa / wb:.1f}x faster, test accuracy {acc_b - acc_a:+.3f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
