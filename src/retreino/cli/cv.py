"""retreino cv: stratified k-fold cross-validation, one full fine-tune per fold.

The pool is train + validation (the test split is never used); every fold is an ordinary run
directory under runs/<name>-cv/, next to cv_summary.json (each fold's metrics, mean and std),
cv_table.txt and cv_boxplot.png. Run the same command again to resume after an interruption.
"""
from __future__ import annotations


def add_training_options(p) -> None:
    """Every `retreino train` option, so a cv or tune run is described exactly like a training run."""
    from . import train as train_cli

    p.add_argument("--model", help="model file/folder (Teachable Machine, .h5, .keras) or backbone name (mobilenet_v2, ...)")
    p.add_argument("--data", help="image folder: train/validation/test/<class>/, <class>/ sub-folders, or images + labels.csv")
    p.add_argument("--config", metavar="JSON", help="start from a saved config (a run's config.json, tune's best_config.json)")
    g = p.add_argument_group("training (as for `retreino train`)")
    for flag, (_, typ, hlp) in train_cli.OPTIONS.items():
        g.add_argument(flag, type=typ, default=None, help=hlp)
    g.add_argument("--train-bn", action="store_true", default=None, help="let unfrozen BatchNormalization layers train")
    g.add_argument("--strict", action="store_true", default=None, help="unreadable images are fatal instead of skipped")
    a = p.add_argument_group("augmentation (training split only; defaults are the notebook's)")
    for flag, (_, typ, hlp) in train_cli.AUGMENT.items():
        a.add_argument(flag, type=typ, default=None, help=hlp)
    a.add_argument("--no-flip", action="store_true", help="no horizontal flip")
    a.add_argument("--vertical-flip", action="store_true", help="add vertical flips")
    a.add_argument("--no-augment", action="store_true", help="no augmentation at all")


def config_from_args(args):
    from . import train as train_cli

    return train_cli.config_from_args(args)


def register(sub) -> None:
    p = sub.add_parser("cv", help="k-fold cross-validation of a training recipe", description=__doc__)
    p.add_argument("--folds", type=int, default=5, help="number of folds (default 5)")
    add_training_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    cfg = config_from_args(args)  # checked before TensorFlow loads
    from ..selection.cv import cross_validate

    cross_validate(cfg, folds=args.folds)
    return 0
