"""The tf.data pipeline behind training, evaluation and prediction.

Pixels come from `read_image` (PIL) and nowhere else, so a file looks the same to the model in
training, in `retreino predict` and in the web service: EXIF orientation, alpha on white, CMYK,
16-bit, GIF/WEBP first frame, and a lying extension are all handled in one place.

Two paths, chosen by `cache_budget_mb`:

- **cached** (the usual case: 2,000 images at 224x224 are 300 MB): the split is decoded once by a
  thread pool (PIL releases the GIL) into one uint8 array; every epoch then gathers shuffled
  batches from memory and augments them with one affine warp per batch (see `augment.py`);
  beyond `cache_budget_mb` the same array is a file on disk, read row by row (`spill_array`), so
  memory stays bounded at any dataset size while images are still decoded only once;
- **streaming** (`cache=False`, one-pass uses): each epoch decodes files in parallel `tf.data` workers.
"""
from __future__ import annotations

import os

import numpy as np

from .. import _env

_env.import_tensorflow()
import tensorflow as tf  # noqa: E402

from ..config import AugmentConfig  # noqa: E402
from ..errors import DataError  # noqa: E402
from ..preprocessing import scale_pixels  # noqa: E402
from .images import RESIZE_MODES, read_image  # noqa: E402
from .scan import progress_bar, scan_images  # noqa: E402
from .sources import Split, _list_paths  # noqa: E402

LABEL_MODES = ("categorical", "binary", "int", None)


def _decode_many(paths: list[str], image_size, resize_mode: str, desc: str = "decoding", out=None,
                 interpolation: str = "bilinear"):
    """-> (uint8 array (N, H, W, 3), {index: error message}); rows of failed files are zeros.

    `out` is an array to decode into (a SpillFile on disk), else one is allocated in memory.

    Decoding runs in tf.data's parallel map (PIL releases the GIL while it decodes and resizes);
    measured faster than a thread pool of the same size, and it adapts to the cores it finds.
    """
    h, w = image_size
    out = np.zeros((len(paths), h, w, 3), dtype=np.uint8) if out is None else out
    errors: dict[int, str] = {}

    def one(i):
        i = int(i)
        try:
            return read_image(paths[i], (h, w), resize_mode, interpolation)
        except DataError as exc:
            errors[i] = str(exc)
            return np.zeros((h, w, 3), np.uint8)

    def load(i):
        x = tf.numpy_function(one, [i], tf.uint8, stateful=False)
        x.set_shape((h, w, 3))
        return x

    batch = 64
    ds = tf.data.Dataset.range(len(paths)).map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(batch)
    bar = progress_bar(len(paths), desc)
    for k, x in enumerate(ds):
        out[k * batch:k * batch + len(x)] = x
        bar.update(len(x))
    bar.close()
    return out, errors


def spill_array(n: int, h: int, w: int) -> SpillFile:
    """A (n, h, w, 3) uint8 array kept in a file on disk instead of memory (see SpillFile)."""
    return SpillFile(n, h, w)


class SpillFile:
    """A (n, h, w, 3) uint8 array in an unlinked temporary file, written and read with pwrite/pread.

    The file lives in $RETREINO_SPILL_DIR (default: the system temp folder) and is unlinked at
    once, so the disk space comes back when the array goes, even after a crash. Not a memory map:
    a mapping's resident pages count in the process's RSS and stay resident while memory is free,
    so a mapped cache grows the process with the number of images. Here only the rows of the batch
    being gathered are in the process; the file's pages are the kernel's page cache, which it
    shares and drops as it likes. Supports what the pipeline does: `a[i:j] = rows`, `a[indices]`.
    """

    dtype = np.dtype(np.uint8)

    def __init__(self, n: int, h: int, w: int):
        import tempfile

        folder = os.environ.get("RETREINO_SPILL_DIR") or None
        self._fh = tempfile.TemporaryFile(prefix="retreino-cache-", suffix=".u8", dir=folder)
        self.shape = (int(n), int(h), int(w), 3)
        self._row = int(h) * int(w) * 3
        self._fh.truncate(self.shape[0] * self._row)

    def __len__(self) -> int:
        return self.shape[0]

    def __setitem__(self, key: slice, rows) -> None:
        start, stop, step = key.indices(self.shape[0])
        rows = np.ascontiguousarray(rows, dtype=np.uint8)
        if step != 1 or rows.shape != (stop - start,) + self.shape[1:]:
            raise ValueError(f"SpillFile takes contiguous row blocks; got {key} for rows of shape {rows.shape}")
        os.pwrite(self._fh.fileno(), memoryview(rows).cast("B"), start * self._row)

    def __getitem__(self, index) -> np.ndarray:
        index = np.asarray(index, dtype=np.int64)
        flat = index.reshape(-1)
        out = np.empty((len(flat),) + self.shape[1:], dtype=np.uint8)
        fd = self._fh.fileno()
        for k, i in enumerate(flat):
            if not 0 <= i < self.shape[0]:
                raise IndexError(f"row {i} out of range for {self.shape[0]} rows")
            got = os.preadv(fd, [memoryview(out[k]).cast("B")], int(i) * self._row)
            if got != self._row:
                raise OSError(f"short read from the spill file: {got} of {self._row} bytes")
        return out.reshape(index.shape + self.shape[1:])


