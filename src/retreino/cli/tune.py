"""retreino tune: search learning rate, unfrozen layers, warm-up, dropout and augmentation with Optuna.

Each trial is an ordinary run directory under runs/<name>-tune/; hopeless trials are pruned
after an epoch or two. Writes leaderboard.csv and best_config.json, which
`retreino train --config runs/<name>-tune/best_config.json` reproduces. Running the same
command again continues the search (the Optuna study is kept in study.db).
Giving a fixed value (--lr 1e-4, --unfreeze 10, --warmup-epochs 0, --dropout 0.2, --no-augment)
takes that setting out of the search.
"""
from __future__ import annotations

from ..errors import RetreinoError
from .cv import add_training_options, config_from_args

# flag -> (SearchSpace field, type, the `retreino train` flag that fixes it)
RANGES = {
    "--lr-range": ("learning_rate", float, "lr"),
    "--unfreeze-range": ("unfreeze", int, "unfreeze"),
    "--warmup-range": ("warmup_epochs", int, "warmup_epochs"),
    "--dropout-range": ("dropout", float, "dropout"),
    "--augment-range": ("augment", float, None),
}


def register(sub) -> None:
    from ..selection.tune import SearchSpace

    d = SearchSpace()
    p = sub.add_parser("tune", help="hyper-parameter search (Optuna) with pruning", description=__doc__)
    p.add_argument("--trials", type=int, default=20, help="trials the search should reach in all (default 20)")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="start no trial that would end after this")
    p.add_argument("--pruner", choices=("median", "none"), default="median",
                   help="median (default): stop a trial scoring below the median of earlier ones at the same epoch")
    g = p.add_argument_group("search space (LOW,HIGH; equal ends fix a setting)")
    for flag, (field, _, _) in RANGES.items():
        lo, hi = getattr(d, field)
        g.add_argument(flag, metavar="LOW,HIGH", help=f"default {lo:g},{hi:g}"
                       + (" (log scale)" if field in ("learning_rate", "unfreeze") else "")
                       + (" (strength: 1 = the base augmentation, 0 = none)" if field == "augment" else ""))
    add_training_options(p)
    p.set_defaults(func=run)


def space_from_args(args):
    from ..selection.tune import SearchSpace

    values = {}
    for flag, (field, typ, fixing_flag) in RANGES.items():
        text = getattr(args, flag[2:].replace("-", "_"))
        if text is not None:
            values[field] = _pair(flag, text, typ)
        elif fixing_flag and getattr(args, fixing_flag, None) is not None:
            v = typ(getattr(args, fixing_flag))
            values[field] = (v, v)
    if args.no_augment and "augment" not in values:
        values["augment"] = (0.0, 0.0)
    return SearchSpace(**values)


def _pair(flag: str, text: str, typ):
    parts = [t.strip() for t in text.split(",")]
    try:
        if len(parts) == 1:
            v = typ(parts[0])
            return (v, v)
        if len(parts) == 2:
            return (typ(parts[0]), typ(parts[1]))
    except ValueError:
        pass
    raise RetreinoError(f"{flag} takes LOW,HIGH ({typ.__name__} numbers), got {text!r}")


def run(args) -> int:
    cfg = config_from_args(args)  # checked before TensorFlow loads
    from ..selection.tune import tune

    tune(cfg, trials=args.trials, space=space_from_args(args), pruner=args.pruner, timeout=args.timeout)
    return 0
