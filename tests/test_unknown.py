"""Calibration and the unknown answer: numbers first, then the same decisions through every runtime and serve."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import SHARED, real_images
from retreino import ood
from retreino.calibration import apply_temperature, expected_calibration_error, fit_temperature

FLOWERS = SHARED / "datasets" / "flowers"


def test_temperature_fixes_an_overconfident_model_and_keeps_the_winner():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 2000)
    # Right 80% of the time but always 99% sure: overconfident.
    pred = np.where(rng.random(2000) < 0.8, y, 1 - y)
    probs = np.where(np.eye(2)[pred] == 1, 0.99, 0.01)
    t = fit_temperature(probs, y)
    scaled = apply_temperature(probs, t)
    assert t > 1.5
    assert (scaled.argmax(1) == probs.argmax(1)).all()
    assert expected_calibration_error(scaled, y) < 0.05 < expected_calibration_error(probs, y)


def test_detectors_accept_the_chosen_share_and_reject_far_points():
    rng = np.random.default_rng(1)
    train = np.r_[rng.normal(0, 1, (200, 16)) + 4, rng.normal(0, 1, (200, 16)) - 4]
    labels = np.repeat([0, 1], 200)
    val = np.r_[rng.normal(0, 1, (100, 16)) + 4, rng.normal(0, 1, (100, 16)) - 4]
    far = rng.normal(0, 1, (100, 16)) * 0.1 + np.r_[4, -4, np.zeros(14)] * 3
    for method in ood.METHODS:
        det = ood.fit_detector(train, labels, val, 2, method=method, accept=0.9)
        assert 0.85 <= np.mean(~det.is_unknown(det.score(val))) <= 0.95
        assert det.is_unknown(det.score(far)).mean() > 0.9


@pytest.fixture(scope="session")
def unknown_run(unknown_model):
    """conftest's `unknown_model` with its onnx and tflite exports (which carry the features output)."""
    from retreino import load_model
    from retreino.export import export_models

    export_models(load_model(unknown_model / "fine_tuned_model.keras"), ["onnx", "tflite"],
                  images=real_images("test", "cats", 10), measure=False)
    return unknown_model


def _images():
    return real_images("test", "cats", 6) + real_images("test", "dogs", 6) + sorted(FLOWERS.glob("*/*.jpg"))[::125]


@pytest.mark.slow
def test_predict_runtimes_and_serve_agree_on_unknown(unknown_run):
    from fastapi.testclient import TestClient

    from retreino.inference import Predictor
    from retreino.prediction import predict, predict_folder
    from retreino.serve.app import create_app

    images = _images()
    keras_answers = [predict(unknown_run, p, runtime="keras") for p in images]
    decisions = [a.unknown for a in keras_answers]
    assert any(decisions) and not all(decisions)  # flowers rejected, most pets not
    assert sum(decisions[12:]) >= 8  # of 10 flowers
    for runtime in ("onnx", "tflite"):
        answers = [predict(unknown_run, p, runtime=runtime) for p in images]
        assert [a.unknown for a in answers] == decisions, runtime
        assert np.allclose([a.unknown_score for a in answers], [a.unknown_score for a in keras_answers], atol=1e-3)
        assert np.allclose([a.confidence for a in answers], [a.confidence for a in keras_answers], atol=1e-3)
    rows = predict_folder(unknown_run, images, progress=False, runtime="keras")
    assert [r["unknown"] for r in rows] == decisions
    assert {r["predicted"] for r in rows if r["unknown"]} == {"unknown"}
    off = predict(unknown_run, images[decisions.index(True)], unknown=False)
    assert not off.unknown and off.class_name in ("cats", "dogs")
    # The predictor applies the temperature: calibrated != raw whenever T != 1.
    pred = Predictor(unknown_run / "exports" / "onnx", runtime="auto")
    full = pred.predict_pixels_full(np.stack([pred.load_pixels(p) for p in images[:2]]))
    assert np.allclose(full["probabilities"], apply_temperature(full["raw"], pred.info.temperature), atol=1e-6)

    predictor = Predictor(unknown_run / "exports" / "tflite", runtime="auto")
    with TestClient(create_app(predictor)) as client:
        answers = []
        for part in (images[:11], images[11:]):  # at most 16 files per request
            files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in part]
            answers += client.post("/predict", files=files).json()["predictions"]
    assert [p["unknown"] for p in answers] == decisions
    assert all(p["class"] == "unknown" and p["would_say"] in ("cats", "dogs") for p in answers if p["unknown"])
