"""Checking an export against the Keras model: probabilities side by side, and latency."""
from __future__ import annotations

import time

import numpy as np

from ..inference.predictor import model_input
from ..models.info import ModelInfo

FLOAT_TOLERANCE = 1e-4  # max |p_export - p_keras| over every image and class
INT8_MIN_AGREEMENT = 0.99  # fraction of images with the same top-1 class
PARITY_IMAGES = 100
CALIBRATION_IMAGES = 100


def _keras_predictor(loaded):
    from ..inference import Predictor

    return Predictor(loaded, runtime="keras")


def _probs(predictor, pixels: np.ndarray, batch: int = 32) -> np.ndarray:
    return np.concatenate([predictor.predict_pixels(pixels[i : i + batch]) for i in range(0, len(pixels), batch)])


def _parity(fmt: str, reference: np.ndarray, got: np.ndarray, image_kind: str) -> dict:
    diff = float(np.abs(got - reference).max()) if len(got) else 0.0
    agreement = float((got.argmax(-1) == reference.argmax(-1)).mean()) if len(got) else 1.0
    int8 = fmt == "tflite-int8"
    passed = agreement >= INT8_MIN_AGREEMENT if int8 else diff <= FLOAT_TOLERANCE
    return {
        "images": int(len(got)),
        "image_kind": image_kind,
        "max_abs_diff": diff,
        "top1_agreement": agreement,
        "criterion": f"top1_agreement >= {INT8_MIN_AGREEMENT}" if int8 else f"max_abs_diff <= {FLOAT_TOLERANCE:g}",
        "passed": bool(passed),
    }


def median_latency_ms(fn, x, runs: int = 20, warmup: int = 3) -> float:
    """Median wall time of `fn(x)` in milliseconds, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn(x)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1000


def _latency_ms(runtime, info: ModelInfo, runs: int = 20) -> float:
    """Median batch-1 latency after warm-up, in milliseconds."""
    h, w = info.input_size
    x = model_input(np.full((1, h, w, 3), 128, np.uint8), info)
    return round(median_latency_ms(runtime, x, runs), 3)
