"""Loading every kind of model: Teachable Machine, legacy Keras 2 H5, .keras, backbones."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import IMAGENET_MOBILENET_V2, SHINCHAN, WATER_BOTTLES, real_images
from retreino import load_model, save_model
from retreino.cli import main
from retreino.data.images import read_image
from retreino.errors import ModelLoadError, UnsafeModelError


def _tm_batch() -> np.ndarray:
    files = real_images("test", "cats", 6) + real_images("test", "dogs", 6)
    pixels = np.stack([read_image(f, (224, 224)) for f in files]).astype(np.float32)
    return pixels / 127.5 - 1.0


def _keras2():
    """Keras 2 (tf_keras) with the `groups` patch Teachable Machine's users are told to apply."""
    import tf_keras  # test-only reference, installed by `make test` (see Makefile)

    class DepthwiseConv2D(tf_keras.layers.DepthwiseConv2D):
        def __init__(self, *args, groups=None, **kwargs):
            super().__init__(*args, **kwargs)

    return tf_keras, {"DepthwiseConv2D": DepthwiseConv2D}


@pytest.mark.parametrize("export", [WATER_BOTTLES, SHINCHAN], ids=lambda p: p.name)
def test_teachable_machine_matches_keras2(export):
    tf_keras, custom = _keras2()
    x = _tm_batch()
    reference = tf_keras.models.load_model(export / "keras_model.h5", custom_objects=custom, compile=False)
    expected = reference.predict(x, verbose=0)
    loaded = load_model(export)
    got = np.asarray(loaded.model(x, training=False))
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-5
    # the model is a native Keras 3 model: no tf_keras objects inside
    assert type(loaded.model).__module__.startswith("keras")


def test_teachable_machine_metadata(water_bottles):
    info = water_bottles.info
    assert info.format == "teachable-machine"
    assert info.class_names == ["5 Galoon", "500ML"]
    assert info.preprocessing == "tf" and "[-1, 1]" in info.value_range
    assert info.head == "softmax"
    assert info.input_size == (224, 224)
    # the file directly (not the folder) gives the same
    assert load_model(WATER_BOTTLES / "keras_model.h5").info.class_names == info.class_names
    assert load_model(SHINCHAN).info.class_names == ["Shinchan", "Lightbulb", "Nothing"]


