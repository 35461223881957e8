"""retreino evaluate: accuracy, loss, per-class report, plots and predictions.csv for a model on labelled images."""
from __future__ import annotations

import json

from ..runs import RunDir
from .common import MODEL_HELP, add_model_args, add_runtime_arg, open_model


def register(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="measure a model on labelled images: metrics, confusion matrix, errors, predictions.csv",
        description="Evaluate MODEL on --data DIR (class sub-folders, or a dataset with a test/ folder), "
                    "or a run's best model on its own test split with --run runs/NAME.",
    )
    p.add_argument("model", nargs="?", help=MODEL_HELP)
    p.add_argument("--data", metavar="DIR", help="labelled images: <class>/ sub-folders, train/validation/test/<class>/, or images + labels.csv")
    p.add_argument("--run", metavar="RUN_DIR", help="a training run: its best model on its own test split; outputs go into it")
    p.add_argument("--out", metavar="DIR", help="where to write the outputs (default: the run directory, else ./evaluation)")
    p.add_argument("--split", default="auto", choices=("auto", "all", "train", "validation", "test"),
                   help="which images of --data (auto: test/ when there is one, else all)")
    p.add_argument("--labels-csv", metavar="CSV", help="filename,label CSV when labels are not folder names")
    p.add_argument("--names", metavar="MAP", help="map data classes to model classes when they differ: cats=Gato,dogs=Cachorro")
    p.add_argument("--batch-size", type=int, default=32)
    add_runtime_arg(p)
    p.add_argument("--resize", choices=("stretch", "crop", "pad"), help="how images are fitted to the input (default: the run's, else stretch)")
    p.add_argument("--workers", type=int, help="image decoding threads (default: CPU count, 2 to 8)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--ood", metavar="DIR", help="a folder of images of other things: measure how many are answered unknown")
    add_model_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import RetreinoError
    from ..evaluation import evaluate

    run_dir = args.run
    model = args.model
    if run_dir is None and model and RunDir(model).is_run and not args.data:
        run_dir = model  # `retreino evaluate runs/cats` means the run
    if run_dir is None and not model:
        raise RetreinoError("give a MODEL and --data DIR, or --run RUN_DIR")
    if run_dir is None and not args.data:
        raise RetreinoError("--data DIR is required with a model file (or use --run RUN_DIR)")
    out = args.out or (None if run_dir else "evaluation")
    predictor = open_model(args) if model and not (run_dir and model == run_dir) else None
    result = evaluate(predictor, args.data, run=run_dir, out=out, split=args.split, labels_csv=args.labels_csv,
                      names=args.names, batch_size=args.batch_size, runtime=args.runtime, resize_mode=args.resize,
                      workers=args.workers, ood=args.ood)
    if args.json:
        print(json.dumps(result.metrics, indent=2))
        return 0
    print(result.summary().rstrip())
    if result.out is not None:
        files = [f for f in ("metrics.json", "classification_report.txt", "predictions.csv", "confusion_matrix.png",
                             "predictions_scatter.png", "misclassified.png", "report.html") if (result.out / f).exists()]
        print(f"\nwrote {', '.join(files)} to {result.out}/")
    return 0
