"""`retreino export --format tfjs`: the files Teachable Machine's library reads, refusals, and a TF.js round trip.

The browser half (tmImage.load in Chromium) is tests/test_tfjs_browser.py; here the written
model.json is also run by @tensorflow/tfjs in Node, and a model is trained from a TF.js download.
"""
from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from conftest import cats_vs_dogs_subset
from retreino import load_model
from retreino.cli import main
from retreino.export import ExportError, export_model
from retreino.export.tfjs import check_tfjs, write_tfjs
from retreino.models import LoadedModel, ModelInfo
from tfjs_helpers import TFJS_EXPORTS, parity_photos, tfjs_predict, tm_pixels

TM_FIELDS = {"labels", "imageSize", "tfjsVersion", "tmVersion", "packageName", "packageVersion", "modelName",
             "timeStamp"}


def _model(layers, size=224, preprocessing="tf", head="softmax", classes=("a", "b")):
    inputs = keras.Input((size, size, 3))
    x = inputs
    for layer in layers:
        x = layer(x)
    info = ModelInfo(format="keras", source="m.keras", input_size=(size, size), preprocessing=preprocessing,
                     head=head, class_names=list(classes))
    return LoadedModel(keras.Model(inputs, x), info)


def _tiny(**kw):
    return _model([keras.layers.Conv2D(4, 3, strides=8), keras.layers.GlobalAveragePooling2D(),
                   keras.layers.Dense(2, activation="softmax")], **kw)


def test_files_and_metadata_fields(tmp_path):
    loaded = _tiny(classes=("노마스크", "마스크"))
    assert write_tfjs(loaded, tmp_path, model_name="masks") == ["model.json", "weights.bin", "metadata.json"]
    model = json.loads((tmp_path / "model.json").read_text(encoding="utf-8"))
    assert model["format"] == "layers-model" and model["generatedBy"].startswith("retreino")
    assert "convertedBy" in model and model["modelTopology"]["class_name"] == "Model"
    specs = model["weightsManifest"][0]["weights"]
    assert model["weightsManifest"][0]["paths"] == ["weights.bin"]
    size = sum(4 * int(np.prod(s["shape"])) for s in specs)
    assert (tmp_path / "weights.bin").stat().st_size == size  # raw float32, nothing else
    meta = json.loads((tmp_path / "metadata.json").read_text(encoding="utf-8"))
    assert TM_FIELDS <= set(meta)
    assert meta["labels"] == ["노마스크", "마스크"] and meta["imageSize"] == 224 and meta["modelName"] == "masks"
    assert meta["packageName"] == "@teachablemachine/image"
    back = load_model(tmp_path)
    x = np.random.default_rng(0).uniform(-1, 1, (3, 224, 224, 3)).astype("float32")
    assert np.array_equal(np.asarray(back.model(x)), np.asarray(loaded.model(x)))
    assert back.class_names == ["노마스크", "마스크"]


@pytest.mark.parametrize("kw, words", [
    ({"size": 160}, "224x224x3 input"),
    ({"preprocessing": "unit"}, "scaled to [-1, 1]"),
    ({"head": "sigmoid"}, "softmax output"),
])
def test_models_outside_the_tm_contract_are_refused(kw, words):
    with pytest.raises(ExportError, match=words.replace("[", r"\[").replace("]", r"\]")):
        check_tfjs(_tiny(**kw))


def test_layers_tfjs_lacks_are_refused_by_name(capsys, tmp_path):
    gelu = _model([keras.layers.Conv2D(4, 3, strides=8, activation="gelu", name="gelu_conv"),
                   keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2, activation="softmax")])
    with pytest.raises(ExportError, match="'gelu_conv'.*'gelu' activation"):
        check_tfjs(gelu)
    inputs = keras.Input((224, 224, 3))
    a, b = keras.layers.Conv2D(2, 3, strides=8)(inputs), keras.layers.Conv2D(2, 3, strides=8)(inputs)
    x = keras.layers.Subtract(name="minus")([a, b])
    out = keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, out)
    info = ModelInfo(format="keras", source="m.keras", input_size=(224, 224), preprocessing="tf", head="softmax",
                     class_names=["a", "b"])
    from retreino.models.saving import save_model

    save_model(LoadedModel(model, info), tmp_path / "m.keras")
    assert main(["export", str(tmp_path / "m.keras"), "--format", "tfjs", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the "exporting ..." progress line
    assert err.startswith("retreino export: error: layer 'minus' (Subtract)") and "tfjs" in err
    assert not (tmp_path / "x").exists()  # refused before writing anything


@pytest.mark.slow
def test_written_model_runs_in_tfjs_like_keras(water_bottles, tmp_path):
    """Export the real TM model (Keras 2 H5 -> Keras 3 -> tfjs) and run model.json in @tensorflow/tfjs."""
    result = export_model(water_bottles, "tfjs", tmp_path / "tfjs", images=parity_photos(32), measure=False)
    assert result.passed and result.parity["max_abs_diff"] == 0.0  # the files read back into Keras
    assert {"model.json", "weights.bin", "metadata.json", "index.html", "tf.min.js"} <= set(result.files)
    x = tm_pixels(parity_photos(16)).astype(np.float32) / 127.5 - 1
    keras_probs = np.asarray(water_bottles.model.predict(x, verbose=0))
    diff = float(np.abs(tfjs_predict(result.folder / "model.json", x, tmp_path) - keras_probs).max())
    print(f"water_bottles exported to tfjs: max |p_keras - p_tfjs| = {diff:.2e} on 16 photos")
    assert diff <= 1e-4


@pytest.mark.slow
def test_train_from_a_tfjs_download_and_export_back(tmp_path, capsys):
    """TM's TF.js download -> 2 epochs on a small subset -> evaluate, predict -> tfjs export, loadable again."""
    data = cats_vs_dogs_subset(tmp_path / "data", train=20, validation=10, test=10)
    runs = tmp_path / "runs"
    assert main(["train", "--model", str(TFJS_EXPORTS["masks"]), "--data", str(data), "--epochs", "1",
                 "--warmup-epochs", "1", "--batch-size", "16", "--runs-dir", str(runs), "--name", "from_tfjs"]) == 0
    run = runs / "from_tfjs"
    trained = load_model(run)
    assert trained.class_names == ["cats", "dogs"] and trained.info.preprocessing == "tf"
    capsys.readouterr()
    assert main(["evaluate", str(TFJS_EXPORTS["masks"]), "--data", str(data / "test"), "--names",
                 "cats=노마스크,dogs=마스크", "--out", str(tmp_path / "eval"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert 0 <= report["accuracy"] <= 1
    photo = sorted((data / "test" / "cats").iterdir())[0]
    assert main(["predict", str(TFJS_EXPORTS["masks"]), str(photo), "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert set(answer["probabilities"]) == {"노마스크", "마스크"}

    assert main(["export", str(run), "--format", "tfjs", "--no-timing", "--parity-images", "20"]) == 0
    folder = run / "exports" / "tfjs"
    meta = json.loads((folder / "metadata.json").read_text(encoding="utf-8"))
    assert meta["labels"] == ["cats", "dogs"] and meta["imageSize"] == 224
    record = json.loads((folder / "retreino.json").read_text())["export"]
    assert record["format"] == "tfjs" and record["parity"]["passed"] and record["parity"]["image_kind"] == "real"
    again = load_model(folder)
    x = tm_pixels(parity_photos(4)).astype(np.float32) / 127.5 - 1
    np.testing.assert_array_equal(np.asarray(again.model(x)), np.asarray(trained.model(x)))
