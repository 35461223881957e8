"""Write a model as Teachable Machine's TensorFlow.js download: model.json + weights.bin + metadata.json.

The three files are what `tmImage.load(modelURL, metadataURL)` from `@teachablemachine/image`
(and `tf.loadLayersModel` from `@tensorflow/tfjs`) read, so a page built on Teachable Machine's
sample code can swap in a model retrained by retreino:

- `model.json`: `{"format": "layers-model", "generatedBy", "convertedBy", "modelTopology",
  "weightsManifest"}`. The topology is the Keras 2 JSON that `keras2_h5.keras2_config` already
  writes for the `tm`/`h5` formats (one flat Functional graph), named "Model" as tfjs-layers 1.x
  registers it; the manifest lists every weight as `layer/weight` with its shape, float32.
- `weights.bin`: those weights, raw little-endian float32, concatenated in manifest order.
- `metadata.json`: Teachable Machine's fields (`labels`, `imageSize`, `tfjsVersion`, `tmVersion`,
  `packageVersion`, `packageName`, `modelName`, `timeStamp`, `userMetadata`).

Written directly rather than through the `tensorflowjs` converter: see docs/export.md for why.
Only models TM's library runs faithfully are written (224x224x3 input in [-1, 1], softmax head,
layers and activations that tfjs-layers 1.3.1, the version @teachablemachine/image pins, knows);
anything else raises ExportError with the reason before a file is written.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .. import __version__
from ..atomic import write_bytes, write_json
from ..models.info import LoadedModel
from .keras2_h5 import SUPPORTED, ExportError, _keras2_weights, _leaf_objects, keras2_config
from .tm_contract import check_tm_contract

MODEL_JSON, WEIGHTS_BIN, METADATA_JSON = "model.json", "weights.bin", "metadata.json"
TFJS_VERSION = "1.3.1"  # the tfjs that @teachablemachine/image 0.8.5 pins (its peer dependency)
TM_VERSION = "2.4.14"  # Teachable Machine's version in the newest real export we have read
TM_PACKAGE = "@teachablemachine/image"
TM_PACKAGE_VERSION = "0.8.5"
# tfjs-layers 1.3.1 has no Subtract, SpatialDropout2D or Rescaling layer.
TFJS_LAYERS = SUPPORTED - {"Subtract", "SpatialDropout2D", "Rescaling"}
# Activation names tfjs-layers 1.3.1 resolves to the same function as Keras.
TFJS_ACTIVATIONS = {"linear", "relu", "relu6", "sigmoid", "softmax", "tanh", "elu", "selu", "softplus", "softsign"}


def check_tfjs(loaded: LoadedModel) -> dict:
    """Refuse a model TM's library would run wrongly; return its tfjs `modelTopology`."""
    check_tm_contract(loaded, "tfjs")
    config = keras2_config(loaded.model, fmt="tfjs")
    for layer in config["config"]["layers"]:
        _check_layer(layer["class_name"], layer["config"])
    return {
        "class_name": "Model",  # tfjs-layers 1.x registers a Functional model under this name
        "config": config["config"],
        "keras_version": f"retreino {__version__} (Keras 2 layout)",
        "backend": "tensor_flow.js",
    }


def _check_layer(cls: str, cfg: dict) -> None:
    name = cfg.get("name", "?")
    if cls not in TFJS_LAYERS:
        raise ExportError(
            f"layer '{name}' ({cls}) cannot be expressed in the tfjs format: tfjs-layers {TFJS_VERSION} (which "
            "Teachable Machine's library uses) has no such layer. Export to keras/onnx/tflite instead"
        )
    activation = cfg.get("activation")
    if isinstance(activation, str) and activation not in TFJS_ACTIVATIONS:
        raise ExportError(
            f"layer '{name}' ({cls}) uses the {activation!r} activation, which tfjs-layers {TFJS_VERSION} lacks; "
            "export to keras/onnx/tflite instead"
        )
    if cls == "ReLU" and (cfg.get("negative_slope") or cfg.get("threshold")):
        raise ExportError(
            f"layer '{name}' (ReLU) uses negative_slope/threshold, which tfjs-layers {TFJS_VERSION} ignores: "
            "it would compute something else"
        )


def write_tfjs(loaded: LoadedModel, folder: str | Path, *, model_name: str | None = None) -> list[str]:
    """Write model.json, weights.bin and metadata.json into `folder`; returns the file names."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    topology = check_tfjs(loaded)
    leaves = _leaf_objects(loaded.model, "tfjs")
    specs, blobs = [], []
    for layer_config in topology["config"]["layers"]:
        layer = leaves.get(layer_config["name"])
        if layer is None:
            continue
        for wname, value in _keras2_weights(layer):
            value = np.ascontiguousarray(value, dtype="<f4")
            specs.append({"name": wname.split(":")[0], "shape": list(value.shape), "dtype": "float32"})
            blobs.append(value.tobytes())
    model_json = {
        "format": "layers-model",
        "generatedBy": f"retreino {__version__}",
        "convertedBy": f"retreino {__version__} (written directly, no converter)",
        "modelTopology": topology,
        "weightsManifest": [{"paths": [WEIGHTS_BIN], "weights": specs}],
    }
    write_bytes(folder / WEIGHTS_BIN, b"".join(blobs))
    (folder / MODEL_JSON).write_text(json.dumps(model_json), encoding="utf-8")
    write_json(folder / METADATA_JSON, tm_metadata(loaded, model_name))
    return [MODEL_JSON, WEIGHTS_BIN, METADATA_JSON]


def tm_metadata(loaded: LoadedModel, model_name: str | None = None) -> dict:
    """Teachable Machine's metadata.json fields, in the order TM writes them."""
    info = loaded.info
    return {
        "tfjsVersion": TFJS_VERSION,
        "tmVersion": TM_VERSION,
        "packageVersion": TM_PACKAGE_VERSION,
        "packageName": TM_PACKAGE,
        "timeStamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        "userMetadata": {"retreino": __version__},
        "modelName": model_name or _model_name(info.source),
        "labels": list(info.class_names or []),
        "imageSize": int(info.input_size[0]),
    }


def _model_name(source: str) -> str:
    path = Path(str(source))
    if path.name in ("fine_tuned_model.keras", "fine_tuned_model.h5", "model.json", "keras_model.h5"):
        return path.parent.name or "retreino-model"
    return path.stem or "retreino-model"
