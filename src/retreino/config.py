"""Every knob of a training run in one dataclass. Defaults are the notebook's recipe.

The notebook (`retreinamento.ipynb`) used: 224x224 inputs, ImageDataGenerator augmentation on
the training split (rotation 20 degrees, width/height shift 0.2, horizontal flip), the last 5
layers unfrozen, Adam at 1e-5, 10 epochs, batch 32, EarlyStopping(patience=5),
ReduceLROnPlateau(factor=0.5, patience=3) and a checkpoint of the best model. Its mistakes are
not defaults: pixels are scaled to the model's own range, "last 5 layers" counts the flattened
layers, and BatchNormalization stays in inference mode.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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
    val_split: float = 0.2  # used when the data has no validation/ folder
    test_split: float = 0.1  # used when the data has no test/ folder
    resize: str | None = None  # stretch | crop | pad; None: the model's own (ModelInfo.resize)
    strict: bool = False  # bad image files are fatal instead of skipped
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    cache_budget_mb: int = 2048  # decoded images are cached in memory when they fit

    # Fine-tuning: the notebook's recipe.
    unfreeze: int = 5  # last N layers of the *flattened* model
    train_bn: bool = False
    learning_rate: float = 1e-5
    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "adam"
    early_stopping_patience: int = 5
    reduce_lr_factor: float = 0.5
    reduce_lr_patience: int = 3
    monitor: str = "val_accuracy"

    # Beyond the notebook.
    head_init: str = "linear-probe"  # a new head: linear-probe (fit on frozen features, LP-FT) | warmup (epochs)
    warmup_epochs: int = 3  # head-only epochs when the head is new
    warmup_learning_rate: float = 1e-3
    dropout: float = 0.0  # before a new head
    class_weight: str | None = None  # "balanced"
    label_smoothing: float = 0.0
    seed: int = 42

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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            from .errors import RetreinoError

            raise RetreinoError(f"unknown setting(s) in config: {', '.join(unknown)}")
        d = dict(d)
        if isinstance(d.get("augment"), dict):
            d["augment"] = AugmentConfig(**d["augment"])
        return cls(**d)

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        # A run's config.json nests the settings next to provenance (versions, data fingerprint).
        return cls.from_dict(data.get("config", data))
