"""Frozen-prefix acceleration: run the frozen front of the network in ONNX Runtime, train the tail in Keras.

Fine-tuning the last 5 layers of MobileNetV2 spends nearly all its time in the frozen backbone's
forward pass. Here that pass runs in the fastest runtime that agrees with Keras on a real batch
(ONNX Runtime; Keras itself when the export or the parity check fails), and its outputs are
cached wherever the inputs do not change between epochs: the validation split always, the
training split when augmentation is off. With augmentation, every epoch's augmented batches go
through the prefix in a tf.data worker thread, overlapping with the tail's training step.

One split serves the whole run: it is cut where fine-tuning starts, and the head-only warm-up
simply trains fewer layers of the same tail (its extra frozen layers are cheap 7x7 convolutions).
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from .. import _env

tf = _env.import_tensorflow()

import keras  # noqa: E402

from ..models.graph import flatten_layers  # noqa: E402
from .prefix import Split, split_model  # noqa: E402

# Runtimes disagree in the last bits of float32; the prefix must match Keras to this, relative to
# the size of its outputs (ReLU6 features reach 6), or it is not used.
PARITY_TOLERANCE = 1e-4


class PrefixRunner:
    """Callable: scaled images (N, H, W, 3) float32 -> list of prefix outputs (float32 arrays)."""

    def __init__(self, prefix: keras.Model, sample: np.ndarray, runtime: str = "onnx"):
        self.prefix = prefix
        self.n_outputs = len(prefix.outputs)
        self.output_shapes = [tuple(t.shape[1:]) for t in prefix.outputs]
        sample = np.ascontiguousarray(sample, np.float32)
        reference = self._keras(sample)
        self.runtime, self.parity, self.reason = "keras", 0.0, ""
        if runtime == "onnx":
            try:
                session = _onnx_session(prefix, sample[:1])
                self._session, self._input = session, session.get_inputs()[0].name
                got = self._onnx(sample)
                scale = max(1.0, max(float(np.abs(r).max()) for r in reference))
                parity = max(float(np.abs(r - g).max()) for r, g in zip(reference, got)) / scale
                if parity <= PARITY_TOLERANCE:
                    self.runtime, self.parity = "onnx", parity
                else:
                    self.reason = f"ONNX Runtime differs from Keras by {parity:.1e} (> {PARITY_TOLERANCE:g})"
            except ModuleNotFoundError as exc:  # the base install (make demo) has no `fast` extra: not a failure
                self.reason = f"{exc.name} is not installed: pip install 'retreino[fast]' for faster epochs"
            except Exception as exc:  # any export/runtime failure: Keras still gives the right answer
                self.reason = f"ONNX export failed ({str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__})"

    def _keras(self, x):
        if not hasattr(self, "_fn"):
            prefix = self.prefix
            self._fn = tf.function(lambda t: prefix(t, training=False), reduce_retracing=True)
        out = self._fn(x)
        return [np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out])]

    def _onnx(self, x):
        return self._session.run(None, {self._input: x})

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        x = np.ascontiguousarray(x, np.float32)
        return self._onnx(x) if self.runtime == "onnx" else self._keras(x)

    def describe(self) -> str:
        if self.runtime == "onnx":
            return f"ONNX Runtime (parity with Keras {self.parity:.1e})"
        return f"Keras ({self.reason})" if self.reason else "Keras"


# Exported prefixes of this process by content: cross-validation folds and tuning trials start from
# the same frozen weights, and the export is the slow part (seconds).
_EXPORTS: dict[str, bytes] = {}


def _fingerprint(prefix: keras.Model) -> str:
    import hashlib

    h = hashlib.sha256()
    for t in list(prefix.inputs) + list(prefix.outputs):
        h.update(repr((tuple(t.shape), str(t.dtype))).encode())
    for layer in prefix.layers:
        h.update(f"{layer.__class__.__name__}:{layer.name}".encode())
        for w in layer.weights:
            h.update(np.ascontiguousarray(keras.ops.convert_to_numpy(w)).tobytes())
    return h.hexdigest()


def _onnx_session(prefix: keras.Model, sample: np.ndarray):
    import onnxruntime as ort

    key = _fingerprint(prefix)
    if key not in _EXPORTS:
        _EXPORTS.clear()  # one model at a time is enough; they are megabytes
        _EXPORTS[key] = _export_onnx(prefix, sample)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = os.cpu_count() or 1
    return ort.InferenceSession(_EXPORTS[key], opts, providers=["CPUExecutionProvider"])


def _export_onnx(prefix: keras.Model, sample: np.ndarray) -> bytes:
    import logging
    import warnings

    from ..inference.runtimes import quiet_native

    prefix(sample)  # Keras exports only models that have been called
    with tempfile.TemporaryDirectory(prefix="retreino-prefix-") as tmp:
        path = os.path.join(tmp, "prefix.onnx")
        levels = {n: logging.getLogger(n).level for n in ("tensorflow", "absl", "tf2onnx")}
        try:
            for n in levels:
                logging.getLogger(n).setLevel(logging.ERROR)
            with warnings.catch_warnings(), quiet_native():
                warnings.simplefilter("ignore")
                prefix.export(path, format="onnx", verbose=False)
        finally:
            for n, level in levels.items():
                logging.getLogger(n).setLevel(level)
        with open(path, "rb") as fh:
            return fh.read()


def with_trainable(model, flags_fn):
    """Run `flags_fn(model)` (a freeze function) and return a function that restores the flags."""
    leaves = flatten_layers(model)
    saved = [layer.trainable for layer in leaves]
    flags_fn(model)

    def restore():
        for layer, on in zip(leaves, saved):
            layer.trainable = on

    return restore


@dataclass
class Features:
    """Prefix outputs of one split, in order: a tuple of arrays (one per tail input) and the labels."""

    x: tuple
    y: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.x))


class Accelerator:
    """Owns the split, the prefix runner and the feature caches of one training run."""

    def __init__(self, split: Split, batch_size: int, seed: int, cache_budget_mb: float):
        self.split = split
        self.runner: PrefixRunner | None = None  # set by start()
        self.batch_size, self.seed = batch_size, seed
        self.cache_budget = cache_budget_mb * 2**20
        self.output_shapes = [tuple(t.shape[1:]) for t in split.prefix.outputs]
        self._val: dict[int, list] = {}  # validation batch index -> prefix outputs
        self._train: Features | None = None
        self.timings: dict[str, float] = {}

    @classmethod
    def prepare(cls, model, freeze_finetune, *, batch_size: int, seed: int, cache_budget_mb: float) -> "Accelerator | None":
        """Split `model` as fine-tuning freezes it (its current flags are restored); None if nothing is
        frozen at the front. Cheap: no data, no export yet (see `start`)."""
        restore = with_trainable(model, freeze_finetune)
        try:
            split = split_model(model)
        finally:
            restore()
        return cls(split, batch_size, seed, cache_budget_mb) if split.useful else None

    def start(self, sample: np.ndarray, runtime: str = "onnx") -> "Accelerator":
        """Pick the prefix's runtime with a parity check on `sample` (a real batch, scaled)."""
        t0 = time.monotonic()
        self.runner = PrefixRunner(self.split.prefix, sample, runtime=runtime)
        self.timings["prefix_setup"] = time.monotonic() - t0
        return self

    @classmethod
    def build(cls, model, freeze_finetune, sample: np.ndarray, *, batch_size: int, seed: int,
              cache_budget_mb: float, runtime: str = "onnx") -> "Accelerator | None":
        acc = cls.prepare(model, freeze_finetune, batch_size=batch_size, seed=seed, cache_budget_mb=cache_budget_mb)
        return acc.start(sample, runtime=runtime) if acc is not None else None

    @property
    def tail(self) -> keras.Model:
        return self.split.tail

    def describe(self) -> str:
        tail_layers = [layer for layer in self.tail.layers if layer.__class__.__name__ != "InputLayer"]
        return (f"Speed: the {self.split.prefix_layers} frozen layers in front run on {self.runner.describe()}, "
                f"validation outputs cached; the {len(tail_layers)} layers after them run in Keras")

    # -- features ---------------------------------------------------------------------------------
    def compute(self, images_ds) -> Features:
        """Prefix outputs of an (images, labels) dataset, in its order."""
        xs, ys = [[] for _ in range(self.runner.n_outputs)], []
        for x, y in images_ds:
            for store, out in zip(xs, self.runner(np.asarray(x))):
                store.append(out)
            ys.append(np.asarray(y))
        return Features(tuple(np.concatenate(s) for s in xs), np.concatenate(ys))

    def fits(self, n_images: int) -> bool:
        """Whether the prefix outputs of n images fit the cache budget."""
        per_image = sum(int(np.prod(s)) * 4 for s in self.output_shapes)
        return n_images * per_image <= self.cache_budget

    def validation(self, images_ds, n_images: int):
        """The validation split as prefix outputs. The first pass reads the images and runs the
        prefix, keeping outputs and labels batch by batch (when they fit the budget); every later
        pass, in any phase, serves them from memory without touching the images at all."""
        batches = int(images_ds.cardinality())
        if not self.fits(n_images) or batches < 0:
            return self._streamed(images_ds)
        runner, shapes, cache = self.runner, self.output_shapes, self._val
        label_spec = images_ds.element_spec[1]
        source = {"it": None, "next": 0}

        def batch(i):
            i = int(i)
            if i not in cache:
                if source["it"] is None or source["next"] != i:  # a fresh pass over the images
                    source["it"], source["next"] = iter(images_ds), 0
                while source["next"] <= i:
                    x, y = next(source["it"])
                    if source["next"] not in cache:
                        cache[source["next"]] = [*runner(x.numpy()), y.numpy()]
                    source["next"] += 1
            return cache[i]

        def lookup(i):
            outs = tf.numpy_function(batch, [i], [tf.float32] * len(shapes) + [label_spec.dtype], stateful=True)
            for t, shape in zip(outs, shapes):
                t.set_shape((None,) + shape)
            outs[-1].set_shape(label_spec.shape)
            return self._pack(outs[:-1]), outs[-1]

        return tf.data.Dataset.range(batches).map(lookup, num_parallel_calls=1, deterministic=True).prefetch(2)

    def cached_training(self, ordered_ds):
        """Training batches from prefix outputs computed once (the images never change: no
        augmentation), reshuffled every epoch. `ordered_ds` is the split in a fixed order."""
        if self._train is None:
            t0 = time.monotonic()
            self._train = self.compute(ordered_ds)
            self.timings["train_prefix"] = time.monotonic() - t0
        return self._from_arrays(self._train, shuffle=True)

    def streamed(self, images_ds):
        """Training batches pushed through the prefix every epoch (augmented images change)."""
        return self._streamed(images_ds)

    def _pack(self, outs):
        return outs[0] if len(outs) == 1 else tuple(outs)

    def _from_arrays(self, f: Features, shuffle: bool):
        n = len(f.y)

        # Gathered from the NumPy arrays: tf.constant of a few hundred MB is a slow copy.
        def gather(idx):
            return [a[idx] for a in f.x] + [f.y[idx]]

        touts = [tf.float32] * len(f.x) + [tf.as_dtype(f.y.dtype)]

        def batch(idx):
            outs = tf.numpy_function(gather, [idx], touts, stateful=False)
            for t, a in zip(outs, list(f.x) + [f.y]):
                t.set_shape((None,) + a.shape[1:])
            return self._pack(outs[:-1]), outs[-1]

        ds = tf.data.Dataset.range(n)
        if shuffle:
            ds = ds.shuffle(n, seed=self.seed, reshuffle_each_iteration=True)
        ds = ds.batch(self.batch_size).map(batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.prefetch(tf.data.AUTOTUNE)

    def _streamed(self, images_ds):
        runner = self.runner
        shapes = runner.output_shapes

        def run(x):
            return runner(x)

        def through(x, y):
            outs = tf.numpy_function(run, [x], [tf.float32] * len(shapes), stateful=False)
            for t, s in zip(outs, shapes):
                t.set_shape((None,) + s)
            return self._pack(outs), y

        # One batch at a time through the prefix (it uses every core itself); prefetching lets the
        # next batch's prefix run while the tail trains on this one.
        return images_ds.map(through, num_parallel_calls=1, deterministic=True).prefetch(2)
