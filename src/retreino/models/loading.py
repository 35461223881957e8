"""`load_model`: one entry point for every model retreino accepts."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

from .. import _env

_env.import_tensorflow()
from .. import safety  # noqa: E402
from ..errors import ModelLoadError, UnsafeModelError  # noqa: E402
from ..preprocessing import normalize_mode  # noqa: E402
from . import legacy_h5, tfjs  # noqa: E402
from .backbones import BACKBONES, build_backbone  # noqa: E402
from .graph import find_head, flatten_layers  # noqa: E402
from .info import LoadedModel, ModelInfo, read_labels  # noqa: E402
from .saving import read_metadata  # noqa: E402

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# Model files a folder may hold, in order of preference (a run directory, a TM export).
FOLDER_MODELS = ("fine_tuned_model.keras", "fine_tuned_model.h5", "keras_model.h5", "model.keras", "model.h5")


def load_model(
    source: str | os.PathLike,
    *,
    weights: str | os.PathLike | None = None,
    unsafe: bool = False,
    input_range: str | None = None,
    class_names: list[str] | None = None,
) -> LoadedModel:
    """Load a model file, a model folder, or a Keras Applications backbone by name.

    Accepts a Teachable Machine export (folder or `keras_model.h5`, labels from `labels.txt`),
    any Keras 2 legacy H5 (rebuilt natively for Keras 3), Keras 3 `.keras`/`.h5` files, a
    retreino run directory, or a backbone name such as "mobilenet_v2" (ImageNet weights from the
    Keras cache, `weights=PATH`, or a download).

    >>> m = load_model(MODEL)           # e.g. "../shared/models/teachable_machine/water_bottles"
    >>> m.class_names, m.info.value_range, m.info.head
    (['5 Galoon', '500ML'], '[-1, 1] (x / 127.5 - 1)', 'softmax')
    """
    path = Path(source)
    if not path.exists():
        name = str(source).lower().replace("-", "_")
        if name in BACKBONES:
            loaded = _load_backbone(name, weights)
        else:
            raise ModelLoadError(
                f"no such model file or folder: {source} "
                f"(or a backbone name: {', '.join(sorted(BACKBONES))})"
            )
    else:
        if weights is not None:
            raise ModelLoadError("--weights applies to backbone names; a model file carries its own weights")
        if tfjs.is_tfjs(path, FOLDER_MODELS):
            loaded = _load_tfjs(path, unsafe=unsafe)
        else:
            if path.is_dir():
                path = _model_in_folder(path)
            loaded = _load_file(path, unsafe=unsafe)

    if input_range:
        loaded.info.preprocessing = normalize_mode(input_range)
    if class_names:
        loaded.info.class_names = list(class_names)
    _check_classes(loaded)
    safety.check_finite_weights(loaded.model, source)
    loaded.unsafe = unsafe
    return loaded


def _model_in_folder(folder: Path) -> Path:
    for name in FOLDER_MODELS:
        if (folder / name).is_file():
            return folder / name
    if (folder / "config.json").is_file() and (folder / "state.json").is_file():
        # A run directory with no checkpoint: training stopped before its first epoch ended.
        raise ModelLoadError(
            f"{folder} holds no model file: this run never finished an epoch (it was stopped or failed before "
            f"its first checkpoint). Continue it with `retreino train --resume {folder}`, or train again"
        )
    raise ModelLoadError(f"{folder} holds no model file (looked for {', '.join(FOLDER_MODELS)})")


def _load_file(path: Path, *, unsafe: bool) -> LoadedModel:
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{path} is empty (0 bytes)")
    suffix = path.suffix.lower()
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head == HDF5_SIGNATURE:
        return _load_h5(path, unsafe=unsafe)
    if head[:2] == b"PK" or suffix == ".keras":
        return _load_keras_archive(path, unsafe=unsafe)
    raise ModelLoadError(f"{path} is not a Keras model (neither an HDF5 file nor a .keras archive)")


def _open_h5(path: Path):
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise ModelLoadError(f"{path} is truncated or corrupt: HDF5 cannot read it") from exc


def _load_h5(path: Path, *, unsafe: bool) -> LoadedModel:
    with _open_h5(path) as f:
        safety.check_h5(f, path)  # before any weight is read
        if "model_config" not in f.attrs:
            what = "weights only" if ("layer_names" in f.attrs or "layers" in f) else "no model"
            raise ModelLoadError(
                f"{path} holds {what}, not a model architecture: load a backbone by name and pass "
                f"this file with --weights, or give the full model file"
            )
        version = f.attrs.get("keras_version", b"")
        version = version.decode() if isinstance(version, bytes) else str(version)
        try:
            config = legacy_h5.read_model_config(f, path)
            safety.refuse_file_arguments(config, path)
            if version.startswith("3"):
                _refuse_keras3_code(config, path, unsafe)
                f.close()
                return _load_keras3(path, version, unsafe=unsafe, fmt="keras3-h5")
            model = legacy_h5.rebuild(config, unsafe=unsafe)
            if "model_weights" not in f:
                raise ModelLoadError(f"{path} has a model config but no weights")
            legacy_h5.load_weights(model, f["model_weights"])
        except ModelLoadError:
            raise
        except (OSError, KeyError, ValueError, TypeError, AttributeError, IndexError, RecursionError) as exc:
            raise ModelLoadError(f"{path} is truncated or corrupt ({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc

    labels_file = path.parent / "labels.txt"
    class_names = read_labels(labels_file) if labels_file.exists() else None
    is_tm = class_names is not None and _looks_like_teachable_machine(model)
    info = _infer_info(
        model,
        path,
        fmt="teachable-machine" if is_tm else "keras2-h5",
        version=version,
        class_names=class_names,
        preprocessing="tf" if is_tm else None,
    )
    if is_tm:
        # Teachable Machine's own "Keras" code snippet fits photos with a center crop:
        # ImageOps.fit(image, (224, 224), Image.Resampling.LANCZOS).
        info.resize, info.interpolation = "crop", "lanczos"
    saved = read_metadata(path)
    if saved is not None:  # a Keras 2 H5 written by `retreino export`: labels and scaling recorded
        saved.source = str(path)
        info = saved
    return LoadedModel(model, info)


def _load_tfjs(path: Path, *, unsafe: bool) -> LoadedModel:
    """A TensorFlow.js Layers model (Teachable Machine's download): see models/tfjs.py."""
    import json

    model, model_json, metadata = tfjs.read_tfjs(path, unsafe=unsafe)
    saved = model_json.parent / "retreino.json"  # written beside the files by `retreino export --format tfjs`
    if saved.is_file():
        try:
            info = ModelInfo.from_dict(json.loads(saved.read_text(encoding="utf-8")))
            info.source, info.format = str(model_json), "tfjs"
            return LoadedModel(model, info)
        except (OSError, ValueError, TypeError):
            pass  # unreadable: fall back to what the TF.js files say
    labels = metadata.get("labels")
    class_names = [str(name) for name in labels] if isinstance(labels, list) and labels else None
    is_tm = class_names is not None and _looks_like_teachable_machine(model)
    info = _infer_info(
        model,
        model_json,
        fmt="teachable-machine-tfjs" if is_tm else "tfjs",
        version=tfjs.tfjs_version(model_json, metadata),
        class_names=class_names,
        preprocessing="tf" if is_tm else None,
    )
    size = metadata.get("imageSize")
    if size and tuple(info.input_size) != (int(size), int(size)):
        h, w = info.input_size
        info.notes.append(f"metadata.json says imageSize {size} but the model takes {h}x{w}")
    if is_tm:
        # Teachable Machine's page center-crops each photo to a square before resizing it (canvas drawImage).
        info.resize, info.interpolation = "crop", "bilinear"
    return LoadedModel(model, info)


def _looks_like_teachable_machine(model) -> bool:
    """TM image exports: a Sequential of (MobileNet feature Sequential, Dense head Sequential)."""
    import keras

    if not isinstance(model, keras.Sequential) or len(model.layers) != 2:
        return False
    names = {layer.name for layer in flatten_layers(model)}
    return "Conv1" in names and tuple(model.input_shape[1:]) == (224, 224, 3)


def _load_keras_archive(path: Path, *, unsafe: bool) -> LoadedModel:
    try:
        with zipfile.ZipFile(path) as zf:
            safety.check_zip(zf, path)  # on declared sizes, before anything is decompressed
            members = set(zf.namelist())
            bad = zf.testzip()
            if bad is None and "config.json" in members:
                config = legacy_h5.parse_json(zf.read("config.json"), f"{path} config.json")
                weights = zf.read("model.weights.h5") if "model.weights.h5" in members else None
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ModelLoadError(f"{path} is truncated or corrupt: not a readable .keras archive") from exc
    if bad is not None:
        raise ModelLoadError(f"{path} is corrupt: member {bad} fails its checksum")
    if "config.json" not in members:
        raise ModelLoadError(f"{path} is a zip file but not a .keras model (no config.json)")
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path}: config.json is not a model config (a JSON {type(config).__name__})")
    safety.refuse_file_arguments(config, path)
    _refuse_keras3_code(config, path, unsafe)
    if weights is not None:
        safety.check_h5_bytes(weights, f"{path} (model.weights.h5)")
    return _load_keras3(path, "3", unsafe=unsafe, fmt="keras")


