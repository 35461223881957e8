"""Every knob of a training run in one dataclass. Defaults are the notebook's recipe.

The notebook (`retreinamento.ipynb`) used: 224x224 inputs, ImageDataGenerator augmentation on
the training split (rotation 20 degrees, width/height shift 0.2, horizontal flip), the last 5
layers unfrozen, Adam at 1e-5, 10 epochs, batch 32, EarlyStopping(patience=5),
ReduceLROnPlateau(factor=0.5, patience=3) and a checkpoint of the best model. Its mistakes are
not defaults: pixels are scaled to the model's own range, "last N layers" counts the flattened
layers, and BatchNormalization stays in inference mode.

Two numbers differ from the notebook's, by measurement (docs/accuracy.md, issue 15): the last 30
layers with weights train at 1e-4, where the notebook's 5 at 1e-5 barely moved the features and
lost to a logistic regression on them. `--unfreeze 5 --lr 1e-5` gives the notebook's numbers back.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .constraints import BOOL, NONE, Integral, Interval, Real, SettingError, StrOptions, validate

# The choices of the string settings, named once (training, the speed options and the CLI read them here).
OPTIMIZERS = ("adam", "sgd", "rmsprop", "adamw")
RESIZE_MODES = ("stretch", "crop", "pad")
MONITORS = ("val_accuracy", "val_loss", "accuracy", "loss")
ACCELERATE = ("auto", "off")
PRECISIONS = ("float32", "mixed")
DISTRIBUTE = ("mirrored", "multiworker")
WEIGHT_AVERAGES = ("ema", "off")

# Where the data has no validation/ or test/ folder: the fractions carved out, and the split seed.
DEFAULT_VAL_SPLIT = 0.2
DEFAULT_TEST_SPLIT = 0.1
DEFAULT_SEED = 42

_COUNT = [Interval(Integral, 0, None)]  # epochs of patience, layers ...
_FRACTION = [Interval(Real, 0, 1, closed="left")]
_RATE = [Interval(Real, 0, None, closed="neither")]

AUGMENT_CONSTRAINTS: dict[str, list] = {
    "rotation": [Interval(Real, 0, 180)],
    "width_shift": [Interval(Real, 0, 1)],
    "height_shift": [Interval(Real, 0, 1)],
    "horizontal_flip": [BOOL],
    "vertical_flip": [BOOL],
    "zoom": _FRACTION,
    "brightness": [Interval(Real, 0, 1)],
    "contrast": [Interval(Real, 0, 1)],
}

# Every constrained setting of a training run, in one table (checked by TrainConfig.validate).
TRAIN_CONSTRAINTS: dict[str, list] = {
    "val_split": _FRACTION,
    "test_split": _FRACTION,
    "resize": [StrOptions(RESIZE_MODES), NONE],  # None: the model's own (ModelInfo.resize)
    "strict": [BOOL],
    "cache_budget_mb": _COUNT,
    "unfreeze": _COUNT,
    "train_bn": [BOOL],
    "learning_rate": _RATE,
    "epochs": [Interval(Integral, 1, None)],
    "batch_size": [Interval(Integral, 1, None)],
    "optimizer": [StrOptions(OPTIMIZERS, ignore_case=True)],
    "early_stopping_patience": _COUNT,
    "reduce_lr_factor": [Interval(Real, 0, 1, closed="neither")],
    "reduce_lr_patience": _COUNT,
    "monitor": [StrOptions(MONITORS)],
    "warmup_epochs": _COUNT,
    "warmup_learning_rate": _RATE,
    "dropout": _FRACTION,
    "class_weight": [StrOptions({"balanced"}, internal={"none", ""}), NONE],
    "label_smoothing": _FRACTION,
    "seed": [Interval(Integral, 0, 2**32 - 1)],
    "accelerate": [StrOptions(ACCELERATE)],
    "precision": [StrOptions(PRECISIONS)],
    "distribute": [StrOptions(DISTRIBUTE, internal={"none", ""}), NONE],
    "tensorboard": [BOOL],
    "head_init": [StrOptions({"linear-probe", "warmup"})],  # recipe.HEAD_INITS
    "tta": [StrOptions({"auto", "on", "off"})],  # tta.TTA_CHOICES
    "weight_average": [StrOptions(WEIGHT_AVERAGES)],
    "ema_momentum": [Interval(Real, 0, 1, closed="left")],
    "layer_decay": [Interval(Real, 0, 1, closed="right")],
}


# `serve()` and `retreino serve`: ServeSettings' fields and the port.
SERVE_CONSTRAINTS: dict[str, list] = {
    "port": [Interval(Integral, 0, 65535)],
    "max_file_mb": [Interval(Real, 0, None, closed="neither")],
    "max_files": [Interval(Integral, 1, None)],
    "max_batch": [Interval(Integral, 1, None)],
    "batch_wait_ms": [Interval(Real, 0, None)],
    "max_queue": [Interval(Integral, 1, None)],
    "decode_threads": [Interval(Integral, 1, None)],
    "resize_mode": [StrOptions(RESIZE_MODES), NONE],  # None: the model's own
}


def validate_serve(values: Mapping[str, Any], names: Mapping[str, str] | None = None) -> None:
    """Check serving settings (ServeSettings fields and `port`) against SERVE_CONSTRAINTS."""
    validate(values, SERVE_CONSTRAINTS, names)


def monitor_mode(monitor: str) -> str:
    """"min" when a lower value of the monitored metric is better (a loss), "max" otherwise (an accuracy).

    The one place that says which way is up: EarlyStopping, ReduceLROnPlateau, the best-model
    checkpoint and the run recorder all take it from here (Keras' MonitorCallback uses the same rule).
    """
    return "min" if "loss" in monitor.removeprefix("val_") else "max"


def is_improvement(value: float, best: float | None, mode: str) -> bool:
    """Whether `value` beats `best` (None: nothing yet, so any value does) in the direction `mode` ("min" or "max")."""
    if best is None:
        return True
    return value < best if mode == "min" else value > best


def validate_settings(values: Mapping[str, Any], names: Mapping[str, str] | None = None) -> None:
    """Check TrainConfig settings (a mapping of field -> value) against TRAIN_CONSTRAINTS.

    `names` maps fields to the names the user typed (CLI flags). Raises SettingError.
    """
    names = names or {}
    validate(values, {k: v for k, v in TRAIN_CONSTRAINTS.items() if k != "epochs"}, names)
    epochs = values.get("epochs", 1)
    # epochs 0 asks for the head-only warm-up alone: allowed when a warm-up is asked for.
    warmup_alone = epochs == 0 and not isinstance(epochs, bool) and values.get("warmup_epochs", 0) >= 1
    if not warmup_alone:
        validate(values, {"epochs": TRAIN_CONSTRAINTS["epochs"]}, names)
    val, test = values.get("val_split", 0), values.get("test_split", 0)
    if val + test >= 1:
        raise SettingError(f"{names.get('val_split', 'val_split')} + {names.get('test_split', 'test_split')} "
                           f"must be below 1, got {val!r} + {test!r}")
    augment = values.get("augment")
    if isinstance(augment, AugmentConfig):
        augment = dataclasses.asdict(augment)
    if augment is not None:
        validate(augment, AUGMENT_CONSTRAINTS, names)


@dataclass
class AugmentConfig:
    """Training-split augmentation; the first four are the notebook's ImageDataGenerator settings."""

    rotation: float = 20.0  # degrees, uniform in [-rotation, rotation]
    width_shift: float = 0.2  # fraction of width
    height_shift: float = 0.2  # fraction of height
    horizontal_flip: bool = True
    vertical_flip: bool = False
    zoom: float = 0.0  # fraction, uniform in [1 - zoom, 1 + zoom]
    brightness: float = 0.0  # fraction of the range, uniform in [-b, b]
    contrast: float = 0.0  # factor uniform in [1 - c, 1 + c]

    @property
    def enabled(self) -> bool:
        return any([self.rotation, self.width_shift, self.height_shift, self.horizontal_flip,
                    self.vertical_flip, self.zoom, self.brightness, self.contrast])

    def __post_init__(self):
        validate(dataclasses.asdict(self), AUGMENT_CONSTRAINTS)

    @classmethod
    def off(cls) -> "AugmentConfig":
        return cls(rotation=0.0, width_shift=0.0, height_shift=0.0, horizontal_flip=False)


@dataclass
class TrainConfig:
    """All settings of `retreino train`; saved to `config.json` in every run directory."""

    # What to train, on what.
    model: str = ""
    data: str = ""
    weights: str | None = None  # weights file for a backbone name
    input_range: str | None = None  # override the model's input scaling
    labels_csv: str | None = None  # CSV of filename,label (default: labels.csv in the data folder)
    val_split: float = DEFAULT_VAL_SPLIT  # used when the data has no validation/ folder
    test_split: float = DEFAULT_TEST_SPLIT  # used when the data has no test/ folder
    resize: str | None = None  # stretch | crop | pad; None: the model's own (ModelInfo.resize)
    strict: bool = False  # bad image files are fatal instead of skipped
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    cache_budget_mb: int = 2048  # decoded images are cached in memory when they fit

    # Fine-tuning: the notebook's recipe, deeper and faster (the notebook: 5 layers at 1e-5; see the docstring).
    unfreeze: int = 30  # last N layers with weights of the *flattened* model
    train_bn: bool = False
    learning_rate: float = 1e-4
    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "adam"
    early_stopping_patience: int = 5
    reduce_lr_factor: float = 0.5
    reduce_lr_patience: int = 3
    monitor: str = "val_accuracy"

    # Beyond the notebook.
    head_init: str = "linear-probe"  # a new head: linear-probe (fit on frozen features, LP-FT) | warmup (epochs)
    tta: str = "auto"  # flip test-time augmentation: auto (decided on validation) | on | off; see retreino.tta
    # ema: fine-tuning validates and saves the moving average of the weights (Polyak averaging), not the last
    # step's. Off by default: on validation it won on 2 of the 4 rows that fine-tune and lost on 2 (docs/accuracy.md).
    weight_average: str = "off"  # ema | off
    ema_momentum: float = 0.99  # the average's decay per step: about the last 100 batches
    # Discriminative rates: each trainable layer below the head at `layer_decay` times the rate of the one above it
    # (retreino.optimizers). 1: one rate for all, as the notebook.
    layer_decay: float = 1.0
    warmup_epochs: int = 3  # head-only epochs when the head is new
    warmup_learning_rate: float = 1e-3
    dropout: float = 0.0  # before a new head
    class_weight: str | None = None  # "balanced"
    label_smoothing: float = 0.0
    seed: int = DEFAULT_SEED

    # Speed: none of these change what is learned (beyond float rounding).
    accelerate: str = "auto"  # auto | off: frozen prefix in ONNX Runtime + feature caches (CPU only)
    precision: str = "float32"  # float32 | mixed (float16 compute + XLA; GPU only)
    distribute: str | None = None  # mirrored | multiworker (tf.distribute)

    # Where results go.
    runs_dir: str = "runs"
    name: str | None = None

    # Tracking (optional extras): TensorBoard event files in the run directory, an MLflow URI.
    tensorboard: bool = False
    mlflow: str | None = None  # tracking URI; the CLI's bare --mlflow means a local "mlruns" file store

    def __post_init__(self):
        self.validate()

    def validate(self, names: Mapping[str, str] | None = None) -> "TrainConfig":
        """Raise SettingError (one line, quoting the bad value) unless every setting is allowed."""
        validate_settings({f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, names)
        return self

    @property
    def monitor_mode(self) -> str:
        return monitor_mode(self.monitor)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SettingError(f"unknown setting(s) in config: {', '.join(unknown)}")
        d = dict(d)
        if isinstance(d.get("augment"), dict):
            unknown = sorted(set(d["augment"]) - {f.name for f in dataclasses.fields(AugmentConfig)})
            if unknown:
                raise SettingError(f"unknown augment setting(s) in config: {', '.join(unknown)}")
            d["augment"] = AugmentConfig(**d["augment"])
        return cls(**d)

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        from .atomic import read_json

        data = read_json(path)
        # A run's config.json nests the settings next to provenance (versions, data fingerprint).
        return cls.from_dict(data.get("config", data))
