"""From pixels to class probabilities: the one forward path shared by predict, evaluate and serve.

A Predictor hides the runtime (Keras, ONNX Runtime, LiteRT, SavedModel; see `runtimes`) and
the head type: callers always get one probability per class, summing to 1 for a softmax or
logits head, [1 - p, p] for a 1-unit sigmoid. Scaling happens here, once, from the model's
recorded preprocessing, so no runtime can disagree about it.

`open_predictor` is how every entry point gets one: from a model path, a loaded model or an
export, with the same default runtime everywhere (`DEFAULT_RUNTIME`) and the caches of `cache`.
An ONNX or TFLite export opens without importing TensorFlow or Keras.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .. import safety, tta
from ..data.images import read_image
from ..errors import RetreinoError
from ..models.info import LoadedModel, ModelInfo
from ..preprocessing import scale_pixels_np
from . import cache, exports
from .exports import DEFAULT_RUNTIME, RUNTIME_CHOICES

RESIZE_MODES = ("stretch", "crop", "pad")


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


def model_input(pixels: np.ndarray, info: ModelInfo) -> np.ndarray:
    """[0, 255] pixels -> the model's input, scaled as its metadata records (the one NumPy scaling path)."""
    return scale_pixels_np(pixels, info.preprocessing)


def head_probabilities(outputs: np.ndarray, head: str, head_units: int) -> tuple[np.ndarray, np.ndarray | None]:
    """A forward pass's outputs -> (per-class probabilities, pooled features or None).

    Exports with an unknown detector emit [head | features] as one tensor: the first `head_units`
    columns go through `probabilities`, the rest are the features.
    """
    from ..ood import split_outputs

    head_out, features = split_outputs(outputs, head_units)
    return probabilities(head_out, head), features


def resize_mode_of(info: ModelInfo) -> str:
    """How the model was trained to fit images to its input, when its metadata says so; else stretch."""
    mode = getattr(info, "resize_mode", None) or getattr(info, "resize", None)
    return mode if mode in RESIZE_MODES else "stretch"


