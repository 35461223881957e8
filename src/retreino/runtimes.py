"""Inference runtimes behind one call: Keras, ONNX Runtime, LiteRT (TFLite) and TF SavedModel.

A runtime maps a batch already scaled to the model's input range to the model's raw outputs;
scaling and head normalisation stay in `inference.Predictor`, so every runtime sees exactly
the same numbers. Exports live in a folder with the model file, `labels.txt` and
`retreino.json` (the ModelInfo plus an `export` record: the parity measured against the
Keras model and the batch-1 latency), which is how `load_runtime` restores class names and
preprocessing without the Keras model, and how `runtime="auto"` picks the fastest export that
passed its parity check.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._env import quiet_native  # noqa: F401  (the one stderr silencer; export imports it from here)
from .errors import RetreinoError
from .models.info import ModelInfo, read_labels

RUNTIMES = ("keras", "onnx", "tflite", "tflite-int8", "savedmodel")
RUNTIME_CHOICES = ("auto", *RUNTIMES)
META_FILE = "retreino.json"
EXPORTS_DIR = "exports"
# Which runtime runs each export format; Keras-loadable formats run on Keras.
FORMAT_RUNTIME = {
    "keras": "keras", "h5": "keras", "tm": "keras",
    "savedmodel": "savedmodel", "tflite": "tflite", "tflite-int8": "tflite-int8", "onnx": "onnx",
}
# Model file of each export format, inside its export folder.
EXPORT_FILES = {
    "keras": "model.keras", "h5": "model.h5", "tm": "keras_model.h5", "savedmodel": ".",
    "tflite": "model.tflite", "tflite-int8": "model_int8.tflite", "onnx": "model.onnx",
}


class Runtime:
    """One way to run a model: `runtime(x)` with x scaled float32 (N, H, W, 3) -> raw outputs."""

    name = "?"

    def __init__(self, info: ModelInfo, path: Path | None = None):
        self.info = info
        self.path = path

    def __call__(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @property
    def output_units(self) -> int:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.path or self.info.source}>"


class KerasRuntime(Runtime):
    name = "keras"

    def __init__(self, model, info: ModelInfo, path: Path | None = None):
        super().__init__(info, path)
        self.model = model
        self._fn = None

    def __call__(self, x):
        if self._fn is None:
            # A traced call skips Keras' per-call Python overhead, which dominates at batch 1.
            import tensorflow as tf

            model = self.model
            self._fn = tf.function(lambda t: model(t, training=False), reduce_retracing=True)
        return np.asarray(self._fn(np.asarray(x, np.float32)))

    @property
    def output_units(self) -> int:
        return int(self.model.output_shape[-1])


class OnnxRuntime(Runtime):
    name = "onnx"

    def __init__(self, path: Path, info: ModelInfo):
        super().__init__(info, path)
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise RetreinoError("the onnx runtime needs onnxruntime: pip install 'retreino[fast]'") from exc
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self._units = self.session.get_outputs()[0].shape[-1]

    def __call__(self, x):
        return self.session.run(None, {self.input_name: np.asarray(x, np.float32)})[0]

    @property
    def output_units(self) -> int:
        return int(self._units)


class TFLiteRuntime(Runtime):
    """LiteRT interpreter; resizes the batch dimension on demand, (de)quantizes int8 I/O if any."""

    name = "tflite"

    def __init__(self, path: Path, info: ModelInfo, name: str = "tflite"):
        super().__init__(info, path)
        self.name = name
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:  # older installs: the interpreter inside TensorFlow
            from . import _env

            Interpreter = _env.import_tensorflow().lite.Interpreter
        with quiet_native():  # "INFO: Created TensorFlow Lite XNNPACK delegate" on every load
            self.interpreter = Interpreter(model_path=str(path), num_threads=os.cpu_count() or 1)
            self.interpreter.allocate_tensors()
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]
        self._batch = int(self._input["shape"][0])
        # One interpreter owns its tensors: concurrent calls (serve's worker threads) must queue.
        self._lock = threading.Lock()

    def __call__(self, x):
        with self._lock:
            return self._run(np.asarray(x, np.float32))

    def _run(self, x):
        if x.shape[0] != self._batch:
            self.interpreter.resize_tensor_input(self._input["index"], list(x.shape))
            self.interpreter.allocate_tensors()
            self._input = self.interpreter.get_input_details()[0]
            self._output = self.interpreter.get_output_details()[0]
            self._batch = x.shape[0]
        self.interpreter.set_tensor(self._input["index"], _quantize(x, self._input))
        self.interpreter.invoke()
        return _dequantize(self.interpreter.get_tensor(self._output["index"]), self._output)

    @property
    def output_units(self) -> int:
        return int(self._output["shape"][-1])


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    dtype = detail["dtype"]
    if dtype == np.float32:
        return x
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)


def _dequantize(y: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] == np.float32:
        return np.array(y)
    scale, zero = detail["quantization"]
    return (y.astype(np.float32) - zero) * scale


class SavedModelRuntime(Runtime):
    name = "savedmodel"

    def __init__(self, path: Path, info: ModelInfo):
        super().__init__(info, path)
        from . import _env

        tf = _env.import_tensorflow()
        self._loaded = tf.saved_model.load(str(path))
        self._fn = self._loaded.signatures["serving_default"]
        self._in = list(self._fn.structured_input_signature[1])[0]
        self._out = list(self._fn.structured_outputs)[0]
        self._units = int(self._fn.structured_outputs[self._out].shape[-1])

    def __call__(self, x):
        return self._fn(**{self._in: np.asarray(x, np.float32)})[self._out].numpy()

    @property
    def output_units(self) -> int:
        return self._units


# --------------------------------------------------------------------------- export records


@dataclass
class ExportRecord:
    """An export folder as described by its `retreino.json`."""

    format: str
    folder: Path
    file: Path
    info: ModelInfo
    export: dict[str, Any] = field(default_factory=dict)

    @property
    def runtime(self) -> str:
        return FORMAT_RUNTIME[self.format]

    @property
    def passed(self) -> bool:
        return bool(self.export.get("parity", {}).get("passed"))

    @property
    def latency_ms(self) -> float | None:
        return self.export.get("latency_ms")


def read_export(path: str | os.PathLike) -> ExportRecord:
    """The export whose folder or model file is `path`; class names and scaling from its metadata."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    meta_file = folder / META_FILE
    meta = _read_json(meta_file) if meta_file.is_file() else None
    if meta is None and path.is_file():
        meta = embedded_metadata(path)
    if meta is None:
        raise RetreinoError(
            f"{path} carries no retreino metadata ({META_FILE}): its class names and input scaling are "
            "unknown. Re-export it with `retreino export`"
        )
    export = meta.get("export", {})
    fmt = export.get("format") or _format_of(path)
    if fmt not in EXPORT_FILES:
        raise RetreinoError(f"{meta_file} names an unknown export format {fmt!r}")
    file = path if path.is_file() else folder / export.get("file", EXPORT_FILES[fmt])
    if not file.exists():
        raise RetreinoError(f"{folder} is an export folder but its model file {file.name} is missing")
    info = ModelInfo.from_dict(meta)
    labels = folder / "labels.txt"
    if not info.class_names and labels.is_file():
        info.class_names = read_labels(labels)
    info.source = str(file)
    return ExportRecord(fmt, folder, file, info, export)