def decode_all(paths, image_size=(224, 224), resize_mode: str = "stretch", interpolation: str = "bilinear") -> np.ndarray:
    """Decode and resize every file into one uint8 array (N, H, W, 3), in order, in parallel.

    Raises DataError naming the files that cannot be decoded.
    """
    paths = [str(p) for p in paths]
    _check_resize(resize_mode)
    images, errors = _decode_many(paths, tuple(image_size), resize_mode, interpolation=interpolation)
    if errors:
        first = next(iter(errors.values()))
        raise DataError(f"{len(errors)} image(s) cannot be decoded: {first}" + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""))
    return images


def _check_resize(mode: str) -> None:
    if mode not in RESIZE_MODES:
        raise DataError(f"unknown resize mode {mode!r}: use one of {', '.join(RESIZE_MODES)}")


def _drop_bad(paths, labels, bad: set[int], training: bool, reason: str):
    """Training loses the bad files (one warning); evaluation and prediction must keep order, so fail."""
    if not bad:
        return paths, labels
    listing = _list_paths([paths[i] for i in sorted(bad)], os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0]))
    if not training:
        raise DataError(f"{len(bad)} image file(s) cannot be {reason}: {listing}")
    from ..console import warn

    warn(f"skipping {len(bad)} image file(s) that cannot be {reason}: {listing}")
    keep = [i for i in range(len(paths)) if i not in bad]
    return [paths[i] for i in keep], (labels[keep] if labels is not None else None)


