"""The data side of a training run: tf.data pipelines, frozen-prefix acceleration, class weights.

`TrainingData` is built once the dataset and the model's input contract are known
(`training._Trainer.setup`); the linear probe (`recipe.py`) and the end-of-training calibration
(`ood.py`) read the same pipelines through it, so every phase sees identically scaled images.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .config import TrainConfig
from .console import status
from .errors import RetreinoError
from .models.info import ModelInfo
from .models.surgery import freeze_all_but_last


@dataclass
class TrainingData:
    """A run's dataset (`data.load_dataset`'s result) fed the way its model expects."""

    cfg: TrainConfig
    dataset: object
    info: ModelInfo
    label_mode: str  # "binary" for a 1-unit sigmoid head, else "categorical"
    # Each split decoded once for every pipeline of the run (make_pipeline's `decoded`).
    decoded: dict = field(default_factory=dict, repr=False)

    def pipelines(self, ordered_train: bool = False):
        """(train, validation) datasets of scaled images; `ordered_train` gives the training split
        in file order without augmentation (for a feature cache, which shuffles by itself)."""
        from .data import make_pipeline

        cfg, ds, info = self.cfg, self.dataset, self.info
        common = dict(
            image_size=info.input_size, preprocessing=info.preprocessing, batch_size=cfg.batch_size,
            num_classes=len(ds.class_names), label_mode=self.label_mode, resize_mode=info.resize,
            interpolation=info.interpolation,
            cache_budget_mb=cfg.cache_budget_mb, seed=cfg.seed, decoded=self.decoded,
        )
        augment = cfg.augment if cfg.augment.enabled else None
        if ordered_train:
            train = make_pipeline(ds.train, training=False, **common)
        else:
            train = make_pipeline(ds.train, training=True, augment=augment, **common)
        val = make_pipeline(ds.validation, training=False, **common)
        return train, val

    def accelerated(self, model, printer=print):
        """(training data, validation data, accelerator or None) for fitting `model`.

        With acceleration (CPU, `--accelerate auto`) the frozen front of the network runs once in
        ONNX Runtime and its outputs are cached; only the trainable tail then runs in Keras.
        """
        from .speed.devices import accelerate_reason

        cfg = self.cfg
        reason = accelerate_reason(cfg)
        if reason is None:
            from .speed.accelerate import Accelerator

            acc = Accelerator.prepare(
                model, lambda m: freeze_all_but_last(m, cfg.unfreeze, train_bn=cfg.train_bn),
                batch_size=cfg.batch_size, seed=cfg.seed, cache_budget_mb=cfg.cache_budget_mb,
            )
            if acc is None:
                printer("Speed: nothing is frozen at the front of the network, so every layer runs in Keras")
                train_ds, val_ds = self.pipelines()
                return train_ds, val_ds, None
            cache_train = not cfg.augment.enabled and acc.fits(len(self.dataset.train))
            train_ds, val_ds = self.pipelines(ordered_train=cache_train)
            status("Speed: converting the frozen front of the network and caching its outputs ...")
            acc.start(next(iter(val_ds))[0].numpy())
            printer(acc.describe())
            train_in = acc.cached_training(train_ds) if cache_train else acc.streamed(train_ds)
            return train_in, acc.validation(val_ds, len(self.dataset.validation)), acc
        if cfg.accelerate != "off":
            printer(f"Speed: frozen-prefix acceleration {reason}")
        train_ds, val_ds = self.pipelines()
        return train_ds, val_ds, None

    def class_weight(self) -> dict[int, float] | None:
        """Keras' `class_weight` for `--class-weight balanced` (1.0 for a class absent from training)."""
        setting = self.cfg.class_weight
        if setting in (None, "", "none"):
            return None
        if setting != "balanced":
            raise RetreinoError(f"unknown class weighting {setting!r}: use 'balanced'")
        from sklearn.utils.class_weight import compute_class_weight

        labels = np.asarray(self.dataset.train.labels)
        classes = np.arange(len(self.dataset.class_names))
        present = np.unique(labels)
        weights = compute_class_weight("balanced", classes=present, y=labels)
        out = {int(c): 1.0 for c in classes}
        out.update({int(c): float(w) for c, w in zip(present, weights)})
        return out
