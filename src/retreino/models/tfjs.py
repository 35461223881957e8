"""Read a TensorFlow.js Layers model (Teachable Machine's default download) as a native Keras 3 model.

A TF.js Layers model is a folder of three kinds of file:

- `model.json`: `modelTopology`, the same Keras-style JSON a Keras 2 H5 file keeps in its
  `model_config` attribute (Teachable Machine's: a Sequential of a truncated MobileNetV2
  "Model" plus pooling, and a Sequential of Dense layers), and `weightsManifest`, a list of
  groups, each naming its shard files (`paths`) and the weights they hold in order (`name`
  `layer/weight`, `shape`, `dtype`, and optionally `quantization`);
- the shards (`weights.bin`, or `group1-shard1of3.bin` ...): raw little-endian arrays, a group's
  shards concatenated in the order of `paths`;
- `metadata.json` (Teachable Machine only): `labels`, `imageSize`, `tfjsVersion`, `tmVersion`.

The graph is rebuilt by the legacy H5 reader (`legacy_h5.rebuild`: Keras 3 deserialises every
leaf layer, the graph is re-linked from the Keras 2 node lists) and the weights are assigned by
the same matcher (`legacy_h5.assign_weights`), fed from the manifest instead of HDF5. Only the
byte decoding is TF.js-specific: float32/int32/bool arrays, and the quantized forms the TF.js
converter writes (`quantization: {dtype: uint8|uint16, scale, min}` -> q * scale + min, as
tfjs-core's `decodeWeights` computes it; `{dtype: float16}` -> IEEE half floats).
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..errors import ModelLoadError

MODEL_JSON = "model.json"
METADATA_JSON = "metadata.json"
# dtype -> (numpy little-endian type); a weight's values as TF.js stores them unquantized.
PLAIN_DTYPES = {"float32": "<f4", "int32": "<i4", "bool": "u1"}
# quantization dtype -> stored numpy type
QUANTIZED_DTYPES = {"uint8": "u1", "uint16": "<u2", "float16": "<f2"}


def is_tfjs(path: Path, model_files: tuple[str, ...] = ()) -> bool:
    """A `*.json` file, or a folder with `model.json` and none of `model_files` (those win)."""
    if path.is_file():
        return path.suffix.lower() == ".json"
    if path.is_dir() and (path / MODEL_JSON).is_file():
        return not any((path / name).is_file() for name in model_files)
    return False


def read_tfjs(path: str | Path, *, unsafe: bool = False):
    """Rebuild the model of a TF.js folder or `model.json`; returns (keras model, model.json path, metadata).

    `metadata` is metadata.json's content beside the model ({} if there is none).
    """
    from . import legacy_h5

    model_json = Path(path)
    if model_json.is_dir():
        model_json = model_json / MODEL_JSON
    artifacts = _read_json(model_json)
    topology = artifacts.get("modelTopology")
    if not isinstance(topology, dict):
        if artifacts.get("format") == "graph-model" or "weightsManifest" in artifacts:
            raise ModelLoadError(
                f"{model_json} is a TensorFlow.js graph model (converted from a SavedModel): it has no Keras "
                "layers to rebuild. retreino reads TF.js Layers models, Teachable Machine's format"
            )
        raise ModelLoadError(f"{model_json} is not a TensorFlow.js model (no modelTopology)")
    # The Python converter nests the Keras config under model_config; tfjs-layers writes it bare.
    config = topology.get("model_config", topology)
    if "class_name" not in config:
        raise ModelLoadError(f"{model_json}: modelTopology holds no Keras model config")
    model = legacy_h5.rebuild(config, unsafe=unsafe)
    manifest = artifacts.get("weightsManifest")
    if not isinstance(manifest, list):
        raise ModelLoadError(f"{model_json} has a model topology but no weightsManifest")
    saved: dict[str, list[tuple[str, np.ndarray]]] = defaultdict(list)
    for name, value in read_weights(model_json, manifest):
        parts = name.split("/")
        if len(parts) < 2:
            raise ModelLoadError(f"{model_json}: weight {name!r} is not named layer/weight")
        saved[parts[-2]].append((parts[-1], value))
    legacy_h5.assign_weights(model, saved, source=model_json.name)
    metadata_file = model_json.parent / METADATA_JSON
    metadata = _read_json(metadata_file) if metadata_file.is_file() else {}
    return model, model_json, metadata


def tfjs_version(model_json: Path, metadata: dict) -> str | None:
    """"tfjs-layers 1.7.4" style version of the writer, from the topology or metadata.json."""
    version = (_read_json(model_json).get("modelTopology") or {}).get("keras_version")
    if not version and metadata.get("tfjsVersion"):
        version = f"tfjs {metadata['tfjsVersion']}"
    return version or None


def read_weights(model_json: Path, manifest: list) -> list[tuple[str, np.ndarray]]:
    """(name, array) of every weight in the manifest, decoded as tfjs-core's `decodeWeights` does."""
    folder = model_json.parent
    out = []
    for group in manifest:
        paths = group.get("paths") or []
        buffer = b"".join(_read_shard(folder, p) for p in paths)
        offset = 0
        for spec in group.get("weights", []):
            value, used = _decode(spec, buffer, offset, shards=", ".join(paths))
            out.append((spec["name"], value))
            offset += used
        if offset != len(buffer):
            raise ModelLoadError(
                f"{', '.join(paths)} hold {len(buffer)} bytes but {model_json.name} describes {offset}: "
                "the weights do not belong to this model.json"
            )
    return out


