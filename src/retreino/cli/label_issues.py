"""check-data --model: the `suspect label` problems, label_issues.csv, a gallery and a relabel plan."""
from __future__ import annotations

import sys
from pathlib import Path


def add_label_issue_args(p) -> None:
    from .common import add_model_args

    p.add_argument("--model", metavar="MODEL",
                   help="find suspect labels with this model's features (cleanlab): a model file or folder, "
                        "or a backbone name such as mobilenet_v2 (with --weights PATH offline)")
    add_model_args(p)
    p.add_argument("--folds", type=int, default=5, help="folds of the out-of-fold head (default 5)")
    p.add_argument("--out", metavar="DIR", default=".", help="where label_issues.csv and label_issues.png go")
    p.add_argument("--write-fixes", metavar="FILE",
                   help="write a relabel plan: a CSV of moves (class folders) or of new labels (labels CSV); "
                        "nothing is moved")
    p.add_argument("--feature-cache", metavar="DIR", help="keep the model's features of each file here")


def check_label_issue_args(args) -> None:
    """At the door: the model options mean nothing without --model."""
    from ..errors import RetreinoError

    if not args.model:
        given = [f for f, v in (("--weights", args.weights), ("--input-range", args.input_range),
                                ("--unsafe", args.unsafe), ("--write-fixes", args.write_fixes)) if v]
        if given:
            raise RetreinoError(f"{', '.join(given)} need(s) --model: suspect labels are found with a model's features")
    if args.folds < 2:
        raise RetreinoError(f"--folds must be at least 2, got {args.folds}")


def add_label_issues(report, args) -> None:
    from ..data.label_issues import find_label_issues, write_fix_plan
    from ..prediction import as_loaded
    from .common import model_kwargs

    issues = find_label_issues(report.dataset, as_loaded(args.model, **model_kwargs(args)), folds=args.folds, seed=args.seed,
                               cache_dir=args.feature_cache,
                               printer=lambda m: print(m, file=sys.stderr))
    report.problems.extend(issues.problems())
    out = Path(args.out)
    csv_path = issues.write_csv(out / "label_issues.csv")
    png = out / "label_issues.png"
    issues.plot(png)
    print(f"{issues.summary()}\nwrote {csv_path} and {png}", file=sys.stderr)
    if args.write_fixes:
        print(f"wrote relabel plan {write_fix_plan(issues, report.dataset, args.write_fixes)} (apply it yourself)",
              file=sys.stderr)
