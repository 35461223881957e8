"""Grad-CAM looks where the evidence is: a head trained on a coloured square must light up that square."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from conftest import CATS_VS_DOGS, need_shared

SQUARE = 72  # px at 224x224: about 2 cells of MobileNetV2's 7x7 feature map
COLOURS = {"red": (255, 0, 0), "blue": (0, 0, 255)}
N_TRAIN, N_TEST = 40, 20  # 40, 80 and 120 photos all held 60-70% test accuracy here (the colour is a weak cue in pooled features)


def _squares(n: int, offset: int, rng: np.random.Generator, size: tuple[int, int]):
    """n real photos (stretched to `size`) with a red or blue square at a seeded random place."""
    from PIL import Image

    photos = sorted((CATS_VS_DOGS / "train" / "cats").glob("*.jpg"))[offset:offset + n // 2]
    photos += sorted((CATS_VS_DOGS / "train" / "dogs").glob("*.jpg"))[offset:offset + n - n // 2]
    pixels, labels, boxes = [], [], []
    h, w = size
    for k, path in enumerate(photos):
        img = np.array(Image.open(path).convert("RGB").resize((w, h), Image.Resampling.BILINEAR))
        label = int(rng.integers(2))
        top, left = int(rng.integers(0, h - SQUARE + 1)), int(rng.integers(0, w - SQUARE + 1))
        img[top:top + SQUARE, left:left + SQUARE] = list(COLOURS.values())[label]
        pixels.append(img)
        labels.append(label)
        boxes.append((top, left))
    return np.stack(pixels), np.array(labels), boxes


@pytest.mark.slow
def test_explain_returns_a_heatmap_and_overlay(water_bottles, tmp_path):
    need_shared()
    from retreino.gradcam import explain

    photo = sorted((CATS_VS_DOGS / "train" / "cats").glob("*.jpg"))[0]
    e = explain(water_bottles, photo)
    assert e.heatmap.shape == (7, 7) and e.heatmap.min() >= 0.0 and e.heatmap.max() == pytest.approx(1.0)
    assert e.class_name in water_bottles.class_names and 0.0 <= e.probability <= 1.0
    other = explain(water_bottles, photo, class_name=0 if e.class_index else 1)
    assert other.class_index != e.class_index
    png = e.save(tmp_path / "why.png")
    from PIL import Image

    with Image.open(png) as im:
        assert im.size == (224, 224) and im.mode == "RGB"


@pytest.mark.slow
@pytest.mark.xfail(strict=False, reason="measured: a Dense head on 40 (also 80, 120) photos reaches only 60-70% "
                   "held-out accuracy on the square's colour, and the Grad-CAM peak falls inside the square on "
                   "20-30% of 20 held-out images; the 90% goal is not met yet (issue 19)")
def test_gradcam_peak_falls_inside_the_coloured_square(water_bottles):
    need_shared()
    import keras

    from retreino.gradcam import explain_pixels
    from retreino.models.info import LoadedModel
    from retreino.models.surgery import feature_extractor
    from retreino.preprocessing import scale_pixels_np

    keras.utils.set_random_seed(19)
    rng = np.random.default_rng(19)
    info = water_bottles.info
    size = tuple(info.input_size)
    x_train, y_train, _ = _squares(N_TRAIN, 0, rng, size)
    x_test, y_test, boxes = _squares(N_TEST, N_TRAIN, rng, size)

    backbone = feature_extractor(water_bottles.model)
    backbone.trainable = False
    feats = np.asarray(backbone.predict(scale_pixels_np(x_train, info.preprocessing), verbose=0))
    head = keras.Sequential([keras.Input(feats.shape[1:]), keras.layers.Dense(2, activation="softmax")])
    head.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    head.fit(feats, y_train, epochs=30, batch_size=8, verbose=0)

    inputs = keras.Input((*size, 3))
    full = keras.Model(inputs, head(backbone(inputs)), name="squares")
    loaded = LoadedModel(full, dataclasses.replace(info, class_names=list(COLOURS), head="softmax"))
    explanations = explain_pixels(loaded, x_test)

    predicted = np.array([e.class_index for e in explanations])
    inside = []
    for e, (top, left) in zip(explanations, boxes):
        assert e.heatmap.min() >= 0.0 and e.heatmap.max() == pytest.approx(1.0)
        row, col = e.peak(size)
        inside.append(top <= row < top + SQUARE and left <= col < left + SQUARE)
    hit = float(np.mean(inside))
    print(f"test accuracy {np.mean(predicted == y_test):.2f}; heatmap peak inside the square {hit:.0%} "
          f"({sum(inside)}/{len(inside)})")
    assert np.mean(predicted == y_test) >= 0.9, "the head did not learn the square's colour"
    assert hit >= 0.9, f"Grad-CAM peak inside the square on only {sum(inside)}/{len(inside)} held-out images"
