"""Flip test-time augmentation: a photo and its mirror image, their class probabilities averaged.

Photos of the classes people retrain for (pets, flowers, products) mean the same thing mirrored,
and the training split is augmented with horizontal flips already; averaging the two answers
cancels some of the noise of either, at twice the inference cost. Whether it helps depends on the
model and the data, so `retreino train` decides it on the validation split (`--tta auto`, the
default: on when the averaged answers have a lower validation loss and no lower validation
accuracy) and stores the decision in the model's metadata (`ModelInfo.tta`), where `predict`,
`evaluate`, `serve` and the export parity check read it. `--tta on` / `--tta off` force it.

The average is over probabilities (before temperature scaling, which is fitted afterwards on
the averaged validation answers); the unknown detector keeps scoring the unflipped photo's
features, the ones it was fitted on.
"""
from __future__ import annotations

import numpy as np

TTA_CHOICES = ("auto", "on", "off")  # --tta
FLIP = "flip"  # ModelInfo.tta when on (None: off)


def flip_pixels(x):
    """(N, H, W, C) images mirrored left to right (NumPy or a tensor)."""
    if isinstance(x, np.ndarray):
        return x[:, :, ::-1]
    import tensorflow as tf

    return tf.reverse(x, axis=[2])


def average(plain: np.ndarray, flipped: np.ndarray) -> np.ndarray:
    """The flip TTA answer: the mean of the two probability rows, in float32 as every model output."""
    return ((np.asarray(plain, np.float64) + np.asarray(flipped, np.float64)) / 2).astype(np.float32)


def nll(probs: np.ndarray, y: np.ndarray) -> float:
    from .calibration import nll as _nll

    return _nll(probs, y)


def decide(choice: str, plain: np.ndarray, flipped: np.ndarray, y: np.ndarray) -> tuple[str | None, dict]:
    """(ModelInfo.tta value, a record of the validation figures behind it) for `--tta choice`.

    `auto`: on only when averaging lowers the validation loss without losing validation accuracy,
    so it never makes the model worse on the split it is judged by.
    """
    y = np.asarray(y, np.int64)
    both = average(plain, flipped)
    record = {"choice": choice,
              "val_accuracy": float(np.mean(plain.argmax(1) == y)), "val_loss": nll(plain, y),
              "val_accuracy_tta": float(np.mean(both.argmax(1) == y)), "val_loss_tta": nll(both, y)}
    if choice == "on":
        on = True
    elif choice == "off":
        on = False
    else:
        on = record["val_loss_tta"] < record["val_loss"] and record["val_accuracy_tta"] >= record["val_accuracy"]
    record["tta"] = FLIP if on else None
    return record["tta"], record


def describe(record: dict) -> str:
    """One line for the training log."""
    state = "on" if record["tta"] else "off"
    how = "chosen on validation" if record["choice"] == "auto" else f"--tta {record['choice']}"
    return (f"Flip test-time augmentation {state} ({how}): val_accuracy {record['val_accuracy']:.3f} -> "
            f"{record['val_accuracy_tta']:.3f}, val_loss {record['val_loss']:.4f} -> {record['val_loss_tta']:.4f} "
            "with the mirror image averaged in")