def _read_shard(folder: Path, relative: str) -> bytes:
    path = (folder / relative).resolve()
    if "://" in relative or folder.resolve() not in path.parents:
        raise ModelLoadError(f"weight file {relative!r} is outside the model's folder; refusing to read it")
    if not path.is_file():
        raise ModelLoadError(f"the weight file {relative} named by model.json is missing from {folder}")
    return path.read_bytes()


def _decode(spec: dict, buffer: bytes, offset: int, shards: str) -> tuple[np.ndarray, int]:
    name, dtype = spec.get("name", "?"), spec.get("dtype", "float32")
    shape = tuple(int(d) for d in spec.get("shape", []))
    size = int(np.prod(shape)) if shape else 1
    quantization = spec.get("quantization")
    stored = QUANTIZED_DTYPES.get(quantization.get("dtype")) if quantization else PLAIN_DTYPES.get(dtype)
    if stored is None:
        what = f"quantization dtype {quantization.get('dtype')!r}" if quantization else f"dtype {dtype!r}"
        raise ModelLoadError(f"weight '{name}' uses {what}, which retreino does not read")
    nbytes = size * np.dtype(stored).itemsize
    if offset + nbytes > len(buffer):
        raise ModelLoadError(
            f"{shards} is truncated: weight '{name}' needs bytes {offset}-{offset + nbytes}, the file has {len(buffer)}"
        )
    raw = np.frombuffer(buffer, stored, count=size, offset=offset)
    if not quantization:
        value = raw.astype(bool) if dtype == "bool" else raw.astype(stored.replace("<", "="))
    elif quantization["dtype"] == "float16":
        if dtype != "float32":
            raise ModelLoadError(f"weight '{name}': float16 quantization of a {dtype} weight is not a TF.js form")
        value = raw.astype(np.float32)
    else:
        if "scale" not in quantization or "min" not in quantization:
            raise ModelLoadError(f"weight '{name}': {quantization['dtype']} quantization without scale and min")
        # JavaScript computes in float64, then stores into a Float32Array / rounds half up (Math.round).
        exact = raw.astype(np.float64) * float(quantization["scale"]) + float(quantization["min"])
        if dtype == "float32":
            value = exact.astype(np.float32)
        elif dtype == "int32":
            value = np.floor(exact + 0.5).astype(np.int32)
        else:
            raise ModelLoadError(f"weight '{name}': quantized {dtype} weights are not a TF.js form")
    return value.reshape(shape), nbytes


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelLoadError(f"no such file: {path}") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path} is not valid JSON ({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} is not a TensorFlow.js model file (a JSON object is expected)")
    return data
