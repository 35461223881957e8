"""retreino predict: class and confidence for one image, or a CSV/JSON-lines file for a folder or glob."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .common import add_model_args, model_kwargs


def register(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="classify an image, a folder or a glob (CSV/JSON lines, thumbnail grid)",
        description="Print the class and confidence of one image, or stream any number of images "
                    "(a folder, a glob such as 'photos/**/*.jpg', or several paths) in batches.",
    )
    p.add_argument("model", help="model file or folder (.keras, .h5, Teachable Machine export, run directory)")
    p.add_argument("inputs", nargs="+", metavar="IMAGE", help="image file(s), folder(s) or glob pattern(s)")
    p.add_argument("--top-k", type=int, default=1, help="show the k most likely classes")
    p.add_argument("--names", metavar="MAP", help="display names: cats=Gato,dogs=Cachorro (or Gato,Cachorro in class order)")
    p.add_argument("--out", metavar="FILE", help="write one row per image: .csv, or .jsonl for JSON lines")
    p.add_argument("--format", choices=("csv", "jsonl"), help="output format (default: from --out's extension)")
    p.add_argument("--grid", metavar="PNG", help="draw a thumbnail grid labelled with predictions")
    p.add_argument("--grid-size", type=int, default=36, help="images in the grid (default 36)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--runtime", default="auto", metavar="NAME",
                   help="forward pass engine: auto (default: the fastest export that passed its parity check, "
                        "else keras), keras, onnx, tflite, tflite-int8, savedmodel")
    p.add_argument("--resize", default="stretch", choices=("stretch", "crop", "pad"), help="how images are fitted to the input")
    p.add_argument("--workers", type=int, help="image decoding threads (default: CPU count, 2 to 8)")
    p.add_argument("--json", action="store_true", help="print JSON (one object for an image, JSON lines for many)")
    add_model_args(p)
    p.set_defaults(func=run)


def _single(inputs) -> bool:
    return len(inputs) == 1 and Path(inputs[0]).is_file()


def run(args) -> int:
    from ..errors import RetreinoError
    from ..prediction import (
        RowWriter,
        as_loaded,
        as_predictor,
        find_images,
        iter_predict_folder,
        parse_names,
        predict,
        show_predictions,
        spread,
    )

    if args.top_k < 1:
        raise RetreinoError("--top-k must be at least 1")
    if args.batch_size < 1:
        raise RetreinoError("--batch-size must be at least 1")
    files = find_images(list(args.inputs))  # fails fast, before the model loads, on a typo
    predictor = as_predictor(as_loaded(args.model, **model_kwargs(args)), runtime=args.runtime, resize_mode=args.resize)
    display = parse_names(args.names, predictor.class_names)

    if _single(args.inputs) and not args.out and not args.grid:
        p = predict(predictor, files[0], top_k=args.top_k, names=display)
        print(json.dumps(p.to_dict(), indent=2) if args.json else p)
        return 0

    writer = RowWriter(args.out, display, args.top_k, args.format) if args.out else None
    grid_at = spread(len(files), args.grid_size) if args.grid else set()
    shown, tally = [], Tally()
    ok = False
    try:
        for i, row in enumerate(iter_predict_folder(predictor, None, args.batch_size, args.top_k, display,
                                                    resize_mode=args.resize, workers=args.workers, paths=files)):
            if writer:
                writer.write(row)
            elif args.json:
                print(json.dumps({k: row[k] for k in ("path", "true", "predicted", "confidence", "error")}), flush=True)
            else:
                _print_row(row, args.top_k)
            if i in grid_at:
                shown.append(row)
            # Counters only, so memory stays flat for any number of images.
            tally.add(row)
        ok = True
    finally:
        if writer:
            writer.close(ok=ok)
    print(tally.line(), file=sys.stderr)
    if writer:
        print(f"wrote {writer.count} row(s) to {writer.out}", file=sys.stderr)
    if args.grid:
        show_predictions(shown, args.grid, max_images=args.grid_size, total=len(files))
        print(f"wrote {args.grid}", file=sys.stderr)
    return 0


class Tally:
    """Running counts for the closing summary line."""

    def __init__(self):
        self.images = self.unreadable = self.known = self.correct = 0
        self.predicted: dict[str, int] = {}

    def add(self, row) -> None:
        self.images += 1
        if row.get("error"):
            self.unreadable += 1
            return
        self.predicted[row["predicted"]] = self.predicted.get(row["predicted"], 0) + 1
        if row.get("correct") is not None:
            self.known += 1
            self.correct += bool(row["correct"])

    def line(self) -> str:
        text = f"{self.images} image(s): " + ", ".join(f"{k} {v}" for k, v in sorted(self.predicted.items()))
        if self.unreadable:
            text += f", unreadable {self.unreadable}"
        if self.known:
            text += f"; accuracy {self.correct / self.known:.1%} on the {self.known} in a class folder"
        return text


def _print_row(row, top_k: int) -> None:
    if row.get("error"):
        print(f"{row['path']}\terror: {row['error']}", flush=True)
        return
    top = "  ".join(f"{n} {p * 100:.1f}%" for n, p in row["top"][:top_k])
    print(f"{row['path']}\t{top}", flush=True)
