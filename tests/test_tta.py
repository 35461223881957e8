"""Flip test-time augmentation: decided on validation, stored in the model, applied by every prediction."""
from __future__ import annotations

import dataclasses

import numpy as np

from conftest import real_images


def test_auto_turns_tta_on_only_when_validation_loss_drops_and_accuracy_holds():
    from retreino import tta

    y = np.array([0, 1, 1])
    plain = np.array([[0.6, 0.4], [0.45, 0.55], [0.3, 0.7]], np.float32)
    better = np.array([[0.9, 0.1], [0.2, 0.8], [0.1, 0.9]], np.float32)  # averaging lowers the loss
    assert tta.decide("auto", plain, better, y)[0] == tta.FLIP
    worse = np.array([[0.1, 0.9], [0.9, 0.1], [0.3, 0.7]], np.float32)
    assert tta.decide("auto", plain, worse, y)[0] is None
    # Lower loss but one answer lost: stays off.
    flips_one = np.array([[0.99, 0.01], [0.7, 0.3], [0.01, 0.99]], np.float32)
    tta_value, record = tta.decide("auto", plain, flips_one, y)
    assert record["val_loss_tta"] < record["val_loss"] and record["val_accuracy_tta"] < record["val_accuracy"]
    assert tta_value is None
    assert tta.decide("on", plain, worse, y)[0] == tta.FLIP and tta.decide("off", plain, better, y)[0] is None


def test_predictor_averages_the_photo_and_its_mirror_when_the_model_says_so(water_bottles, tmp_path):
    from retreino import load_model, save_model
    from retreino.inference import Predictor
    from retreino.models import LoadedModel

    photos = real_images("test", "cats", 3) + real_images("test", "dogs", 3)
    plain = Predictor(water_bottles, runtime="keras")
    pixels = np.stack([plain.load_pixels(p) for p in photos])
    p, mirrored = plain.predict_pixels(pixels), plain.predict_pixels(pixels[:, :, ::-1])
    assert np.abs(p - mirrored).max() > 1e-3  # real photos are not symmetric: the average is not a no-op

    info = dataclasses.replace(water_bottles.info, tta="flip")
    path = tmp_path / "tta.keras"
    save_model(LoadedModel(water_bottles.model, info), path, write_labels=False)
    loaded = load_model(path)
    assert loaded.info.tta == "flip"  # saved with the model, like the resize contract
    with_tta = Predictor(loaded, runtime="keras")
    np.testing.assert_allclose(with_tta.predict_pixels(pixels), (p + mirrored) / 2, atol=1e-5)
