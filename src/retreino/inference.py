"""From pixels to class probabilities: the one forward path shared by predict, evaluate and serve.

A Predictor hides the runtime (Keras today; ONNX Runtime / LiteRT plug in through `runtimes`)
and the head type: callers always get one probability per class, summing to 1 for a softmax
or logits head, [1 - p, p] for a 1-unit sigmoid.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from .data.images import read_image
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
    """Predict class probabilities for images with a loaded model.

    >>> p = Predictor(load_model("runs/cats"))          # doctest: +SKIP
    >>> p.predict_images(["cat.jpg"]).round(3)           # doctest: +SKIP
    array([[0.974, 0.026]], dtype=float32)
    """

    def __init__(self, loaded: LoadedModel, runtime: str = "keras", resize_mode: str = "stretch"):
        if loaded.info.head == "features":
            from .errors import RetreinoError

            raise RetreinoError("this model has no classification head (a bare backbone): train it first")
        self.loaded = loaded
        self.info = loaded.info
        self.runtime = runtime
        self.resize_mode = resize_mode
        self._forward = self._keras_forward()

    @property
    def class_names(self) -> list[str]:
        if self.info.class_names:
            return list(self.info.class_names)
        n = probabilities(np.zeros((1, self._units()), np.float32), self.info.head).shape[-1]
        return [f"class_{i}" for i in range(n)]

    def _units(self) -> int:
        return int(self.loaded.model.output_shape[-1])

    def _keras_forward(self):
        model = self.loaded.model

        def forward(x: np.ndarray) -> np.ndarray:
            return np.asarray(model(x, training=False))

        return forward

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 or float pixels in [0, 255], shape (N, H, W, 3) at the model's input size."""
        x = scale_pixels_np(pixels, self.info.preprocessing)
        return probabilities(self._forward(x), self.info.head)

    def load_pixels(self, source) -> np.ndarray:
        return read_image(source, self.info.input_size, self.resize_mode)

    def predict_images(self, sources: Sequence, batch_size: int = 32) -> np.ndarray:
        """Paths, bytes or file objects -> (N, classes) probabilities, in batches."""
        outs = [self.predict_pixels(np.stack([self.load_pixels(s) for s in chunk])) for chunk in _chunks(sources, batch_size)]
        return np.concatenate(outs) if outs else np.zeros((0, len(self.class_names)), np.float32)


def _chunks(items: Sequence, n: int) -> Iterable[Sequence]:
    for i in range(0, len(items), n):
        yield items[i : i + n]
