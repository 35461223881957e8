"""Keras Applications backbones by name, with ImageNet weights from cache, file or download."""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelLoadError


@dataclass(frozen=True)
class Backbone:
    constructor: str  # attribute of keras.applications
    preprocessing: str  # retreino.preprocessing mode
    size: int = 224
    cache_file: str | None = None  # what `weights="imagenet"` stores in ~/.keras/models


BACKBONES = {
    "mobilenet_v2": Backbone("MobileNetV2", "tf", 224, "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"),
    "mobilenet_v3_small": Backbone("MobileNetV3Small", "raw", 224, "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"),
    "mobilenet_v3_large": Backbone("MobileNetV3Large", "raw", 224, "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5"),
    "efficientnet_b0": Backbone("EfficientNetB0", "raw", 224, "efficientnetb0_notop.h5"),
    "efficientnet_v2_b0": Backbone("EfficientNetV2B0", "raw", 224, "efficientnetv2-b0_notop.h5"),
    "resnet50": Backbone("ResNet50", "caffe", 224, "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "densenet121": Backbone("DenseNet121", "torch", 224, "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "convnext_tiny": Backbone("ConvNeXtTiny", "raw", 224, "convnext_tiny_notop.h5"),
    "inception_v3": Backbone("InceptionV3", "tf", 299, "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "xception": Backbone("Xception", "tf", 299, "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"),
}


def keras_cache_dir() -> Path:
    base = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(base) / "models"


def offline() -> bool:
    return os.environ.get("RETREINO_OFFLINE", "").lower() in ("1", "true", "yes")


def build_backbone(name: str, weights: str | os.PathLike | None = "imagenet", input_size: int | None = None):
    """A headless backbone (global-average-pooled features) with its preprocessing mode.

    `weights` is "imagenet" (Keras cache, else download), a local weights file (Keras 3
    `.weights.h5` or the legacy H5 layout Keras downloads), or None for random weights.
    """
    import keras

    spec = BACKBONES.get(name)
    if spec is None:
        raise ModelLoadError(f"unknown backbone '{name}': choose one of {', '.join(sorted(BACKBONES))}")
    size = int(input_size or spec.size)
    ctor = getattr(keras.applications, spec.constructor)
    kwargs = dict(include_top=False, input_shape=(size, size, 3), pooling="avg")

    if weights == "imagenet":
        cached = spec.cache_file and (keras_cache_dir() / spec.cache_file).exists()
        if not cached and offline():
            raise _no_weights_error(name, spec, "RETREINO_OFFLINE is set")
        try:
            return ctor(weights="imagenet", **kwargs), spec
        except Exception as exc:
            raise _no_weights_error(name, spec, str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc

    model = ctor(weights=None, **kwargs)
    if weights is not None:
        load_weights_file(model, Path(weights), what=f"backbone '{name}'")
    return model, spec


def load_weights_file(model, path: Path, what: str = "model") -> None:
    """Load weights from a Keras 3 `.weights.h5` or a legacy (Keras 2 / download) H5 file."""
    import h5py

    if not path.exists():
        raise ModelLoadError(f"weights file not found: {path}")
    try:
        with h5py.File(path, "r") as f:
            legacy = "layer_names" in f.attrs or (
                "model_weights" in f and "layer_names" in f["model_weights"].attrs
            )
    except OSError as exc:
        raise ModelLoadError(f"{path} is not a readable HDF5 weights file ({exc})") from exc
    try:
        if legacy:
            model.load_weights(_with_suffix(path, ".h5"))
        else:
            model.load_weights(_with_suffix(path, ".weights.h5"))
    except ModelLoadError:
        raise
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"weights in {path.name} do not fit {what}: {msg}") from exc


def _with_suffix(path: Path, suffix: str) -> Path:
    """Keras picks the weights format from the file name; link the file under the right one."""
    if str(path).endswith(suffix) and not (suffix == ".h5" and str(path).endswith(".weights.h5")):
        return path
    tmpdir = Path(tempfile.mkdtemp(prefix="retreino-weights-"))
    link = tmpdir / (path.stem.replace(".weights", "") + suffix)
    os.symlink(path.resolve(), link)
    return link


def _no_weights_error(name: str, spec: Backbone, why: str) -> ModelLoadError:
    return ModelLoadError(
        f"ImageNet weights for '{name}' are not in the Keras cache ({keras_cache_dir() / (spec.cache_file or '')}) "
        f"and could not be downloaded ({why}). Pass a local weights file with --weights PATH, "
        f"or copy the file into {keras_cache_dir()}"
    )