def make_pipeline(split_or_paths, labels=None, *, image_size=(224, 224), preprocessing: str = "tf",
                  batch_size: int = 32, training: bool = False, augment: AugmentConfig | None = None,
                  num_classes: int | None = None, label_mode: str | None = "categorical",
                  resize_mode: str = "stretch", cache: bool = True, cache_budget_mb: float = 2048,
                  shuffle: bool | None = None, seed: int = 42, drop_remainder: bool = False,
                  interpolation: str = "bilinear", decoded: dict | None = None) -> tf.data.Dataset:
    """A `tf.data.Dataset` of (float32 images (B, H, W, 3) scaled for the model, labels).

    `split_or_paths` is a `Split` from `load_dataset` (labels and class count come with it) or a
    list of image paths (then `labels` is needed unless `label_mode=None`, which yields images
    only, for prediction). Augmentation runs only when `training=True` and `augment` is given.
    With `training=False` the order is the input order: batch i is paths[i*B:(i+1)*B].
    Labels: "categorical" one-hot float32, "binary" (B, 1) float32, "int" int32, None for none.
    `decoded`: a dict the caller keeps for all the pipelines of one job (`TrainingData` does): a
    `Split` is then decoded once for all of them, not once per pipeline (the linear probe, the
    fine-tuning and the calibration each ask for the training split: three copies of it in memory).
    """
    if label_mode not in LABEL_MODES:
        raise DataError(f"unknown label_mode {label_mode!r}: use categorical, binary, int or None")
    _check_resize(resize_mode)
    scanned = isinstance(split_or_paths, Split)
    if scanned:
        paths = list(split_or_paths.paths)
        labels = split_or_paths.labels if labels is None else labels
        num_classes = num_classes or len(split_or_paths.class_names)
    else:
        paths = [str(p) for p in split_or_paths]
    if not paths:
        raise DataError("no images to read")
    if label_mode is not None:
        if labels is None:
            raise DataError(f"label_mode={label_mode!r} needs labels (or pass label_mode=None for images only)")
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(labels) != len(paths):
            raise DataError(f"{len(paths)} images but {len(labels)} labels")
        num_classes = int(num_classes or (labels.max() + 1))
        if labels.min() < 0 or labels.max() >= num_classes:
            raise DataError(f"labels must lie in [0, {num_classes - 1}]")
        if label_mode == "binary" and num_classes != 2:
            raise DataError(f"label_mode='binary' needs exactly 2 classes, got {num_classes}")
    else:
        labels = None
    if not scanned:
        # Paths straight from a user: the cheap check, so that no epoch meets a bad file.
        infos = scan_images(paths, digest=False, desc="checking images")
        paths, labels = _drop_bad(paths, labels, {i for i, f in enumerate(infos) if not f.ok}, training, "read")
    shuffle = training if shuffle is None else shuffle
    h, w = int(image_size[0]), int(image_size[1])
    augmenting = training and augment is not None and augment.enabled
    n = len(paths)

    fits = n * h * w * 3 <= cache_budget_mb * 2**20
    if cache:
        key = (id(split_or_paths), h, w, resize_mode, interpolation) if scanned and decoded is not None else None
        if key is not None and key in decoded:
            images, errors = decoded[key][1:]
        else:
            what = f"decoding {split_or_paths.name}" if scanned else "decoding"
            if not fits:
                from ..console import info

                info(f"{n:,} images at {h}x{w} need {n * h * w * 3 / 2**20:,.0f} MB, over the {cache_budget_mb:,.0f} "
                     f"MB cache budget: caching them in a file on disk instead")
            images, errors = _decode_many(paths, (h, w), resize_mode, desc=what,
                                          out=None if fits else spill_array(n, h, w), interpolation=interpolation)
            if key is not None:
                decoded[key] = (split_or_paths, images, errors)  # the Split kept alive: its id stays its own
        rows = np.arange(n)
        if errors:
            keep = np.array([i not in errors for i in range(n)])
            paths, labels = _drop_bad(paths, labels, set(errors), training, "decoded")
            rows = np.flatnonzero(keep)  # an index, not images[keep]: that would copy a spilled cache into memory
            n = len(paths)

        # Batches are gathered from the NumPy array itself: tf.constant would copy it, slowly
        # (seconds for a few hundred MB, measured).
        def gather(idx):
            return np.ascontiguousarray(images[rows[idx]])

        def pixels(idx):
            x = tf.numpy_function(gather, [idx], tf.uint8, stateful=False)
            x.set_shape((None, h, w, 3))
            return x

        ds = tf.data.Dataset.range(n)
        if shuffle:
            ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
        if labels is not None:
            label_t = tf.constant(labels)
            ds = ds.map(lambda i: (pixels(i), tf.gather(label_t, i)), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        else:
            ds = ds.map(lambda i: (pixels(i),), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:  # cache=False: decode the files again every epoch (prediction, check-data: one pass)
        vanished: set[str] = set()

        def decode(path):
            try:
                return read_image(path.decode(), (h, w), resize_mode, interpolation)
            except Exception as exc:
                # Passed the scan, fails now: deleted or rewritten since. Say so once per file, then
                # let ignore_errors() drop it (training) or the error end evaluation.
                name = path.decode()
                if training and name not in vanished:
                    from ..console import warn

                    vanished.add(name)
                    reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
                    warn(f"{name} vanished or changed since the data was scanned ({reason}); skipped")
                raise

        def load(path):
            img = tf.numpy_function(decode, [path], tf.uint8, stateful=False)
            img.set_shape((h, w, 3))
            return img

        if labels is not None:
            ds = tf.data.Dataset.from_tensor_slices((paths, labels))
            if shuffle:
                ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
            ds = ds.map(lambda p, y: (load(p), y), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        else:
            ds = tf.data.Dataset.from_tensor_slices(paths)
            if shuffle:
                ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
            ds = ds.map(lambda p: (load(p),), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if training:
            # Last line of defence: a file that passed the checks yet fails to decode is dropped,
            # never allowed to end an epoch. (Evaluation keeps order, so there it would raise.)
            ds = ds.ignore_errors()
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)

    if augmenting:
        from .augment import augment_batch

        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip((ds, seeds)).map(
            lambda batch, s: (augment_batch(batch[0], s, augment),) + tuple(batch[1:]),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def finish(x, y=None):
        x = scale_pixels(tf.cast(x, tf.float32), preprocessing)
        if label_mode is None:
            return x
        if label_mode == "categorical":
            y = tf.one_hot(y, num_classes, dtype=tf.float32)
        elif label_mode == "binary":
            y = tf.cast(tf.reshape(y, [-1, 1]), tf.float32)
        else:
            y = tf.cast(y, tf.int32)
        return x, y

    ds = ds.map(lambda *t: finish(*t), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)
