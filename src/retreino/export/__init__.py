"""Export a model to other formats, each checked against the Keras model before it is trusted.

Every export is a folder holding the model file, `labels.txt` (Teachable Machine style) and
`retreino.json` (ModelInfo + an `export` record), plus the format's own metadata where it has
any (ONNX `metadata_props`, a zip of both files appended to a `.tflite` as TFLite Support does,
an HDF5 attribute). After writing, the export is run on real images (or, lacking any, smooth
synthetic ones) next to the Keras model and the agreement is recorded: the max absolute
difference of probabilities for float formats, the top-1 agreement for int8. `runtime="auto"`
only ever picks an export that passed.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import __version__, _env

_env.import_tensorflow()
from ..atomic import write_bytes, write_json, write_text  # noqa: E402
from ..errors import RetreinoError  # noqa: E402
from ..inference.exports import EXPORT_FILES, META_FILE, exports_folder, model_fingerprint  # noqa: E402
from ..inference.runtimes import quiet_native  # noqa: E402
from ..models.info import LoadedModel, ModelInfo, labels_text  # noqa: E402
from ..preprocessing import scale_pixels_np  # noqa: E402
from .keras2_h5 import ExportError, write_keras2_h5  # noqa: E402

FORMATS = ("keras", "h5", "tm", "savedmodel", "tflite", "tflite-int8", "onnx", "tfjs")
FLOAT_TOLERANCE = 1e-4  # max |p_export - p_keras| over every image and class
INT8_MIN_AGREEMENT = 0.99  # fraction of images with the same top-1 class
PARITY_IMAGES = 100
CALIBRATION_IMAGES = 100
__all__ = ["FORMATS", "ExportError", "ExportResult", "export_model", "export_models", "check_tm_contract"]


@dataclass
class ExportResult:
    format: str
    folder: Path
    file: Path
    parity: dict[str, Any]
    latency_ms: float | None = None
    keras_latency_ms: float | None = None
    files: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.parity.get("passed"))


def export_model(loaded: LoadedModel, fmt: str, out: str | os.PathLike | None = None, **kw) -> ExportResult:
    """Export `loaded` to one format; see `export_models`."""
    return export_models(loaded, [fmt], out, **kw)[0]


def export_models(
    loaded: LoadedModel,
    formats: Sequence[str],
    out: str | os.PathLike | None = None,
    *,
    images: Sequence | str | os.PathLike | None = None,
    calibration: Sequence | str | os.PathLike | None = None,
    parity_images: int = PARITY_IMAGES,
    calibration_images: int = CALIBRATION_IMAGES,
    measure: bool = True,
    seed: int = 0,
) -> list[ExportResult]:
    """Export to each format under `out` (one format: `out` is its folder; several: `out/<format>/`).

    `out` defaults to the model's `exports/` folder (`runs/<name>/exports/<format>/`).
    `images`: a folder or list of real images for the parity check (and int8 calibration, unless
    `calibration` gives other images: ideally training images, with parity on held-out ones).
    """
    formats = list(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise RetreinoError(f"unknown export format {unknown[0]!r}: use one of {' | '.join(FORMATS)}")
    if loaded.info.head == "features":
        raise RetreinoError("this model has no classification head (a bare backbone): train it before exporting")
    for fmt in formats:  # refuse before spending minutes on the others
        if fmt == "tm":
            check_tm_contract(loaded)
        if fmt in ("tm", "h5"):
            from .keras2_h5 import keras2_config

            keras2_config(loaded.model, fmt=fmt)
        if fmt == "tfjs":
            from .tfjs import check_tfjs

            check_tfjs(loaded)

    root = Path(out) if out is not None else exports_folder(loaded.info.source)
    folders = {fmt: (root if (out is not None and len(formats) == 1) else root / fmt) for fmt in formats}

    paths = _image_list(images)
    calibration_given = _image_list(calibration)
    if "tflite-int8" in formats and not (paths or calibration_given):
        raise RetreinoError(
            "tflite-int8 calibrates its quantization on real images: pass images=FOLDER (--images) "
            "with a few dozen pictures like those the model will see"
        )
    parity_paths, calibration_paths = _split_images(paths, parity_images, calibration_images, seed)
    if calibration_given:
        calibration_paths = _split_images(calibration_given, 0, calibration_images, seed)[1]
    from ..console import status

    if parity_paths:
        status(f"decoding {len(parity_paths)} parity images ...")
    pixels = _load_pixels(parity_paths, loaded.info) if parity_paths else _synthetic(loaded.info.input_size, 32, seed)
    status(f"reference probabilities from Keras on {len(pixels)} images ...")
    keras_predictor = _keras_predictor(loaded)
    reference = _probs(keras_predictor, pixels)
    keras_latency = _latency_ms(keras_predictor.backend, loaded.info) if measure else None

    results = []
    with _Workspace(loaded) as ws:
        for i, fmt in enumerate(formats, 1):
            status(f"exporting to {fmt} ({i}/{len(formats)}), then checking it against Keras "
                   f"on {len(pixels)} images ...")
            results.append(
                _export_one(
                    loaded, fmt, folders[fmt], ws,
                    pixels=pixels, reference=reference, image_kind="real" if parity_paths else "synthetic",
                    calibration=calibration_paths, measure=measure, keras_latency=keras_latency,
                )
            )
    return results


def check_tm_contract(loaded: LoadedModel) -> None:
    """Teachable Machine apps feed 224x224x3 pixels scaled to [-1, 1] and read a softmax."""
    info, model = loaded.info, loaded.model
    shape = tuple(model.input_shape[1:])
    if shape != (224, 224, 3):
        raise ExportError(
            f"the tm format needs a 224x224x3 input (Teachable Machine apps resize to that); this model takes "
            f"{shape}. Retrain from a 224x224 backbone, or export to keras/onnx/tflite"
        )
    if info.preprocessing != "tf":
        raise ExportError(
            f"the tm format needs inputs scaled to [-1, 1] (apps compute image/127.5 - 1); this model expects "
            f"{info.value_range}. Retrain from a Teachable Machine or MobileNetV2 base, or export to another format"
        )
    if info.head != "softmax":
        raise ExportError(
            f"the tm format needs a softmax output (apps read probabilities); this model's head is {info.head}. "
            "Retrain with a softmax head, or export to another format"
        )
    if not info.class_names:
        raise ExportError("the tm format needs class names for labels.txt; pass class_names (--labels) when loading")


# --------------------------------------------------------------------------- one format


def _export_one(loaded, fmt, folder: Path, ws, *, pixels, reference, image_kind, calibration, measure, keras_latency):
    from ..inference import Predictor

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    started = time.perf_counter()
    try:
        info = _export_info(loaded, fmt)
        record = {
            "format": fmt,
            "file": EXPORT_FILES[fmt],
            "retreino_version": __version__,
            "source": str(loaded.info.source),
            "source_sha256": model_fingerprint(loaded.info.source),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        meta = {**info.to_dict(), "export": record}
        try:
            _WRITERS[fmt](loaded, tmp, ws, meta=meta, calibration=calibration)
        except RetreinoError:
            raise
        except Exception as exc:  # converters raise anything; the user needs the format and the reason
            raise ExportError(f"cannot export to {fmt}: {_first_line(exc)}") from exc
        write_text(tmp / "labels.txt", labels_text(info.class_names or []))
        _carry_unknown(loaded, fmt, tmp, meta)
        write_json(tmp / META_FILE, meta)

        # Checked exactly as predict/evaluate/serve will run it: the export alone, metadata from its files.
        # Our own fresh output of a model already loaded: a SavedModel made here is trusted for its parity check.
        predictor = Predictor(tmp, runtime="export", unsafe=True)
        runtime = predictor.backend
        got = _probs(predictor, pixels)
        record["parity"] = _parity(fmt, reference, got, image_kind)
        record["export_seconds"] = round(time.perf_counter() - started, 1)
        if measure:
            record["latency_ms"] = _latency_ms(runtime, info)
            record["keras_latency_ms"] = keras_latency
        write_json(tmp / META_FILE, meta)
        del runtime
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(
        format=fmt,
        folder=folder,
        file=folder / EXPORT_FILES[fmt] if EXPORT_FILES[fmt] != "." else folder,
        parity=record["parity"],
        latency_ms=record.get("latency_ms"),
        keras_latency_ms=record.get("keras_latency_ms"),
        files=sorted(p.name for p in folder.iterdir()),
    )


def _export_info(loaded: LoadedModel, fmt: str) -> ModelInfo:
    info = copy.deepcopy(loaded.info)
    info.format = {"tm": "teachable-machine", "h5": "keras2-h5"}.get(fmt, fmt)
    info.source = EXPORT_FILES[fmt]
    info.notes = [n for n in info.notes if "assumed" not in n]  # the range is recorded now, not guessed
    return info


def _write_keras(loaded, folder: Path, ws, *, meta, calibration):
    from ..models.saving import save_model

    save_model(LoadedModel(loaded.model, ModelInfo.from_dict(meta)), folder / "model.keras", write_labels=False)


def _write_keras2(name: str, fmt: str):
    def write(loaded, folder: Path, ws, *, meta, calibration):
        write_keras2_h5(loaded.model, folder / name, fmt=fmt, metadata=json.dumps(meta))

    return write


def _write_savedmodel(loaded, folder: Path, ws, *, meta, calibration):
    shutil.copytree(ws.saved_model(features=_features_output(loaded, "savedmodel")), folder, dirs_exist_ok=True)


def _write_tflite(int8: bool):
    def write(loaded, folder: Path, ws, *, meta, calibration):
        import tensorflow as tf

        converter = tf.lite.TFLiteConverter.from_saved_model(
            str(ws.saved_model(features=_features_output(loaded, "tflite-int8" if int8 else "tflite"))))
        if int8:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = _representative(calibration, loaded.info)
            # Integer kernels throughout; float32 input/output so callers scale pixels the same way
            # for every runtime.
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        with _quiet(), quiet_native():
            flatbuffer = converter.convert()
        name = EXPORT_FILES["tflite-int8" if int8 else "tflite"]
        # TFLite Support's convention for associated files: a zip appended to the flatbuffer,
        # which interpreters ignore and metadata readers open.
        write_bytes(folder / name, flatbuffer + _zip_bytes(meta))

    return write


def _write_onnx(loaded, folder: Path, ws, *, meta, calibration):
    import onnx

    path = folder / "model.onnx"
    with _quiet():
        _exported_model(loaded, "onnx").export(str(path), format="onnx", verbose=False)
    model = onnx.load(str(path))
    for key, value in (("retreino", json.dumps(meta)), ("labels", labels_text(meta.get("class_names") or []))):
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    write_bytes(path, model.SerializeToString())


def _write_tfjs(loaded, folder: Path, ws, *, meta, calibration):
    """model.json + weights.bin + metadata.json (export/tfjs.py) and the in-browser page (export/tfjs_page.py)."""
    from .tfjs import write_tfjs
    from .tfjs_page import missing_bundles_message, write_page

    write_tfjs(loaded, folder)
    _, versions = write_page(folder)
    meta["export"]["page_scripts"] = versions
    if not versions:
        from ..console import info

        info(f"note: {missing_bundles_message()}")


_WRITERS = {
    "keras": _write_keras,
    "h5": _write_keras2("model.h5", "h5"),
    "tm": _write_keras2("keras_model.h5", "tm"),
    "savedmodel": _write_savedmodel,
    "tflite": _write_tflite(False),
    "tflite-int8": _write_tflite(True),
    "onnx": _write_onnx,
    "tfjs": _write_tfjs,
}


class _Workspace:
    """Scratch space shared by the formats of one call: the SavedModel is traced once."""

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self.dir: Path | None = None
        self._saved: dict[bool, Path] = {}

    def __enter__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="retreino-export-"))
        return self

    def __exit__(self, *exc):
        shutil.rmtree(self.dir, ignore_errors=True)

    def saved_model(self, features: bool = False) -> Path:
        """The SavedModel of the model, or (`features`) of the model emitting [head | pooled features]."""
        if features not in self._saved:
            path = self.dir / ("saved_model_features" if features else "saved_model")
            model = self.loaded.model
            if features:
                from ..ood import with_features

                model = with_features(model)
            with _quiet():
                model.export(str(path), format="tf_saved_model", verbose=False)
            self._saved[features] = path
        return self._saved[features]


# Formats whose file gets the pooled features as extra output columns when the model has an unknown
# detector. Keras formats compute them from the Keras model at load time; int8 leaves them out (one
# quantization scale for probabilities and features would blur the probabilities).
FEATURE_OUTPUT_FORMATS = ("onnx", "tflite", "savedmodel")


def _features_output(loaded, fmt: str) -> bool:
    return bool(loaded.info.unknown) and fmt in FEATURE_OUTPUT_FORMATS


def _exported_model(loaded, fmt: str):
    if _features_output(loaded, fmt):
        from ..ood import with_features

        return with_features(loaded.model)
    return loaded.model


def _carry_unknown(loaded, fmt: str, folder: Path, meta: dict) -> None:
    """Copy unknown.npz into the export folder; an export that cannot apply it drops it from its metadata."""
    if not loaded.info.unknown:
        return
    if fmt == "tflite-int8":
        meta["unknown"] = None
        return
    src = Path(str(loaded.info.source)).parent / loaded.info.unknown.get("file", "unknown.npz")
    shutil.copy(src, folder / src.name)


def _zip_bytes(meta: dict) -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(META_FILE, json.dumps(meta, indent=2))
        zf.writestr("labels.txt", labels_text(meta.get("class_names") or []))
    return buf.getvalue()


@contextlib.contextmanager
def _quiet():
    """Converters print pages of progress and deprecation notes; the CLI prints its own summary."""
    with warnings.catch_warnings(), _env.quiet_loggers("tensorflow", "absl", "tf2onnx"):
        warnings.simplefilter("ignore")
        yield


# --------------------------------------------------------------------------- checking


def _keras_predictor(loaded):
    from ..inference import Predictor

    return Predictor(loaded, runtime="keras")


def _probs(predictor, pixels: np.ndarray, batch: int = 32) -> np.ndarray:
    return np.concatenate([predictor.predict_pixels(pixels[i : i + batch]) for i in range(0, len(pixels), batch)])


def _parity(fmt: str, reference: np.ndarray, got: np.ndarray, image_kind: str) -> dict:
    diff = float(np.abs(got - reference).max()) if len(got) else 0.0
    agreement = float((got.argmax(-1) == reference.argmax(-1)).mean()) if len(got) else 1.0
    int8 = fmt == "tflite-int8"
    passed = agreement >= INT8_MIN_AGREEMENT if int8 else diff <= FLOAT_TOLERANCE
    return {
        "images": int(len(got)),
        "image_kind": image_kind,
        "max_abs_diff": diff,
        "top1_agreement": agreement,
        "criterion": f"top1_agreement >= {INT8_MIN_AGREEMENT}" if int8 else f"max_abs_diff <= {FLOAT_TOLERANCE:g}",
        "passed": bool(passed),
    }


def median_latency_ms(fn, x, runs: int = 20, warmup: int = 3) -> float:
    """Median wall time of `fn(x)` in milliseconds, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn(x)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1000


