"""Loading, inspecting and saving models."""
from .info import LoadedModel, ModelInfo
from .loading import load_model
from .saving import save_model

__all__ = ["LoadedModel", "ModelInfo", "load_model", "save_model"]
