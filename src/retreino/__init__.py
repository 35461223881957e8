"""retreino: retrain image classifiers on your own pictures.

The public API reads like the notebook's steps; names are imported lazily so that
`retreino --help` answers without loading TensorFlow.
"""
from . import _env  # noqa: F401  (TensorFlow settings before the first import)
from .errors import RetreinoError

__version__ = "0.1.0"

_LAZY = {
    "load_model": ("retreino.models", "load_model"),
    "save_model": ("retreino.models", "save_model"),
    "LoadedModel": ("retreino.models", "LoadedModel"),
    "ModelInfo": ("retreino.models", "ModelInfo"),
}

__all__ = ["RetreinoError", "__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'retreino' has no attribute {name!r}")
