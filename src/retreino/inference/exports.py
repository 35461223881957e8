"""Export records: what an export folder holds, read from its own `retreino.json`, and which one to trust.

An export is a folder with the model file, `labels.txt` and `retreino.json` (the ModelInfo plus
an `export` record: the parity measured against the Keras model and the batch-1 latency). This
module reads those records (no TensorFlow, no Keras: class names, input scaling and input size
come from the JSON) and finds the exports of a model file by its sha256 fingerprint.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import safety
from ..errors import RetreinoError
from ..models.info import ModelInfo, read_labels

RUNTIMES = ("keras", "onnx", "tflite", "tflite-int8", "savedmodel")
RUNTIME_CHOICES = ("auto", *RUNTIMES)
# The runtime of every entry point (predict, evaluate, serve, the Python API): the fastest export
# of the model file that passed its parity check, else Keras. See `best_export`.
DEFAULT_RUNTIME = "auto"
META_FILE = "retreino.json"
EXPORTS_DIR = "exports"
# Which runtime runs each export format; Keras-loadable formats run on Keras.
FORMAT_RUNTIME = {
    "keras": "keras", "h5": "keras", "tm": "keras",
    "savedmodel": "savedmodel", "tflite": "tflite", "tflite-int8": "tflite-int8", "onnx": "onnx",
    "tfjs": "keras",  # checked here by reading the TF.js files back into Keras (models/tfjs.py)
}
# Model file of each export format, inside its export folder.
EXPORT_FILES = {
    "keras": "model.keras", "h5": "model.h5", "tm": "keras_model.h5", "savedmodel": ".",
    "tflite": "model.tflite", "tflite-int8": "model_int8.tflite", "onnx": "model.onnx",
    "tfjs": "model.json",
}


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
    if meta is not None:
        meta = safety.check_metadata(meta, meta_file if meta_file.is_file() else path)
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
                if META_FILE not in zf.namelist() or zf.getinfo(META_FILE).file_size > 1 << 20:
                    return None  # absent, or a zip bomb in place of a small JSON file
                return json.loads(zf.read(META_FILE))
    except Exception:  # a foreign file: no metadata, the caller says so
        return None
    return None


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
    """The fastest export that passed its parity check and beat Keras on the same machine, if any.

    This is the one place where `runtime="auto"` chooses: a rule about which exports may ever be
    picked automatically belongs here.
    """
    best = None
    for record in find_exports(model_source):
        if not record.passed or record.runtime not in allowed or record.runtime == "keras":
            continue
        if not safety.may_choose_automatically(record):  # a record is evidence about speed, not safety
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
