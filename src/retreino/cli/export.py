"""retreino export MODEL --format FMT: write the model in other formats, each checked against Keras."""
from __future__ import annotations

import json
from pathlib import Path

from .common import add_model_args, model_kwargs

# Same as retreino.export.FORMATS, spelled out so `--help` answers without importing TensorFlow.
FORMATS = ("keras", "h5", "tm", "savedmodel", "tflite", "tflite-int8", "onnx", "tfjs")


def register(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export to keras | h5 | tm | savedmodel | tflite | tflite-int8 | onnx | tfjs, with a parity check",
        description=(
            "Export a model. Every export folder holds the model file, labels.txt and retreino.json "
            "(class names, input scaling, and the parity measured against the Keras model on real images). "
            "`predict` and `serve` use the fastest export that passed its check."
        ),
    )
    p.add_argument("model", help="model file or folder (run directory, Teachable Machine export, .h5, .keras)")
    p.add_argument(
        "--format", "-f", required=True, metavar="FMT",
        help=f"one or more of {', '.join(FORMATS)} (comma-separated), or all",
    )
    p.add_argument("--out", "-o", metavar="PATH", help="export folder (several formats: one sub-folder each); "
                   "default MODEL_FOLDER/exports/<format>")
    p.add_argument("--images", metavar="DIR", help="real images for the parity check and int8 calibration "
                   "(default: the run's data folder when MODEL is a run)")
    p.add_argument("--parity-images", type=int, default=100, metavar="N", help="images compared against Keras (default 100)")
    p.add_argument("--no-timing", action="store_true", help="skip the batch-1 latency measurement")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    add_model_args(p, weights=False)
    p.set_defaults(func=run)


def parse_formats(value: str) -> list[str]:
    from ..errors import RetreinoError

    names = [v.strip().lower() for v in value.split(",") if v.strip()]
    if names == ["all"]:
        return list(FORMATS)
    bad = [n for n in names if n not in FORMATS]
    if bad or not names:
        raise RetreinoError(f"unknown export format {(bad or [value])[0]!r}: use {' | '.join(FORMATS)} or all")
    return names


def run(args) -> int:
    from .. import load_model
    from ..console import info, table
    from ..export import export_models

    formats = parse_formats(args.format)
    loaded = load_model(args.model, **model_kwargs(args))
    images = args.images or _run_images(Path(args.model))
    info(f"exporting {Path(loaded.info.source).name} to {', '.join(formats)} "
         f"(parity on {'images in ' + str(images) if images else 'synthetic images'}) ...")
    results = export_models(
        loaded, formats, args.out, images=images,
        parity_images=args.parity_images, measure=not args.no_timing,
    )
    if args.json:
        print(json.dumps([_as_dict(r) for r in results], indent=2))
    else:
        rows = []
        for r in results:
            p = r.parity
            check = f"top-1 {p['top1_agreement']:.1%}" if r.format == "tflite-int8" else f"max |diff| {p['max_abs_diff']:.1e}"
            speed = f"{r.keras_latency_ms / r.latency_ms:.1f}x" if r.latency_ms and r.keras_latency_ms else "-"
            rows.append([
                r.format, str(r.file), f"{check} on {p['images']} {p['image_kind']}",
                "ok" if r.passed else "FAILED", f"{r.latency_ms:.1f}" if r.latency_ms else "-", speed,
            ])
        print(table(rows, ["format", "file", "parity vs keras", "check", "batch-1 ms", "vs keras"], align="lllllr"))
    failed = [r.format for r in results if not r.passed]
    if failed:
        info(f"parity check FAILED for {', '.join(failed)}: written but never picked by runtime=auto")
        return 1
    return 0


def _run_images(model: Path) -> str | None:
    """A run directory remembers its data (config.json); use its held-out images for the check."""
    from ..errors import RetreinoError
    from ..runs import RunDir

    run = RunDir.holding(model)
    if run is None:
        return None
    try:
        data = run.data_root()
    except RetreinoError:  # a broken config.json: no images to check on, not a failed export
        return None
    if not data or not Path(data).is_dir():
        return None
    for split in ("test", "validation"):
        if (Path(data) / split).is_dir():
            return str(Path(data) / split)
    return data


def _as_dict(r) -> dict:
    return {
        "format": r.format, "folder": str(r.folder), "file": str(r.file), "files": r.files,
        "parity": r.parity, "latency_ms": r.latency_ms, "keras_latency_ms": r.keras_latency_ms,
    }
