"""From pixels to class probabilities: the one forward path shared by predict, evaluate and serve.

A Predictor hides the runtime (Keras, ONNX Runtime, LiteRT, SavedModel; see `runtimes`) and
the head type: callers always get one probability per class, summing to 1 for a softmax or
logits head, [1 - p, p] for a 1-unit sigmoid. Scaling happens here, once, from the model's
recorded preprocessing, so no runtime can disagree about it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .data.images import read_image
from .errors import RetreinoError
from .models.info import LoadedModel
from .preprocessing import scale_pixels_np


def probabilities(outputs: np.ndarray, head: str) -> np.ndarray:
    """Model outputs -> per-class probabilities, whatever the head."""
    out = np.asarray(outputs, dtype=np.float32)
    if head == "logits":
        z = out - out.max(axis=-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=-1, keepdims=True)
    if head == "sigmoid" and out.shape[-1] == 1:
        return np.concatenate([1.0 - out, out], axis=-1)
    return out


class Predictor:
    """Predict class probabilities for images with a loaded model or an export.

    `runtime`: "keras", "onnx", "tflite", "tflite-int8", "savedmodel", or "auto" (the default):
    the fastest export of this model file that passed its parity check and beat Keras when it
    was measured, else Keras. A named runtime other than keras needs an export
    (`retreino export`) in the model's `exports/` folder.

    >>> p = Predictor(load_model("runs/cats"))          # doctest: +SKIP
    >>> p.runtime                                        # doctest: +SKIP
    'tflite'
    >>> p.predict_images(["cat.jpg"]).round(3)           # doctest: +SKIP
    array([[0.974, 0.026]], dtype=float32)
    """

    def __init__(self, loaded, runtime: str = "auto", resize_mode: str | None = None):
        from . import runtimes

        if isinstance(loaded, (str, os.PathLike)):
            backend = _open_path(Path(loaded), runtime)
            loaded = LoadedModel(getattr(backend, "model", None), backend.info)
        elif isinstance(runtime, runtimes.Runtime):
            backend = runtime
        else:
            backend = _pick(loaded, runtime)
        if loaded.info.head == "features":
            raise RetreinoError("this model has no classification head (a bare backbone): train it first")
        self.loaded = loaded
        self.info = backend.info if backend.info is not None else loaded.info
        self.backend = backend
        self.runtime = backend.name
        # How photos are fitted to the input: the model's own contract unless the caller overrides it.
        self.resize_mode = resize_mode or self.info.resize
        self.interpolation = self.info.interpolation

    @classmethod
    def from_export(cls, path, resize_mode: str | None = None) -> "Predictor":
        """A Predictor on an exported model alone (ONNX, TFLite, SavedModel, H5 ...), no Keras model needed."""
        return cls(path, runtime="export", resize_mode=resize_mode)

    @property
    def class_names(self) -> list[str]:
        if self.info.class_names:
            return list(self.info.class_names)
        n = probabilities(np.zeros((1, self.backend.output_units), np.float32), self.info.head).shape[-1]
        return [f"class_{i}" for i in range(n)]

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 or float pixels in [0, 255], shape (N, H, W, 3) at the model's input size."""
        x = scale_pixels_np(pixels, self.info.preprocessing)
        return probabilities(self.backend(x), self.info.head)

    def load_pixels(self, source) -> np.ndarray:
        return read_image(source, self.info.input_size, self.resize_mode, self.interpolation)

    def predict_images(self, sources: Sequence, batch_size: int = 32) -> np.ndarray:
        """Paths, bytes or file objects -> (N, classes) probabilities, in batches."""
        outs = [self.predict_pixels(np.stack([self.load_pixels(s) for s in chunk])) for chunk in _chunks(sources, batch_size)]
        return np.concatenate(outs) if outs else np.zeros((0, len(self.class_names)), np.float32)


def _pick(loaded: LoadedModel, runtime: str):
    from . import runtimes

    if runtime not in runtimes.RUNTIME_CHOICES:
        raise RetreinoError(f"unknown runtime {runtime!r}: use one of {' | '.join(runtimes.RUNTIME_CHOICES)}")
    source = loaded.info.source
    if runtime == "auto":
        record = runtimes.best_export(source)
        if record is None:
            return runtimes.KerasRuntime(loaded.model, loaded.info)
        return _open_checked(record, loaded)
    if runtime == "keras":
        return runtimes.KerasRuntime(loaded.model, loaded.info)
    return _open_checked(runtimes.export_for(source, runtime), loaded)


def _open_checked(record, loaded: LoadedModel):
    from . import runtimes

    if record.info.class_names and loaded.info.class_names and record.info.class_names != loaded.info.class_names:
        raise RetreinoError(
            f"the {record.format} export in {record.folder} names classes {record.info.class_names}, "
            f"the model {loaded.info.class_names}: re-export it"
        )
    return runtimes.open_record(record)


def _open_path(path: Path, runtime: str):
    """A path given to Predictor: an export folder/file, or a model that `load_model` reads."""
    from . import runtimes

    if not path.exists():
        raise RetreinoError(f"no such model or export: {path}")
    is_export = runtimes.is_export(path)
    if is_export and runtime in ("auto", "export"):
        return runtimes.load_runtime(path)
    if runtime == "export":
        raise RetreinoError(f"{path} is not a retreino export (no {runtimes.META_FILE} beside it)")
    from .models import load_model

    return _pick(load_model(path), runtime)


def _chunks(items: Sequence, n: int) -> Iterable[Sequence]:
    for i in range(0, len(items), n):
        yield items[i : i + n]