def is_export(path: str | os.PathLike) -> bool:
    """True for an exported model: an ONNX/TFLite file, or a folder/file with an export record beside it."""
    path = Path(path)
    if path.suffix.lower() in (".onnx", ".tflite"):
        return True
    meta = (path if path.is_dir() else path.parent) / META_FILE
    if not meta.is_file():
        return False
    try:
        return "export" in json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False


def _format_of(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix == ".tflite":
        return "tflite-int8" if "int8" in path.name else "tflite"
    if path.is_dir() and (path / "saved_model.pb").is_file():
        return "savedmodel"
    return None


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RetreinoError(f"{path} is not valid JSON ({exc})") from exc


def embedded_metadata(path: Path) -> dict | None:
    """Metadata stored inside an ONNX (metadata_props) or TFLite (appended zip) file."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".onnx":
            import onnx

            model = onnx.load(str(path), load_external_data=False)
            props = {p.key: p.value for p in model.metadata_props}
            return json.loads(props["retreino"]) if "retreino" in props else None
        if suffix == ".tflite":
            import zipfile

            with zipfile.ZipFile(path) as zf:
                return json.loads(zf.read(META_FILE)) if META_FILE in zf.namelist() else None
    except Exception:  # a foreign file: no metadata, the caller says so
        return None
    return None


def load_runtime(path: str | os.PathLike, *, unsafe: bool = False) -> Runtime:
    """Open an exported model (folder or file) for inference, metadata restored from the export."""
    record = read_export(path)
    return open_record(record, unsafe=unsafe)


def open_record(record: ExportRecord, *, unsafe: bool = False) -> Runtime:
    kind = record.runtime
    if kind == "onnx":
        return OnnxRuntime(record.file, record.info)
    if kind in ("tflite", "tflite-int8"):
        return TFLiteRuntime(record.file, record.info, name=kind)
    if kind == "savedmodel":
        return SavedModelRuntime(record.folder, record.info)
    from .models import load_model

    loaded = load_model(record.file, unsafe=unsafe)
    return KerasRuntime(loaded.model, record.info, record.file)


# --------------------------------------------------------------------------- choosing


def model_fingerprint(path: str | os.PathLike | None) -> str | None:
    """sha256 of a model file, so an export made before retraining is never mistaken for current."""
    if not path:
        return None
    p = Path(path)
    if not p.is_file():
        return None
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def exports_folder(model_source: str | os.PathLike) -> Path:
    """Where exports of a model live: `<run or model folder>/exports/<format>/`."""
    p = Path(model_source)
    return (p if p.is_dir() else p.parent) / EXPORTS_DIR


def find_exports(model_source: str | os.PathLike | None) -> list[ExportRecord]:
    """Exports of this exact model file (same fingerprint) found in its exports folder."""
    if not model_source or not Path(model_source).exists():
        return []
    folder = exports_folder(model_source)
    if not folder.is_dir():
        return []
    fingerprint = model_fingerprint(model_source)
    found = []
    for meta in sorted(folder.glob(f"*/{META_FILE}")):
        try:
            record = read_export(meta.parent)
        except RetreinoError:
            continue
        if fingerprint and record.export.get("source_sha256") == fingerprint:
            found.append(record)
    return found


def best_export(model_source, allowed: tuple[str, ...] = RUNTIMES) -> ExportRecord | None:
    """The fastest export that passed its parity check and beat Keras on the same machine, if any."""
    best = None
    for record in find_exports(model_source):
        if not record.passed or record.runtime not in allowed or record.runtime == "keras":
            continue
        latency, keras_latency = record.latency_ms, record.export.get("keras_latency_ms")
        if latency is None or (keras_latency is not None and latency >= keras_latency):
            continue
        if best is None or latency < best.latency_ms:
            best = record
    return best


def export_for(model_source, runtime: str) -> ExportRecord:
    """The export that runs on `runtime` for this model, or an error saying how to make one."""
    for record in find_exports(model_source):
        if record.runtime == runtime:
            return record
    fmt = runtime
    where = exports_folder(model_source) if model_source else "the model's exports folder"
    raise RetreinoError(
        f"no {runtime} export of this model in {where}: run `retreino export {model_source} --format {fmt}` first"
    )
