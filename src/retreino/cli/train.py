"""retreino train: fine-tune a model on your folders of images (the notebook's recipe, done right)."""
from __future__ import annotations

import dataclasses

from ..config import AugmentConfig, TrainConfig, validate_settings

# flag -> (TrainConfig field, type, help). Defaults come from TrainConfig, so `--help` shows them.
_D = TrainConfig()
_A = AugmentConfig()
OPTIONS = {
    "--epochs": ("epochs", int, f"fine-tuning epochs (default {_D.epochs})"),
    "--optimizer": ("optimizer", str, "adam (default) | sgd | rmsprop | adamw"),
    "--lr": ("learning_rate", float, f"fine-tuning learning rate (default {_D.learning_rate:g})"),
    "--unfreeze": ("unfreeze", int, f"train the last N layers with weights of the flattened model (default {_D.unfreeze})"),
    "--batch-size": ("batch_size", int, f"(default {_D.batch_size})"),
    "--warmup-epochs": ("warmup_epochs", int, f"head-only epochs when the head is new; 0 turns it off (default {_D.warmup_epochs})"),
    "--head-init": ("head_init", str, "a new head starts as: linear-probe (default: logistic regression on the frozen "
                    "features, then fine-tuning) | warmup (--warmup-epochs head-only epochs, the old way)"),
    "--tta": ("tta", str, "flip test-time augmentation saved with the model: auto (default: on when it lowers the "
              "validation loss without losing validation accuracy) | on | off"),
    "--weight-average": ("weight_average", str, "ema: validation and the best model use the moving average of the "
                         "fine-tuning weights | off (default): the last step's weights"),
    "--layer-decay": ("layer_decay", float, "discriminative rates: each trainable layer below the head trains at this "
                      "times the rate of the layer above it, e.g. 0.8 (default 1: one rate for all)"),
    "--warmup-lr": ("warmup_learning_rate", float, f"(default {_D.warmup_learning_rate:g})"),
    "--dropout": ("dropout", float, "dropout before a new head (default 0)"),
    "--class-weight": ("class_weight", str, "'balanced' weighs classes by inverse frequency"),
    "--label-smoothing": ("label_smoothing", float, "(default 0)"),
    "--patience": ("early_stopping_patience", int, f"EarlyStopping patience (default {_D.early_stopping_patience})"),
    "--seed": ("seed", int, f"(default {_D.seed})"),
    "--val-split": ("val_split", float, f"validation fraction when there is no validation/ folder (default {_D.val_split})"),
    "--test-split": ("test_split", float, f"test fraction when there is no test/ folder (default {_D.test_split})"),
    "--labels": ("labels_csv", str, "CSV of filename,label (default: labels.csv in the data folder)"),
    "--resize": ("resize", str, "stretch | crop | pad (default: the model's own, e.g. crop for Teachable Machine; saved with the model)"),
    "--weights": ("weights", str, "weights file for a backbone name"),
    "--input-range": ("input_range", str, "override the model's input scaling: -1,1 | 0,1 | 0,255 | caffe | torch"),
    "--name": ("name", str, "run name (default: <data>-<model>)"),
    "--runs-dir": ("runs_dir", str, f"(default {_D.runs_dir})"),
    "--cache-mb": ("cache_budget_mb", int, f"memory for cached decoded images and prefix outputs (default {_D.cache_budget_mb})"),
    "--accelerate": ("accelerate", str, "auto (default): on a CPU, run the frozen layers in ONNX Runtime and cache their "
                     "outputs, train the rest in Keras | off: plain Keras"),
    "--precision": ("precision", str, "float32 (default) | mixed: float16 compute with XLA (GPU only)"),
    "--distribute": ("distribute", str, "mirrored: all local GPUs/devices | multiworker: the cluster in TF_CONFIG"),
}
AUGMENT = {
    "--rotation": ("rotation", float, f"degrees (default {_A.rotation:g})"),
    "--width-shift": ("width_shift", float, f"fraction (default {_A.width_shift:g})"),
    "--height-shift": ("height_shift", float, f"fraction (default {_A.height_shift:g})"),
    "--zoom": ("zoom", float, "fraction (default 0)"),
    "--brightness": ("brightness", float, "fraction (default 0)"),
    "--contrast": ("contrast", float, "fraction (default 0)"),
}


