"""Inference: everything that turns a model or an export into class probabilities.

- `exports`: export folders and their `retreino.json` records, and the choice `runtime="auto"` makes;
- `runtimes`: Keras, ONNX Runtime, LiteRT (TFLite), SavedModel behind one call;
- `predictor`: `Predictor` (scaling, head normalisation) and `open_predictor`, the one way in;
- `cache`: the only caches of loaded models and Predictors.

Importing this package never imports TensorFlow or Keras; only opening a Keras or SavedModel
runtime does.
"""
from .exports import DEFAULT_RUNTIME, RUNTIME_CHOICES, RUNTIMES, ExportRecord, is_export, read_export
from .predictor import Predictor, load_cached, open_predictor, probabilities, resize_mode_of

__all__ = [
    "DEFAULT_RUNTIME", "RUNTIMES", "RUNTIME_CHOICES", "ExportRecord", "Predictor", "is_export", "load_cached",
    "open_predictor", "probabilities", "read_export", "resize_mode_of",
]
