"""The resize mode is part of the model: set from its origin, overridable by --resize, saved, and used
by predict, serve and export parity alike (issue 15)."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import SHARED, cats_vs_dogs_subset, real_images

MOBILENET_WEIGHTS = SHARED / "models" / "imagenet" / "mobilenet_v2_1.0_224_no_top.weights.h5"


def _widest(paths):
    """The photo whose aspect ratio is farthest from square: where crop and stretch differ most."""
    from PIL import Image

    def ratio(p):
        with Image.open(p) as im:
            return max(im.width / im.height, im.height / im.width)

    return max(paths, key=ratio)


def test_teachable_machine_export_declares_tm_center_crop(water_bottles):
    assert (water_bottles.info.resize, water_bottles.info.interpolation) == ("crop", "lanczos")


def test_keras_applications_backbone_declares_stretch():
    from retreino import load_model

    loaded = load_model("mobilenet_v2", weights=MOBILENET_WEIGHTS)
    assert (loaded.info.resize, loaded.info.interpolation) == ("stretch", "bilinear")


@pytest.fixture(scope="module")
def crop_run(tmp_path_factory):
    """`retreino train --resize crop --tta on` (tiny subset, linear probe + 1 epoch) on a MobileNetV2
    backbone, whose own contract is stretch: the override must win and travel with the model."""
    from retreino import train
    from retreino.config import AugmentConfig


    root = tmp_path_factory.mktemp("crop")
    data = cats_vs_dogs_subset(root / "data", train=10, validation=5, test=5)
    return train(model="mobilenet_v2", weights=str(MOBILENET_WEIGHTS), data=str(data), epochs=1,
                 runs_dir=str(root / "runs"), name="crop", resize="crop", accelerate="off",
                 augment=AugmentConfig.off(), tta="on", printer=None)


@pytest.mark.slow
def test_resize_override_is_saved_and_used_by_predict_serve_and_export(crop_run, tmp_path):
    import httpx

    from retreino import load_model
    from retreino.data.images import read_image
    from retreino.export import export_model
    from retreino.inference import Predictor
    from test_serve import start_server

    # The linear probe ran, then one fine-tuning epoch.
    assert [r["phase"] for r in crop_run.history] == ["linear-probe", "finetune"]
    loaded = load_model(crop_run.dir / "fine_tuned_model.keras")
    assert loaded.info.resize == "crop"
    assert loaded.info.tta == "flip"  # --tta on travels too: every check below includes the mirrored pass
    photo = _widest(real_images("test", "cats", 20) + real_images("test", "dogs", 20))
    size = loaded.info.input_size
    cropped = read_image(photo, size, "crop", loaded.info.interpolation)
    stretched = read_image(photo, size, "stretch", loaded.info.interpolation)
    assert np.abs(cropped.astype(int) - stretched.astype(int)).mean() > 5  # the two really differ

    # predict: the Predictor fits photos as the model says, pixel for pixel.
    predictor = Predictor(loaded, runtime="keras")
    assert predictor.resize_mode == "crop"
    np.testing.assert_array_equal(predictor.load_pixels(photo), cropped)
    expected = predictor.predict_pixels(cropped[None])[0]
    np.testing.assert_allclose(predictor.predict_images([photo])[0], expected, atol=1e-6)
    # (no check that stretched pixels predict differently: a head trained to saturation gives both 0/1)

    # export: retreino.json carries the mode, the export's Predictor uses it, and parity ran on cropped photos.
    result = export_model(loaded, "onnx", tmp_path / "onnx", images=real_images("test", "cats", 4), measure=False)
    assert result.passed
    exported = Predictor.from_export(tmp_path / "onnx")
    assert exported.info.resize == "crop" and exported.resize_mode == "crop"
    np.testing.assert_allclose(exported.predict_images([photo])[0], expected, atol=1e-4)
    from retreino.export import _load_pixels

    np.testing.assert_array_equal(_load_pixels([photo], loaded.info)[0], cropped)

    # serve: a real server on 127.0.0.1 answers with the probabilities of the cropped photo.
    server = start_server(str(crop_run.dir / "fine_tuned_model.keras"), "--quiet")
    try:
        r = httpx.post(f"{server.url}/predict", files=[("files", (photo.name, photo.read_bytes(), "image/jpeg"))],
                       timeout=60)
        assert r.status_code == 200, r.text
        got = r.json()["predictions"][0]["probabilities"]
        np.testing.assert_allclose([got[c] for c in predictor.class_names], expected, atol=1e-5)
    finally:
        server.stop()