def _latency_ms(runtime, info: ModelInfo, runs: int = 20) -> float:
    """Median batch-1 latency after warm-up, in milliseconds."""
    h, w = info.input_size
    x = scale_pixels_np(np.full((1, h, w, 3), 128, np.uint8), info.preprocessing)
    return round(median_latency_ms(runtime, x, runs), 3)


# --------------------------------------------------------------------------- images


def _image_list(images) -> list[Path]:
    if images is None:
        return []
    if isinstance(images, (str, os.PathLike)):
        root = Path(images)
        if not root.exists():
            raise RetreinoError(f"no such image folder: {root}")
        if root.is_file():
            return [root]
        from ..data.images import IMAGE_EXTENSIONS
        from ..errors import DataError
        from ..prediction import find_images  # the one finder: regular files, .tif/.tiff included

        try:
            return sorted(find_images(root))
        except DataError:
            raise RetreinoError(f"{root} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})") from None
    return [Path(p) for p in images]


def _split_images(paths: list[Path], n_parity: int, n_cal: int, seed: int):
    """Disjoint parity and calibration samples when there are enough images, overlapping otherwise."""
    if not paths:
        return [], []
    order = np.random.RandomState(seed).permutation(len(paths))
    shuffled = [paths[i] for i in order]
    parity = shuffled[:n_parity]
    rest = shuffled[n_parity:]
    calibration = rest[:n_cal] if len(rest) >= min(n_cal, 20) else shuffled[:n_cal]
    return sorted(parity), calibration


def _load_pixels(paths: Sequence[Path], info: ModelInfo) -> np.ndarray:
    """Real photos fitted to the input as the model's contract says (resize mode, interpolation)."""
    from ..data.images import read_image

    return np.stack([read_image(p, info.input_size, info.resize, info.interpolation) for p in paths])


def _synthetic(size, n: int, seed: int) -> np.ndarray:
    """Smooth random colour fields: more image-like activations than white noise."""
    from PIL import Image

    rng = np.random.RandomState(seed)
    h, w = size
    out = []
    for _ in range(n):
        small = rng.randint(0, 256, (rng.randint(2, 9), rng.randint(2, 9), 3)).astype(np.uint8)
        out.append(np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC)))
    return np.stack(out)


def _representative(paths: Sequence[Path], info: ModelInfo):
    def gen():
        for i in range(0, len(paths)):
            x = scale_pixels_np(_load_pixels([paths[i]], info), info.preprocessing)
            yield [x.astype(np.float32)]

    return gen


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
