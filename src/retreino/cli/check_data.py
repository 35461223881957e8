"""retreino check-data ROOT: read every image of a dataset and report what is wrong before training."""
from __future__ import annotations

import json

from ..config import DEFAULT_SEED, DEFAULT_TEST_SPLIT, DEFAULT_VAL_SPLIT


def register(sub) -> None:
    p = sub.add_parser(
        "check-data", help="scan a dataset: counts per split and class, unreadable files, duplicates, leakage",
        description="Decode every image under ROOT the way training will, print a table per split and class "
                    "and a list of problems. Exit status 1 only on fatal problems (with --strict, unreadable "
                    "files are fatal too).")
    p.add_argument("root", metavar="ROOT", help="dataset folder: train/validation/test/<class>/, <class>/ folders, or images with a labels.csv")
    p.add_argument("--labels", metavar="CSV", help="CSV of filename,label (default: labels.csv in or beside ROOT)")
    p.add_argument("--val-split", type=float, default=DEFAULT_VAL_SPLIT, metavar="F", help=f"validation fraction when ROOT has no validation/ folder (default {DEFAULT_VAL_SPLIT})")
    p.add_argument("--test-split", type=float, default=DEFAULT_TEST_SPLIT, metavar="F", help=f"test fraction when ROOT has no test/ folder (default {DEFAULT_TEST_SPLIT})")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"seed of the split (default {DEFAULT_SEED})")
    p.add_argument("--strict", action="store_true", help="unreadable image files are fatal instead of skipped")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.add_argument("--follow-links", action="store_true",
                   help="use symlinks that resolve outside ROOT (labels-CSV rows outside ROOT are always refused)")
    from .label_issues import add_label_issue_args

    add_label_issue_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..data.check import check_dataset
    from .label_issues import check_label_issue_args

    check_label_issue_args(args)
    report = check_dataset(args.root, labels_csv=args.labels, val_split=args.val_split,
                           test_split=args.test_split, seed=args.seed, strict=args.strict,
                           follow_links=args.follow_links)
    if args.model:
        from .label_issues import add_label_issues

        add_label_issues(report, args)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.format())
    return 0 if report.ok else 1