class Predictor:
    """Predict class probabilities for images with a loaded model or an export.

    `runtime`: "keras", "onnx", "tflite", "tflite-int8", "savedmodel", or "auto" (the default):
    the fastest export of this model file that passed its parity check and beat Keras when it
    was measured, else Keras. A named runtime other than keras needs an export
    (`retreino export`) in the model's `exports/` folder. `resize_mode=None` takes the model's own
    (its metadata), else stretch. Prefer `open_predictor`, which caches.

    >>> p = Predictor(load_model("runs/cats"))          # doctest: +SKIP
    >>> p.runtime                                        # doctest: +SKIP
    'tflite'
    >>> p.predict_images(["cat.jpg"]).round(3)           # doctest: +SKIP
    array([[0.974, 0.026]], dtype=float32)
    """

    def __init__(self, loaded, runtime: str = DEFAULT_RUNTIME, resize_mode: str | None = None, *,
                 unsafe: bool = False):
        from . import runtimes

        if isinstance(loaded, (str, os.PathLike)):
            backend = _open_path(Path(loaded), runtime, unsafe=unsafe)
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
        self.resize_mode = resize_mode or resize_mode_of(self.info)
        self.interpolation = getattr(self.info, "interpolation", None) or "bilinear"
        self._attach_unknown()

    @classmethod
    def from_export(cls, path, resize_mode: str | None = None, unsafe: bool = False) -> "Predictor":
        """A Predictor on an exported model alone (ONNX, TFLite, SavedModel, H5 ...), no Keras model needed.

        A SavedModel is a program that can read and write files: it opens only with `unsafe=True`.
        """
        return cls(path, runtime="export", resize_mode=resize_mode, unsafe=unsafe)

    @property
    def class_names(self) -> list[str]:
        if self.info.class_names:
            return list(self.info.class_names)
        n = probabilities(np.zeros((1, self.backend.output_units), np.float32), self.info.head).shape[-1]
        return [f"class_{i}" for i in range(n)]

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 or float pixels in [0, 255], shape (N, H, W, 3) at the model's input size."""
        return self.predict_pixels_full(pixels)["probabilities"]

    def predict_pixels_full(self, pixels: np.ndarray) -> dict:
        """Calibrated `probabilities`, the `raw` ones, and `unknown_score` (None without a detector)."""
        from ..calibration import apply_temperature

        raw, features = head_probabilities(self.backend(model_input(pixels, self.info)), self.info.head,
                                           self._head_units)
        if getattr(self.info, "tta", None) == tta.FLIP:  # the model's own test-time augmentation (retreino.tta)
            mirrored, _ = head_probabilities(self.backend(model_input(tta.flip_pixels(np.asarray(pixels)), self.info)),
                                             self.info.head, self._head_units)
            raw = tta.average(raw, mirrored)
        safety.check_finite_outputs(raw, self.info.source or "the model")  # never a `nan%`
        scores = self.unknown.score(features) if (self.unknown is not None and features is not None) else None
        return {"probabilities": apply_temperature(raw, self.info.temperature), "raw": raw, "unknown_score": scores}

    def _attach_unknown(self):
        """Load the model's unknown detector; a Keras backend is wrapped to emit the pooled features too."""
        from .. import ood
        from . import runtimes

        self.unknown = ood.load_detector(self.info) if getattr(self.info, "unknown", None) else None
        units = self.backend.output_units
        self._head_units = ood.head_units(self.info, units) if self.info.class_names else units
        if self.unknown is not None and isinstance(self.backend, runtimes.KerasRuntime) and units == self._head_units:
            self.backend = runtimes.KerasRuntime(ood.with_features(self.backend.model), self.info, self.backend.path)
        elif self.unknown is not None and self.backend.output_units == self._head_units:
            self.unknown = None  # an export made without the features output (tflite-int8): no unknown answers

    def load_pixels(self, source) -> np.ndarray:
        return read_image(source, self.info.input_size, self.resize_mode, self.interpolation)

    def predict_images(self, sources: Sequence, batch_size: int = 32) -> np.ndarray:
        """Paths, bytes or file objects -> (N, classes) probabilities, in batches."""
        outs = [self.predict_pixels(np.stack([self.load_pixels(s) for s in chunk]))
                for chunk in _chunks(sources, batch_size)]
        return np.concatenate(outs) if outs else np.zeros((0, len(self.class_names)), np.float32)

    def describe(self) -> str:
        """One line for progress output: which file, on which runtime."""
        return f"{Path(str(self.info.source)).name} on {self.runtime}"


# --------------------------------------------------------------------------- the one way in


def open_predictor(model_or_export, runtime: str = DEFAULT_RUNTIME, resize_mode: str | None = None, *,
                   weights=None, unsafe: bool = False, input_range: str | None = None) -> Predictor:
    """A (cached) Predictor for a Predictor, a LoadedModel, a model path or an export.

    - an export folder or file (`exports/onnx`, `model.tflite`, `exports/tflite-int8`): its own
      runtime, with class names, input scaling and size from its `retreino.json` / `labels.txt`;
      ONNX and TFLite never import TensorFlow or Keras;
    - a model path (run directory, .keras, .h5, Teachable Machine folder) or a LoadedModel: `runtime`
      picks Keras or one of the model's checked exports (`auto`, the default everywhere).

    `weights`, `unsafe`, `input_range` are those of `load_model`; `input_range` also overrides an
    export's recorded scaling.

    >>> p = open_predictor(RUN)
    >>> p.class_names, p is open_predictor(RUN)
    (['cats', 'dogs'], True)
    """
    if isinstance(model_or_export, Predictor):
        return model_or_export
    if runtime not in RUNTIME_CHOICES and runtime != "export":
        raise RetreinoError(f"unknown runtime {runtime!r}: use one of {' | '.join(RUNTIME_CHOICES)}")
    if resize_mode is not None and resize_mode not in RESIZE_MODES:
        raise RetreinoError(f"unknown resize mode {resize_mode!r}: use one of {' | '.join(RESIZE_MODES)}")
    if isinstance(model_or_export, (str, os.PathLike)) and Path(model_or_export).exists() \
            and exports.is_export(model_or_export):
        if weights:
            raise RetreinoError("--weights applies to a backbone name, not to an export (it carries its weights)")
        key = ("export", cache.path_key(model_or_export), runtime, resize_mode, unsafe, input_range)
        return cache.PREDICTORS.get_or_make(
            key, lambda: _export_predictor(Path(model_or_export), runtime, resize_mode, unsafe, input_range))
    loaded = load_cached(model_or_export, weights=weights, unsafe=unsafe, input_range=input_range)
    key = ("model", id(loaded), runtime, resize_mode, json.dumps(loaded.info.to_dict(), sort_keys=True, default=str))
    held, predictor = cache.PREDICTORS.get_or_make(
        key, lambda: (loaded, Predictor(loaded, runtime=runtime, resize_mode=resize_mode)))
    if held is not loaded:  # an id reused by a newer object: never hand out another model's Predictor
        predictor = Predictor(loaded, runtime=runtime, resize_mode=resize_mode)
    return predictor


