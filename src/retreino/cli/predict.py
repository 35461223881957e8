"""retreino predict: class and confidence for one image, or a CSV/JSON-lines file for a folder or glob."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .common import MODEL_HELP, add_model_args, add_runtime_arg, open_model


def register(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="classify an image, a folder or a glob (CSV/JSON lines, thumbnail grid)",
        description="Print the class and confidence of one image, or stream any number of images "
                    "(a folder, a glob such as 'photos/**/*.jpg', or several paths) in batches.",
    )
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("inputs", nargs="+", metavar="IMAGE", help="image file(s), folder(s) or glob pattern(s)")
    p.add_argument("--top-k", type=int, default=1, help="show the k most likely classes")
    p.add_argument("--names", metavar="MAP", help="display names: cats=Gato,dogs=Cachorro (or Gato,Cachorro in class order)")
    p.add_argument("--out", metavar="FILE", help="write one row per image: .csv, or .jsonl for JSON lines")
    p.add_argument("--format", choices=("csv", "jsonl"), help="output format (default: from --out's extension)")
    p.add_argument("--grid", metavar="PNG", help="draw a thumbnail grid labelled with predictions")
    p.add_argument("--grid-size", type=int, default=36, help="images in the grid (default 36)")
    p.add_argument("--batch-size", type=int, default=32)
    add_runtime_arg(p)
    p.add_argument("--resize", choices=("stretch", "crop", "pad"),
                   help="how images are fitted to the input (default: the model's, else stretch)")
    p.add_argument("--workers", type=int, help="image decoding threads (default: CPU count, 2 to 8)")
    p.add_argument("--unknown", default="on", choices=("on", "off"),
                   help="answer 'unknown' for images unlike the training data (default on, when the model has a detector)")
    p.add_argument("--shard", metavar="K/N", help="only the K-th of N disjoint parts of the files (join with retreino merge)")
    p.add_argument("--json", action="store_true", help="print JSON (one object for an image, JSON lines for many)")
    p.add_argument("--explain", nargs="?", const="", metavar="DIR",
                   help="write a Grad-CAM overlay (where the model looked) per image: <name>.gradcam.png in DIR "
                        "(default: the current folder for one image, ./gradcam/ for many); needs the Keras model")
    add_model_args(p)
    p.set_defaults(func=run)


def _single(inputs) -> bool:
    return len(inputs) == 1 and Path(inputs[0]).is_file()


def run(args) -> int:
    from ..console import status
    from ..errors import RetreinoError
    from ..prediction import RowSummary, find_images, parse_names, predict, predict_folder

    if args.top_k < 1:
        raise RetreinoError("--top-k must be at least 1")
    if args.batch_size < 1:
        raise RetreinoError("--batch-size must be at least 1")
    files = find_images(list(args.inputs))  # fails fast, before the model loads, on a typo
    if args.shard:  # one job of many: see retreino.sharding
        from ..sharding import parse_shard, shard_paths
        files = shard_paths(files, *parse_shard(args.shard))
    predictor = open_model(args)
    display = parse_names(args.names, predictor.class_names)

    single = _single(args.inputs) and not args.out and not args.grid and not args.shard
    if args.explain is not None and getattr(predictor.loaded, "model", None) is None:
        raise RetreinoError("--explain needs the Keras model (Grad-CAM takes gradients); an export alone has none")
    if single:
        p = predict(predictor, files[0], top_k=args.top_k, names=display, unknown=args.unknown == "on")
        if args.explain is None:
            print(json.dumps(p.to_dict(), indent=2) if args.json else p)
            return 0
        from ..gradcam import write_overlays

        (_, overlay, _), = write_overlays(predictor, files[:1], args.explain or ".")
        if args.json:
            print(json.dumps({**p.to_dict(), "explanation": str(overlay)}, indent=2))
        else:
            first, *rest = str(p).split("\n")
            print("\n".join([f"{first}  why: {overlay}", *rest]))
        return 0

    def show(row) -> None:
        if args.json:
            print(json.dumps({k: row[k] for k in ("path", "true", "predicted", "confidence", "error")}), flush=True)
        else:
            _print_row(row, args.top_k)

    # Rows printed to the terminal are the progress; a bar there would share their lines.
    to_screen = not args.out
    summary = RowSummary()
    status(f"predicting {len(files)} image(s) with {predictor.describe()} ...")
    predict_folder(predictor, None, out=args.out, batch_size=args.batch_size, grid=args.grid, top_k=args.top_k,
                   names=display, resize_mode=args.resize, workers=args.workers, fmt=args.format,
                   progress=not (to_screen and sys.stdout.isatty()), keep_rows=False,
                   grid_size=args.grid_size, on_row=None if args.out else show, summary=summary, paths=files,
                   unknown=args.unknown == "on")
    print(summary.line(), file=sys.stderr)
    if args.out:
        print(f"wrote {summary.images} row(s) to {args.out}", file=sys.stderr)
    if args.grid:
        print(f"wrote {args.grid}", file=sys.stderr)
    if args.explain is not None:
        _explain_many(predictor, files, args)
    return 0


def _explain_many(predictor, files, args) -> None:
    """Overlays of every image into --explain DIR (default ./gradcam/), sub-folders of an input folder kept."""
    from ..console import status
    from ..gradcam import write_overlays

    folder = Path(args.explain or "gradcam")
    dirs = [Path(i) for i in args.inputs if Path(i).is_dir()]
    root = dirs[0] if len(dirs) == 1 and len(args.inputs) == 1 else None
    status(f"explaining {len(files)} image(s) (Grad-CAM) ...")
    done = write_overlays(predictor, files, folder, root=root)
    wrote = sum(1 for _, o, _ in done if o is not None)
    print(f"wrote {wrote} Grad-CAM overlay(s) to {folder}/ (<name>.gradcam.png"
          + (", sub-folders kept" if root is not None else "") + ")", file=sys.stderr)


def _print_row(row, top_k: int) -> None:
    if row.get("error"):
        print(f"{row['path']}\terror: {row['error']}", flush=True)
        return
    top = "  ".join(f"{n} {p * 100:.1f}%" for n, p in row["top"][:top_k])
    if row.get("unknown"):
        top = f"unknown (score {row['unknown_score']:.4g}; it would have said {row['would_say']})  " + top
    print(f"{row['path']}\t{top}", flush=True)
