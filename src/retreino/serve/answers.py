"""One image's answer as the JSON API gives it: shared by `retreino serve` and `retreino studio`'s Try view.

The unknown score rides along as an extra last column of the batch function's output, so that one
micro-batched forward pass gives both the probabilities and the score; `answer` splits them again and
turns a score below the detector's threshold into `"class": "unknown"` (with `would_say`).
"""
from __future__ import annotations

import numpy as np


def decode_upload(predictor, data: bytes, resize_mode: str) -> np.ndarray:
    """The upload's pixels at the model's input size (DataError, one line, for an unreadable image)."""
    from ..data.images import read_image

    return read_image(data, predictor.info.input_size, resize_mode, getattr(predictor, "interpolation", "bilinear"))


def batch_function(predictor):
    """The batch function: probabilities, plus the unknown score as a last column when there is a detector."""
    if predictor.unknown is None:
        return predictor.predict_pixels

    def fn(pixels):
        full = predictor.predict_pixels_full(pixels)
        return np.concatenate([full["probabilities"], full["unknown_score"][:, None].astype(np.float32)], axis=1)

    return fn


def answer(filename: str, row: np.ndarray, classes: list[str], predictor, unknown_enabled: bool) -> dict:
    """The JSON answer for one image from its row of `batch_function`'s output."""
    if predictor.unknown is None:
        return _prediction(filename, row, classes)
    out = _prediction(filename, row[:-1], classes)
    score = float(row[-1])
    out.update(unknown=False, would_say=None, unknown_score=round(score, 6),
               unknown_threshold=round(float(predictor.unknown.threshold), 6))
    if unknown_enabled and score < predictor.unknown.threshold:
        out.update({"unknown": True, "would_say": out["class"], "class": "unknown"})
    return out


def _prediction(filename: str, probs: np.ndarray, classes: list[str]) -> dict:
    probs = np.asarray(probs, dtype=np.float64)
    top = int(np.argmax(probs))
    return {
        "filename": filename,
        "class": classes[top],
        "index": top,
        "confidence": round(float(probs[top]), 6),
        "probabilities": {c: round(float(p), 6) for c, p in zip(classes, probs)},
    }