def load_cached(model, **load_kwargs) -> LoadedModel:
    """A LoadedModel from a LoadedModel, a Predictor or anything `load_model` accepts, read once per file."""
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, Predictor):
        return model.loaded
    load_kwargs = {k: v for k, v in load_kwargs.items() if v not in (None, False)}
    if not Path(model).exists():
        from ..models.backbones import BACKBONES

        if str(model).lower().replace("-", "_") not in BACKBONES:  # a typo: say so before importing TensorFlow
            from ..errors import ModelLoadError

            raise ModelLoadError(f"no such model file or folder: {model} "
                                 f"(or a backbone name: {', '.join(sorted(BACKBONES))})")
    from ..models import load_model  # imports Keras: only once the path is known to be worth it

    if not Path(model).exists():
        return load_model(model, **load_kwargs)  # a backbone name
    key = (cache.path_key(model), tuple(sorted((k, str(v)) for k, v in load_kwargs.items())))
    return cache.MODELS.get_or_make(key, lambda: load_model(model, **load_kwargs))


def _export_predictor(path: Path, runtime: str, resize_mode, unsafe: bool, input_range) -> Predictor:
    record = exports.read_export(path)
    if runtime not in ("auto", "export", record.runtime):
        raise RetreinoError(
            f"{path} is a {record.format} export, which runs on {record.runtime}, not {runtime}: "
            f"drop --runtime, or give the Keras model to run it on {runtime}"
        )
    from .runtimes import open_record

    if input_range:
        from ..preprocessing import normalize_mode

        record.info.preprocessing = normalize_mode(input_range)
    backend = open_record(record, unsafe=unsafe)
    return Predictor(LoadedModel(getattr(backend, "model", None), backend.info), runtime=backend,
                     resize_mode=resize_mode)


def _pick(loaded: LoadedModel, runtime: str):
    from . import runtimes

    if runtime not in RUNTIME_CHOICES:
        raise RetreinoError(f"unknown runtime {runtime!r}: use one of {' | '.join(RUNTIME_CHOICES)}")
    source = loaded.info.source
    if runtime == "auto":
        record = exports.best_export(source)
        if record is None:
            return runtimes.KerasRuntime(loaded.model, loaded.info)
        return _open_checked(record, loaded)
    if runtime == "keras":
        return runtimes.KerasRuntime(loaded.model, loaded.info)
    return _open_checked(exports.export_for(source, runtime), loaded)


def _open_checked(record, loaded: LoadedModel):
    from . import runtimes

    if record.info.class_names and loaded.info.class_names and record.info.class_names != loaded.info.class_names:
        raise RetreinoError(
            f"the {record.format} export in {record.folder} names classes {record.info.class_names}, "
            f"the model {loaded.info.class_names}: re-export it"
        )
    return runtimes.open_record(record, unsafe=getattr(loaded, "unsafe", False))


def _open_path(path: Path, runtime: str, unsafe: bool = False):
    """A path given to Predictor: an export folder/file, or a model that `load_model` reads."""
    from . import runtimes

    if not path.exists():
        raise RetreinoError(f"no such model or export: {path}")
    is_export = exports.is_export(path)
    if is_export and runtime in ("auto", "export"):
        return runtimes.load_runtime(path, unsafe=unsafe)
    if runtime == "export":
        raise RetreinoError(f"{path} is not a retreino export (no {exports.META_FILE} beside it)")
    from ..models import load_model

    return _pick(load_model(path, unsafe=unsafe), runtime)


def _chunks(items: Sequence, n: int) -> Iterable[Sequence]:
    for i in range(0, len(items), n):
        yield items[i : i + n]
