"""Grad-CAM looks where the evidence is: a head trained on a coloured square must light up that square."""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from conftest import CATS_VS_DOGS, need_shared

SQUARE = 75  # px at 224x224: a third of the side, about 2.3 cells of MobileNetV2's 7x7 feature map
COLOURS = {"red": (255, 0, 0), "blue": (0, 0, 255)}
N_PHOTOS, N_TEST = 100, 40  # 100 training photos, each once per colour at the same place: 200 images


def _squares(photos, labels, rng: np.random.Generator, size: tuple[int, int], places=None):
    """Real photos (stretched to `size`) with a red or blue square at a seeded random place (or `places`)."""
    from PIL import Image

    pixels, boxes = [], []
    h, w = size
    for k, (path, label) in enumerate(zip(photos, labels)):
        img = np.array(Image.open(path).convert("RGB").resize((w, h), Image.Resampling.BILINEAR))
        top, left = places[k] if places else (int(rng.integers(0, h - SQUARE + 1)), int(rng.integers(0, w - SQUARE + 1)))
        img[top:top + SQUARE, left:left + SQUARE] = list(COLOURS.values())[label]
        pixels.append(img)
        boxes.append((top, left))
    return np.stack(pixels), np.asarray(labels), boxes


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def _tiny_colour_model(size=(32, 64)):
    """Input -> 8x8 average pooling (a 4x8 'feature map' of mean R, G, B) -> GAP -> Dense(2): red vs blue."""
    import keras

    from retreino.models.info import LoadedModel, ModelInfo

    inputs = keras.Input((*size, 3))
    fmap = keras.layers.AveragePooling2D(8, name="cells")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(fmap)
    dense = keras.layers.Dense(2, activation="softmax", name="head")
    model = keras.Model(inputs, dense(pooled))
    dense.set_weights([np.array([[1.0, -1.0], [0.0, 0.0], [-1.0, 1.0]], np.float32), np.zeros(2, np.float32)])
    info = ModelInfo.from_dict({"source": "tiny", "format": "keras", "input_size": list(size), "class_names": ["red", "blue"],
                                "head": "softmax", "preprocessing": "unit"})
    return LoadedModel(model, info)


def test_heatmap_rows_and_columns_follow_the_image():
    """A red patch at the top right of a non-square image: the heatmap is hottest there, in (row, col)."""
    from retreino.gradcam import explain_pixels

    loaded = _tiny_colour_model()
    img = np.zeros((1, 32, 64, 3), np.uint8)
    img[0, 0:8, 48:56] = (255, 0, 0)  # feature cell (0, 6)
    e = explain_pixels(loaded, img)[0]
    assert e.class_name == "red" and e.layer == "cells"
    assert e.heatmap.shape == (4, 8)
    assert np.unravel_index(int(np.argmax(e.heatmap)), e.heatmap.shape) == (0, 6)
    row, col = e.peak()
    assert 0 <= row < 8 and 48 <= col < 56
    # Grad-CAM of a GAP + Dense head is CAM (Zhou et al. 2016): relu(sum_k w_k A_k), here the red minus blue mean.
    cells = img[0].reshape(4, 8, 8, 8, 3).mean(axis=(1, 3)) / 255.0
    cam = np.maximum(cells[..., 0] - cells[..., 2], 0)
    np.testing.assert_allclose(e.heatmap, cam / cam.max(), atol=1e-5)
    # The other class: its evidence is blue, absent here, so its map is empty rather than negative.
    blue = explain_pixels(loaded, img, "blue")[0]
    assert blue.class_name == "blue" and blue.heatmap.max() == 0.0


def test_heatmap_maps_back_through_a_centre_crop():
    """A crop-mode input covers the photo's centred box: the heat lands there, the cut-off sides stay 0."""
    from retreino.gradcam import Explanation

    heat = np.zeros((7, 7), np.float32)
    heat[3, 6] = 1.0  # the right edge of what the model saw
    e = Explanation(heat, 0, "a", 1.0, np.zeros((224, 224, 3), np.uint8), "x", resize_mode="crop")
    on_photo = e.heatmap_on_image((100, 200))  # a wide photo: the crop is its centre 100 x 100
    assert on_photo.shape == (100, 200)
    assert on_photo[:, :50].max() == 0.0 and on_photo[:, 150:].max() == 0.0
    r, c = np.unravel_index(int(np.argmax(on_photo)), on_photo.shape)
    assert 40 <= r <= 60 and 135 <= c < 150
    stretched = Explanation(heat, 0, "a", 1.0, np.zeros((224, 224, 3), np.uint8), "x", resize_mode="stretch")
    r, c = np.unravel_index(int(np.argmax(stretched.heatmap_on_image((100, 200)))), (100, 200))
    assert c >= 170  # stretched: the right edge of the photo itself


