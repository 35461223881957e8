"""export_models: write each format to a scratch folder, check it against Keras, then move it in place."""
from __future__ import annotations

import copy
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .. import __version__
from ..atomic import write_json, write_text
from ..errors import RetreinoError
from ..inference.exports import EXPORT_FILES, META_FILE, exports_folder, model_fingerprint
from ..models.info import LoadedModel, ModelInfo, labels_text
from .formats import _WRITERS, FORMATS, _carry_unknown, _Workspace
from .images import _image_list, _load_pixels, _split_images, _synthetic
from .keras2_h5 import ExportError
from .parity import CALIBRATION_IMAGES, PARITY_IMAGES, _keras_predictor, _latency_ms, _parity, _probs
from .tm_contract import check_tm_contract


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



def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