def test_inspect_json(capsys):
    assert main(["inspect", str(WATER_BOTTLES), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["format"] == "teachable-machine"
    assert s["input_shape"] == [224, 224, 3]
    assert s["classes"] == ["5 Galoon", "500ML"]
    assert s["head"] == "softmax" and s["output_units"] == 2
    # flattened: MobileNetV2 (alpha 0.35) layers + pooling + 2 Dense; the top level has just 2
    assert s["layers_top_level"] == 2 and s["layers_flattened"] > 150
    assert 0 < s["params_trainable"] <= s["params_total"]


def test_inspect_text(capsys):
    assert main(["inspect", str(SHINCHAN)]) == 0
    out = capsys.readouterr().out
    for word in ("Teachable Machine", "224 x 224 x 3", "[-1, 1]", "Shinchan, Lightbulb, Nothing", "softmax, 3 units", "trainable"):
        assert word in out


def test_keras2_functional_with_nested_models(tmp_path):
    """A non-TM Keras 2 model: branches, shared input, a nested Sequential and Functional."""
    tf_keras, _ = _keras2()
    L = tf_keras.layers
    inner_seq = tf_keras.Sequential([L.Dense(8, activation="relu", input_shape=(16,)), L.Dense(8)], name="inner_seq")
    i2 = tf_keras.Input((8, 8, 4))
    inner_fn = tf_keras.Model(i2, L.Conv2D(4, 3, padding="same")(i2), name="inner_fn")
    inp = tf_keras.Input((8, 8, 3))
    a = L.Conv2D(4, 3, padding="same", activation="relu")(inp)
    b = L.DepthwiseConv2D(3, padding="same")(a)
    c = L.BatchNormalization()(inner_fn(b))
    d = L.Concatenate()([L.Add()([a, c]), b])
    e = L.GlobalAveragePooling2D()(d)
    f = inner_seq(L.Dense(16)(e))
    out = L.Dense(3, activation="softmax")(L.Dropout(0.1)(f))
    k2 = tf_keras.Model(inp, out)
    path = tmp_path / "functional.h5"
    k2.save(path)
    x = np.random.default_rng(0).uniform(0, 1, (4, 8, 8, 3)).astype("float32")
    loaded = load_model(path)
    assert loaded.info.format == "keras2-h5"
    assert loaded.info.head == "softmax"
    assert loaded.info.preprocessing == "unit" and loaded.info.notes  # assumed, and said so
    np.testing.assert_allclose(np.asarray(loaded.model(x)), k2.predict(x, verbose=0), atol=1e-5)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_round_trip_keeps_predictions_labels_and_range(water_bottles, tmp_path, suffix):
    x = _tm_batch()[:4]
    before = np.asarray(water_bottles.model(x, training=False))
    path = tmp_path / f"model{suffix}"
    save_model(water_bottles, path)
    again = load_model(path)
    np.testing.assert_array_equal(np.asarray(again.model(x, training=False)), before)
    assert again.info.class_names == water_bottles.info.class_names
    assert again.info.preprocessing == "tf"
    assert (tmp_path / "labels.txt").read_text() == "0 5 Galoon\n1 500ML\n"
    # metadata is embedded: it survives without labels.txt beside the file
    (tmp_path / "labels.txt").unlink()
    assert load_model(path).info.class_names == ["5 Galoon", "500ML"]


def test_backbone_with_local_weights_both_layouts(tmp_path):
    """mobilenet_v2 offline from the Keras 3 weights file and from the legacy layout Keras downloads."""
    tf_keras, _ = _keras2()
    new = load_model("mobilenet_v2", weights=IMAGENET_MOBILENET_V2)
    assert new.info.format == "keras-applications" and new.info.head == "features"
    assert new.info.preprocessing == "tf" and new.info.input_size == (224, 224)
    # Write the same weights in Keras 2's layout (what keras.applications downloads).
    legacy = tf_keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(224, 224, 3), pooling="avg")
    legacy.set_weights(new.model.get_weights())
    legacy_file = tmp_path / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
    legacy.save_weights(legacy_file)
    old = load_model("mobilenet_v2", weights=legacy_file)
    x = _tm_batch()[:2]
    a, b = np.asarray(new.model(x)), np.asarray(old.model(x))
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert a.std() > 0.01  # real features, not an untrained network's near-constant output


def test_backbone_cli_offline(capsys):
    assert main(["inspect", "mobilenet_v2", "--weights", str(IMAGENET_MOBILENET_V2), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["format"] == "keras-applications" and s["head"] == "features"


def test_backbone_offline_without_weights_says_how(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setenv("RETREINO_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="--weights PATH"):
        load_model("mobilenet_v2")
    assert main(["inspect", "mobilenet_v2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--weights" in err


def _cli_error(capsys, path) -> str:
    assert main(["inspect", str(path)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1, err  # one line, no traceback
    assert "Traceback" not in err
    return err


def test_error_missing_file(capsys, tmp_path):
    assert "no such model file" in _cli_error(capsys, tmp_path / "nope.h5")


def test_error_not_hdf5(capsys, tmp_path):
    bad = tmp_path / "model.h5"
    bad.write_text("this is not a model\n")
    assert "not a Keras model" in _cli_error(capsys, bad)


def test_error_truncated(capsys, tmp_path):
    data = (WATER_BOTTLES / "keras_model.h5").read_bytes()
    bad = tmp_path / "keras_model.h5"
    bad.write_bytes(data[: len(data) // 2])
    assert "truncated or corrupt" in _cli_error(capsys, bad)


def test_error_truncated_keras_archive(capsys, water_bottles, tmp_path):
    good = tmp_path / "m.keras"
    save_model(water_bottles, good)
    bad = tmp_path / "bad.keras"
    bad.write_bytes(good.read_bytes()[:50_000])
    assert "truncated or corrupt" in _cli_error(capsys, bad)


def test_error_weights_only(capsys, tmp_path):
    copy = tmp_path / "weights.h5"
    shutil.copy(IMAGENET_MOBILENET_V2, copy)
    assert "weights" in _cli_error(capsys, copy)
    with pytest.raises(ModelLoadError, match="--weights"):
        load_model(copy)


def test_error_empty_file(capsys, tmp_path):
    empty = tmp_path / "empty.keras"
    empty.write_bytes(b"")
    assert "empty" in _cli_error(capsys, empty)


def _lambda_model():
    import keras

    inp = keras.Input((4,))
    out = keras.layers.Dense(2, activation="softmax")(keras.layers.Lambda(lambda t: t * 2.0)(inp))
    return keras.Model(inp, out)


def test_error_lambda_keras3(capsys, tmp_path):
    path = tmp_path / "lambda.keras"
    _lambda_model().save(path)
    with pytest.raises(UnsafeModelError):
        load_model(path)
    assert "--unsafe" in _cli_error(capsys, path)


def test_error_lambda_keras2_h5(capsys, tmp_path):
    tf_keras, _ = _keras2()
    inp = tf_keras.Input((8, 8, 3))
    x = tf_keras.layers.Lambda(lambda t: t * 2.0)(inp)
    out = tf_keras.layers.Dense(2, activation="softmax")(tf_keras.layers.GlobalAveragePooling2D()(x))
    path = tmp_path / "lambda.h5"
    tf_keras.Model(inp, out).save(path)
    with pytest.raises(UnsafeModelError, match="Lambda"):
        load_model(path)
    assert "--unsafe" in _cli_error(capsys, path)


def test_unknown_custom_layer_is_named(tmp_path):
    """A Keras 2 file with a layer class Keras 3 does not have: refused, naming the layer."""
    import h5py

    src = WATER_BOTTLES / "keras_model.h5"
    dst = tmp_path / "custom.h5"
    shutil.copy(src, dst)
    with h5py.File(dst, "a") as f:
        cfg = f.attrs["model_config"]
        cfg = cfg.decode() if isinstance(cfg, bytes) else cfg
        f.attrs["model_config"] = cfg.replace('"class_name": "ReLU", "config": {"name": "Conv1_relu"', '"class_name": "MyFancyReLU", "config": {"name": "Conv1_relu"', 1)
    with pytest.raises(ModelLoadError, match="Conv1_relu"):
        load_model(dst)