def register(sub) -> None:
    p = sub.add_parser("train", help="fine-tune a model on folders of images", description=__doc__)
    p.add_argument("--model", help="model file/folder (Teachable Machine, .h5, .keras) or backbone name (mobilenet_v2, ...)")
    p.add_argument("--data", help="image folder: train/validation/test/<class>/, <class>/ sub-folders, or images + labels.csv")
    p.add_argument("--config", metavar="JSON", help="start from a saved config (config.json of a run, best_config.json of tune)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    p.add_argument("--dry-run", action="store_true", help="show which layers will train, then stop")
    for flag, (_, typ, hlp) in OPTIONS.items():
        p.add_argument(flag, type=typ, default=None, help=hlp)
    p.add_argument("--train-bn", action="store_true", default=None, help="let unfrozen BatchNormalization layers train")
    p.add_argument("--strict", action="store_true", default=None, help="unreadable images are fatal instead of skipped")
    p.add_argument("--tensorboard", action="store_true", default=None,
                   help="write TensorBoard event files to <run>/tensorboard/ (tensorboard --logdir runs/)")
    p.add_argument("--mlflow", nargs="?", const="mlruns", default=None, metavar="URI",
                   help="log config, per-epoch metrics and the best model to MLflow (default URI: ./mlruns)")
    g = p.add_argument_group("augmentation (training split only; defaults are the notebook's)")
    for flag, (_, typ, hlp) in AUGMENT.items():
        g.add_argument(flag, type=typ, default=None, help=hlp)
    g.add_argument("--no-flip", action="store_true", help="no horizontal flip")
    g.add_argument("--vertical-flip", action="store_true", help="add vertical flips")
    g.add_argument("--no-augment", action="store_true", help="no augmentation at all")
    p.set_defaults(func=run)


# setting -> the flag that sets it, so that a bad value is reported under the name the user typed.
FLAGS = {field: flag for flag, (field, _, _) in {**OPTIONS, **AUGMENT}.items()}


def config_from_args(args) -> TrainConfig:
    """The TrainConfig the flags ask for, checked (SettingError naming the flag) before anything heavy loads."""
    cfg = TrainConfig.load(args.config) if args.config else TrainConfig()
    changes = {field: getattr(args, flag[2:].replace("-", "_")) for flag, (field, _, _) in OPTIONS.items()}
    changes.update(model=args.model, data=args.data, train_bn=args.train_bn, strict=args.strict,
                   tensorboard=getattr(args, "tensorboard", None), mlflow=getattr(args, "mlflow", None))  # cv, tune: no such flags
    changes = {k: v for k, v in changes.items() if v is not None}
    aug = {field: getattr(args, flag[2:].replace("-", "_")) for flag, (field, _, _) in AUGMENT.items()}
    aug = {k: v for k, v in aug.items() if v is not None}
    if args.no_flip:
        aug["horizontal_flip"] = False
    if args.vertical_flip:
        aug["vertical_flip"] = True
    augment = AugmentConfig.off() if args.no_augment else cfg.augment
    validate_settings({**cfg.to_dict(), **changes, "augment": {**dataclasses.asdict(augment), **aug}}, names=FLAGS)
    cfg = dataclasses.replace(cfg, **changes)
    cfg.augment = dataclasses.replace(augment, **aug)
    return cfg


def run(args) -> int:
    cfg = None if args.resume else config_from_args(args)  # checked before TensorFlow loads
    from ..console import status

    status("loading TensorFlow and Keras ...")  # 5-20 s on a busy machine, before any other line
    from ..training import train

    if args.resume:
        result = train(resume=args.resume)
    else:
        result = train(cfg, dry_run=args.dry_run)
    return 130 if result is not None and result.interrupted else 0
