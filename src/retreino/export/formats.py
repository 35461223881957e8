"""The export formats: their table, the Teachable Machine contract, and one writer per format."""
from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import _env
from ..atomic import write_bytes
from ..inference.exports import EXPORT_FILES, META_FILE
from ..inference.predictor import model_input
from ..inference.runtimes import quiet_native
from ..models.info import LoadedModel, ModelInfo, labels_text
from .images import _load_pixels
from .keras2_h5 import write_keras2_h5

FORMATS = ("keras", "h5", "tm", "savedmodel", "tflite", "tflite-int8", "onnx", "tfjs")


# --------------------------------------------------------------------------- writers


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



def _representative(paths: Sequence[Path], info: ModelInfo):
    def gen():
        for i in range(0, len(paths)):
            x = model_input(_load_pixels([paths[i]], info), info)
            yield [x.astype(np.float32)]

    return gen