@pytest.mark.slow
def test_explain_returns_a_heatmap_and_overlay(water_bottles, tmp_path):
    need_shared()
    import retreino
    from retreino.gradcam import explanation

    photo = sorted((CATS_VS_DOGS / "train" / "cats").glob("*.jpg"))[0]
    e = explanation(water_bottles, photo)
    assert e.heatmap.shape == (7, 7) and e.heatmap.min() >= 0.0 and e.heatmap.max() == pytest.approx(1.0)
    assert e.class_name in water_bottles.class_names and 0.0 <= e.probability <= 1.0
    assert e.resize_mode == "crop"  # the Teachable Machine contract, as predict uses it
    other = explanation(water_bottles, photo, class_name=0 if e.class_index else 1)
    assert other.class_index != e.class_index
    from PIL import Image

    png = e.save(tmp_path / "why.png")
    with Image.open(png) as im:
        assert im.size == (224, 224) and im.mode == "RGB"
    with Image.open(photo) as im:
        w, h = im.size
    with Image.open(e.save(tmp_path / "whole.png", image=photo)) as im:
        assert im.size == (w, h) if max(w, h) <= 448 else max(im.size) == 448
    heat = retreino.explain(water_bottles, photo)  # the lazy API: the heatmap itself
    assert isinstance(heat, np.ndarray) and heat.shape == (224, 224) and heat.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() == pytest.approx(1.0, abs=1e-3)
    assert retreino.explain(water_bottles, photo, size="image").shape == (h, w)
    np.testing.assert_allclose(retreino.explain(water_bottles, photo, size="features"), e.heatmap, atol=1e-5)
    with pytest.raises(retreino.RetreinoError, match="unknown size"):
        retreino.explain(water_bottles, photo, size="huge")