def _refuse_keras3_code(config, path: Path, unsafe: bool) -> None:
    """Say exactly what in a Keras 3 config would run code, before Keras is asked to load it."""
    code = safety.keras3_code(config)
    if code and not unsafe:
        raise UnsafeModelError(
            f"{path.name} embeds Python code ({', '.join(code[:3])}); loading it runs that code. "
            "Pass --unsafe (unsafe=True) only if you trust the file"
        )


def _load_keras3(path: Path, version: str, *, unsafe: bool, fmt: str) -> LoadedModel:
    import keras

    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=not unsafe)
    except Exception as exc:
        msg = str(exc).strip()
        if "Lambda" in msg or "safe_mode" in msg:
            refused = msg.splitlines()[0][:200]
            raise UnsafeModelError(
                f"{path.name} was refused by Keras' safe mode ({refused}). "
                "Pass --unsafe (unsafe=True) only if you trust the file"
            ) from exc
        first = msg.splitlines()[0] if msg else type(exc).__name__
        raise ModelLoadError(f"cannot load {path}: {first}") from exc
    code = [layer.name for layer in flatten_layers(model) if layer.__class__.__name__ in safety.CODE_LAYERS]
    if code and not unsafe:
        raise UnsafeModelError(
            f"{path.name} embeds Python code (Lambda layer '{code[0]}'). Pass --unsafe only if you trust the file"
        )
    saved = read_metadata(path)
    if saved is not None:
        saved.source = str(path)
        saved.format = fmt
        return LoadedModel(model, saved)
    labels_file = path.parent / "labels.txt"
    class_names = read_labels(labels_file) if labels_file.exists() else None
    return LoadedModel(model, _infer_info(model, path, fmt=fmt, version=version, class_names=class_names))


