"""Loading, inspecting and saving models.

`ModelInfo` and `LoadedModel` are plain metadata (no TensorFlow); `load_model` and `save_model`
need Keras, so they are imported on first use: code that only reads an export's metadata
(`retreino predict model.onnx ...`) never pays for importing TensorFlow.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .info import LoadedModel, ModelInfo

__all__ = ["LoadedModel", "ModelInfo", "load_model", "save_model"]

_LAZY = {"load_model": ".loading", "save_model": ".saving"}

if TYPE_CHECKING:
    from .loading import load_model
    from .saving import save_model


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