@pytest.mark.slow
def test_cli_predict_explain_writes_overlays(tmp_path, capsys, monkeypatch):
    need_shared()
    from PIL import Image

    from conftest import WATER_BOTTLES, cats_vs_dogs_subset
    from retreino.cli import main

    monkeypatch.chdir(tmp_path)
    photo = sorted((CATS_VS_DOGS / "test" / "cats").glob("*.jpg"))[0]
    assert main(["predict", str(WATER_BOTTLES), str(photo), "--explain", "--runtime", "keras"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.endswith(f"why: {photo.stem}.gradcam.png"), line
    with Image.open(tmp_path / f"{photo.stem}.gradcam.png") as im:
        assert im.mode == "RGB" and im.size[0] > 100

    data = cats_vs_dogs_subset(tmp_path / "pets", test=2)
    assert main(["predict", str(WATER_BOTTLES), str(data / "test"), "--explain", str(tmp_path / "why"),
                 "--runtime", "keras"]) == 0
    err = capsys.readouterr().err
    assert f"wrote 4 Grad-CAM overlay(s) to {tmp_path / 'why'}/" in err
    made = sorted(p.relative_to(tmp_path / "why").as_posix() for p in (tmp_path / "why").rglob("*.png"))
    assert made == sorted(f"{c}/{p.stem}.gradcam.png" for c in ("cats", "dogs") for p in (data / "test" / c).glob("*.jpg"))


@pytest.mark.slow
def test_report_gallery_shows_each_error_with_its_overlay_in_chromium(tmp_path):
    """water_bottles scored on cats and dogs as if they were its bottles: errors, each with its overlay."""
    need_shared()
    from playwright.sync_api import sync_playwright

    from conftest import WATER_BOTTLES, cats_vs_dogs_subset
    from retreino import evaluate

    data = cats_vs_dogs_subset(tmp_path / "pets", test=4)
    out = tmp_path / "eval"
    result = evaluate(WATER_BOTTLES, data / "test", out=out, names={"cats": "5 Galoon", "dogs": "500ML"},
                      runtime="keras", progress=False)
    wrong = int((result.y_pred != result.y_true).sum())
    assert wrong >= 1, "this pairing should make errors"
    overlays = sorted((out / "misclassified").glob("*.gradcam.jpg"))
    assert len(overlays) == min(wrong, 16)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto((out / "report.html").as_uri())
            imgs = page.locator("#misclassified img.gradcam")
            assert imgs.count() == len(overlays)
            widths = imgs.evaluate_all("els => els.map(e => e.complete ? e.naturalWidth : 0)")
            assert all(w > 0 for w in widths), widths
            captions = page.locator("#misclassified figure.why figcaption").all_inner_texts()
            assert all("predicted" in c for c in captions)
        finally:
            browser.close()


@pytest.mark.slow
def test_gradcam_peak_falls_inside_the_coloured_square(water_bottles):
    """Acceptance of issue 19: a real photo with a coloured square at a random place, class = its colour.

    Scored as the pointing game (Zhang et al. 2016, used by Selvaraju et al. for Grad-CAM): the
    map of the image's true class must peak inside the square. Measured on this seed: 36/40 for
    the true class, 34/40 for the predicted one (docs/explain.md), so 90% holds with no margin.
    """
    need_shared()
    import keras

    from retreino.gradcam import explain_pixels
    from retreino.models.info import LoadedModel
    from retreino.models.surgery import feature_extractor
    from retreino.preprocessing import scale_pixels_np
    from retreino.recipe import fit_probe, head_weights

    keras.utils.set_random_seed(19)
    rng = np.random.default_rng(19)
    info = water_bottles.info
    size = tuple(info.input_size)
    train = [p for c in ("cats", "dogs") for p in sorted((CATS_VS_DOGS / "train" / c).glob("*.jpg"))[:N_PHOTOS // 2]]
    test = [p for c in ("cats", "dogs") for p in sorted((CATS_VS_DOGS / "test" / c).glob("*.jpg"))[:N_TEST // 2]]
    # Each training photo twice, red and blue at the same place: its content says nothing about the class.
    x_red, _, places = _squares(train, [0] * len(train), rng, size)
    x_blue, _, _ = _squares(train, [1] * len(train), rng, size, places)
    x_train, y_train = np.concatenate([x_red, x_blue]), np.repeat([0, 1], len(train))
    x_test, y_test, boxes = _squares(test, rng.integers(2, size=len(test)).tolist(), rng, size)

    # The tool's own head recipe: a linear probe (logistic regression) on the frozen pooled features.
    backbone = feature_extractor(water_bottles.model)
    feats = np.asarray(backbone.predict(scale_pixels_np(x_train, info.preprocessing), verbose=0))
    probe, _, _ = fit_probe(feats, y_train, feats, y_train, 2, grid=(0.1,))
    dense = keras.layers.Dense(2, activation="softmax", name="squares_head")
    inputs = keras.Input((*size, 3))
    full = keras.Model(inputs, dense(backbone(inputs)), name="squares")
    dense.set_weights(list(head_weights(probe, 2, feats.shape[1])))
    loaded = LoadedModel(full, dataclasses.replace(info, class_names=list(COLOURS), head="softmax"))
    explanations = explain_pixels(loaded, x_test)

    predicted = np.array([e.class_index for e in explanations])
    inside = []
    for e, (top, left) in zip(explanations, boxes):
        assert e.heatmap.min() >= 0.0 and e.heatmap.max() == pytest.approx(1.0)
        row, col = e.peak(size)
        inside.append(top <= row < top + SQUARE and left <= col < left + SQUARE)
    hit = float(np.mean(inside))
    for_colour = explain_pixels(loaded, x_test, y_test.tolist())  # the class the square's colour sets
    inside_true = [top <= r < top + SQUARE and left <= c < left + SQUARE
                   for e, (top, left) in zip(for_colour, boxes) for r, c in [e.peak(size)]]
    if os.environ.get("RETREINO_DOCS_SHOTS"):  # the picture in docs/explain.md: 8 held-out images, peak marked
        from PIL import Image

        from conftest import ROOT

        tiles = []
        for e in explanations[:8]:
            tile = e.overlay().copy()
            r, c = e.peak(size)
            tile[max(0, r - 3):r + 4, max(0, c - 3):c + 4] = 255
            tiles.append(tile)
        Image.fromarray(np.concatenate(tiles, axis=1)).save(ROOT / "docs" / "img" / "gradcam_squares.jpg", quality=80)
    print(f"test accuracy {np.mean(predicted == y_test):.2f}; peak inside the square: for the square's colour "
          f"{sum(inside_true)}/{len(inside_true)}, for the predicted class {sum(inside)}/{len(inside)}")
    assert np.mean(predicted == y_test) >= 0.9, "the head did not learn the square's colour"
    assert np.mean(inside_true) >= 0.9, f"Grad-CAM peak inside the square on only {sum(inside_true)}/{len(inside_true)}"
    assert hit >= 0.8, f"for the predicted class, Grad-CAM peak inside the square on only {sum(inside)}/{len(inside)}"