def _infer_info(model, path: Path, *, fmt: str, version: str, class_names, preprocessing=None) -> ModelInfo:
    shape = model.input_shape
    if isinstance(shape, list):
        raise ModelLoadError(f"{path.name} has {len(shape)} inputs; retreino handles single-image classifiers")
    if len(shape) != 4 or shape[-1] not in (1, 3):
        raise ModelLoadError(f"{path.name} takes inputs of shape {tuple(shape[1:])}, not images (H, W, 3)")
    head, _units = find_head(model)
    notes = []
    if preprocessing is None:
        preprocessing = _guess_preprocessing(model)
        if preprocessing == "unit":
            notes.append("input range not recorded in the file: assumed [0, 1]; override with --input-range")
    return ModelInfo(
        format=fmt,
        source=str(path),
        input_size=(int(shape[1] or 224), int(shape[2] or 224)),
        preprocessing=preprocessing,
        head=head,
        class_names=class_names,
        keras_version=version or None,
        notes=notes,
    )


def _guess_preprocessing(model) -> str:
    layers = flatten_layers(model)
    first = layers[0].__class__.__name__ if layers else ""
    if first in ("Rescaling", "Normalization"):
        return "raw"
    names = {layer.name for layer in layers}
    if {"Conv1", "expanded_conv_depthwise"} <= names:  # Keras' MobileNetV2 expects [-1, 1]
        return "tf"
    return "unit"


def _load_backbone(name: str, weights) -> LoadedModel:
    if weights is None:
        weights = "imagenet"
    elif Path(weights).is_file() and _starts_with(Path(weights), HDF5_SIGNATURE):
        with _open_h5(Path(weights)) as f:
            safety.check_h5(f, weights)  # a weights file may point at other files too
    model, spec = build_backbone(name, weights=weights)
    info = ModelInfo(
        format="keras-applications",
        source=name,
        input_size=(spec.size, spec.size),
        preprocessing=spec.preprocessing,
        head="features",
        class_names=None,
        backbone=name,
        # Keras' own image loading for these backbones (image_dataset_from_directory, the
        # transfer-learning guide) resizes the whole photo, bilinear, without keeping its aspect.
        resize="stretch",
        interpolation="bilinear",
    )
    return LoadedModel(model, info)


def _starts_with(path: Path, signature: bytes) -> bool:
    with open(path, "rb") as fh:
        return fh.read(len(signature)) == signature


def _check_classes(loaded: LoadedModel) -> None:
    info = loaded.info
    if info.class_names and info.head in ("softmax", "logits"):
        _, units = find_head(loaded.model)
        if units != len(info.class_names):
            raise ModelLoadError(
                f"labels.txt names {len(info.class_names)} classes but the model outputs {units}"
            )
