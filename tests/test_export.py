"""Export: every format carries labels and scaling, matches Keras on real images, refuses what it cannot express."""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from conftest import WATER_BOTTLES, held_out_images, real_images
from retreino.errors import RetreinoError

FLOAT_FORMATS = ("keras", "h5", "tm", "savedmodel", "tflite", "onnx")


@pytest.fixture(scope="module")
def retrained(retrained_run):
    from retreino import load_model

    return load_model(retrained_run)


@pytest.fixture(scope="module")
def held_out_pixels(retrained):
    """The held-out photos fitted as the model's contract says (center crop for this TM-based model),
    as the export's own parity check reads them."""
    from retreino.data.images import read_image

    info = retrained.info
    return np.stack([read_image(p, (224, 224), info.resize, info.interpolation) for p in held_out_images()])


@pytest.fixture(scope="module")
def keras_probs(retrained, held_out_pixels):
    from retreino.inference import Predictor

    return Predictor(retrained, runtime="keras").predict_pixels(held_out_pixels)


def test_every_export_has_labels_metadata_and_its_model_file(retrained_exports, retrained_run):
    assert set(retrained_exports) == {"keras", "h5", "tm", "savedmodel", "tflite", "tflite-int8", "onnx", "tfjs"}
    for fmt, result in retrained_exports.items():
        assert result.folder == retrained_run / "exports" / fmt
        assert (result.folder / "labels.txt").read_text() == "0 cats\n1 dogs\n"
        meta = json.loads((result.folder / "retreino.json").read_text())
        assert meta["class_names"] == ["cats", "dogs"]
        assert meta["preprocessing"] == "tf" and meta["input_size"] == [224, 224] and meta["head"] == "softmax"
        assert meta["export"]["format"] == fmt
        assert meta["export"]["parity"]["images"] == 100 and meta["export"]["parity"]["image_kind"] == "real"
        assert result.file.exists()
    assert (retrained_exports["savedmodel"].folder / "saved_model.pb").is_file()


def test_float_exports_match_keras_within_1e4_on_100_real_images(retrained_exports, held_out_pixels, keras_probs):
    from retreino.inference import Predictor

    for fmt in FLOAT_FORMATS:
        record = retrained_exports[fmt].parity
        assert record["passed"] and record["max_abs_diff"] <= 1e-4, (fmt, record)
    # Recomputed here for the non-Keras runtimes, from the export folder alone (no Keras model).
    for fmt in ("savedmodel", "tflite", "onnx"):
        predictor = Predictor.from_export(retrained_exports[fmt].folder, unsafe=fmt == "savedmodel")
        probs = predictor.predict_pixels(held_out_pixels)
        assert probs.shape == (100, 2)
        assert np.abs(probs - keras_probs).max() <= 1e-4, fmt
        assert (probs.argmax(1) == keras_probs.argmax(1)).all(), fmt


def test_int8_export_agrees_on_top1_for_99_percent_of_100_real_images(retrained_exports, held_out_pixels, keras_probs):
    from retreino.inference import Predictor

    result = retrained_exports["tflite-int8"]
    probs = Predictor.from_export(result.folder).predict_pixels(held_out_pixels)
    agreement = float((probs.argmax(1) == keras_probs.argmax(1)).mean())
    print(f"\ntflite-int8 top-1 agreement with keras on 100 real images: {agreement:.0%} "
          f"(max |diff| {np.abs(probs - keras_probs).max():.3f})")
    assert agreement >= 0.99
    assert result.parity["top1_agreement"] == pytest.approx(agreement)
    # Quantized, not a float copy: the file is much smaller than the float one.
    assert result.file.stat().st_size < 0.5 * retrained_exports["tflite"].file.stat().st_size


def test_formats_embed_their_own_metadata(retrained_exports, tmp_path):
    import shutil

    import onnx

    from retreino.inference import Predictor

    props = {p.key: p.value for p in onnx.load(str(retrained_exports["onnx"].file)).metadata_props}
    assert json.loads(props["retreino"])["class_names"] == ["cats", "dogs"]
    assert props["labels"] == "0 cats\n1 dogs\n"
    with zipfile.ZipFile(retrained_exports["tflite"].file) as zf:
        assert json.loads(zf.read("retreino.json"))["preprocessing"] == "tf"
        assert zf.read("labels.txt") == b"0 cats\n1 dogs\n"
    # A lone file copied elsewhere, without retreino.json or labels.txt, still knows its classes.
    for fmt in ("onnx", "tflite"):
        lone = tmp_path / retrained_exports[fmt].file.name
        shutil.copy(retrained_exports[fmt].file, lone)
        p = Predictor.from_export(lone)
        assert p.class_names == ["cats", "dogs"] and p.info.preprocessing == "tf" and p.runtime == fmt


def test_tm_export_runs_in_teachable_machines_sample_code(retrained_exports, retrained):
    """Teachable Machine's Keras sample, verbatim in spirit: Keras 2, the `groups` patch, image/127.5 - 1."""
    import tf_keras
    from PIL import Image, ImageOps
    from tf_keras.layers import DepthwiseConv2D

    from retreino.inference import Predictor

    class CustomDepthwiseConv2D(DepthwiseConv2D):
        def __init__(self, **kwargs):
            kwargs.pop("groups", None)
            super().__init__(**kwargs)

    folder = retrained_exports["tm"].folder
    assert sorted(p.name for p in folder.iterdir()) == ["keras_model.h5", "labels.txt", "retreino.json"]
    model = tf_keras.models.load_model(
        str(folder / "keras_model.h5"), custom_objects={"DepthwiseConv2D": CustomDepthwiseConv2D}, compile=False
    )
    class_names = open(folder / "labels.txt").readlines()
    images = real_images("test", "cats", 6) + real_images("test", "dogs", 6)
    arrays = [np.asarray(ImageOps.fit(Image.open(p).convert("RGB"), (224, 224), Image.Resampling.LANCZOS)) for p in images]
    data = np.stack(arrays).astype(np.float32) / 127.5 - 1
    prediction = model.predict(data, verbose=0)

    ours = Predictor(retrained, runtime="keras").predict_pixels(np.stack(arrays))
    np.testing.assert_allclose(prediction, ours, atol=1e-5)
    assert (prediction.argmax(1) == ours.argmax(1)).all()
    names = [class_names[i][2:].strip() for i in prediction.argmax(1)]
    assert names == [retrained.class_names[i] for i in ours.argmax(1)]


def test_tm_export_loads_back_into_retreino_identically(retrained_exports, retrained, held_out_pixels):
    from retreino import load_model

    back = load_model(retrained_exports["tm"].folder)
    assert back.class_names == ["cats", "dogs"]
    assert back.info.preprocessing == "tf" and back.info.head == "softmax"
    x = held_out_pixels[:16].astype(np.float32) / 127.5 - 1
    np.testing.assert_array_equal(np.asarray(back.model(x)), np.asarray(retrained.model(x)))


def test_keras2_h5_writer_covers_common_layers_for_tf_keras(tmp_path):
    """A small model built from many supported layer types reads back in Keras 2 with the same outputs."""
    import keras
    import tf_keras

    from retreino import load_model
    from retreino.export import export_model
    from retreino.models import LoadedModel, ModelInfo

    keras.utils.set_random_seed(3)
    L = keras.layers
    inp = keras.Input((32, 32, 3))
    x = L.Rescaling(1 / 127.5, offset=-1)(inp)
    x = L.ZeroPadding2D(1)(x)
    a = L.Conv2D(8, 3, activation="relu")(x)
    b = L.SeparableConv2D(8, 3)(x)
    b = L.BatchNormalization()(b)
    b = L.LeakyReLU(negative_slope=0.2)(b)
    x = L.Add()([a, b])
    x = L.Concatenate()([L.MaxPooling2D(2)(x), L.AveragePooling2D(2)(x)])
    x = L.DepthwiseConv2D(3, padding="same")(x)
    x = L.ReLU(max_value=6.0)(x)
    g = L.GlobalAveragePooling2D()(x)
    f = L.Dense(6, activation="elu")(L.Flatten()(L.GlobalMaxPooling2D(keepdims=True)(x)))
    x = L.Dropout(0.3)(L.Concatenate()([g, f]))
    out = L.Softmax()(L.Dense(3)(x))
    model = keras.Model(inp, out)
    # Give BatchNormalization non-trivial statistics so a swapped weight order would show.
    bn = next(layer for layer in model.layers if isinstance(layer, L.BatchNormalization))
    bn.moving_mean.assign(np.linspace(-1, 1, 8).astype("float32"))
    bn.moving_variance.assign(np.linspace(0.5, 2, 8).astype("float32"))
    info = ModelInfo(format="keras", source="mini", input_size=(32, 32), preprocessing="raw", head="softmax",
                     class_names=["a", "b", "c"])
    result = export_model(LoadedModel(model, info), "h5", tmp_path / "h5", measure=False)
    assert result.passed

    x = np.random.RandomState(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    ref = np.asarray(model(x))
    k2 = tf_keras.models.load_model(str(result.file), compile=False)
    np.testing.assert_allclose(k2.predict(x, verbose=0), ref, atol=1e-5)
    back = load_model(result.file)
    assert back.info.preprocessing == "raw" and back.class_names == ["a", "b", "c"]
    np.testing.assert_allclose(np.asarray(back.model(x)), ref, atol=1e-6)


def _with_lambda():
    import keras

    inp = keras.Input((224, 224, 3))
    x = keras.layers.Conv2D(4, 3, strides=4, name="stem")(inp)
    x = keras.layers.Lambda(lambda t: t * 2.0, name="double_it")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(2, activation="softmax")(x))


@pytest.mark.parametrize("fmt", ["tm", "h5"])
def test_layer_the_format_cannot_express_is_named(fmt, tmp_path):
    from retreino.export import ExportError, export_model
    from retreino.models import LoadedModel, ModelInfo

    info = ModelInfo(format="keras", source="x", input_size=(224, 224), preprocessing="tf", head="softmax",
                     class_names=["a", "b"])
    with pytest.raises(ExportError) as err:
        export_model(LoadedModel(_with_lambda(), info), fmt, tmp_path / fmt, measure=False)
    message = str(err.value)
    assert "'double_it'" in message and "Lambda" in message and f"the {fmt} format" in message
    assert "\n" not in message
    assert not (tmp_path / fmt).exists()  # refused before anything was written


def test_cli_export_error_is_one_line(tmp_path, capsys):
    from retreino.cli import main
    from retreino.models import LoadedModel, ModelInfo, save_model

    info = ModelInfo(format="keras", source="x", input_size=(224, 224), preprocessing="tf", head="softmax",
                     class_names=["a", "b"])
    save_model(LoadedModel(_with_lambda(), info), tmp_path / "model.keras")
    rc = main(["export", str(tmp_path / "model.keras"), "--unsafe", "--format", "tm", "--out", str(tmp_path / "tm")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("retreino export: error: layer 'double_it' (Lambda) cannot be expressed in the tm format")
    assert "Traceback" not in "\n".join(err)


def test_tm_contract_is_enforced_with_advice(water_bottles):
    import copy

    from retreino.export import ExportError, check_tm_contract
    from retreino.models import LoadedModel

    check_tm_contract(water_bottles)  # the real TM model passes its own contract
    unit = LoadedModel(water_bottles.model, copy.deepcopy(water_bottles.info))
    unit.info.preprocessing = "unit"
    with pytest.raises(ExportError, match=r"\[-1, 1\].*\[0, 1\]"):
        check_tm_contract(unit)
    logits = LoadedModel(water_bottles.model, copy.deepcopy(water_bottles.info))
    logits.info.head = "logits"
    with pytest.raises(ExportError, match="softmax output.*Retrain with a softmax head"):
        check_tm_contract(logits)


def test_tm_refuses_an_input_size_other_than_224(tmp_path):
    import keras

    from retreino.export import ExportError, export_model
    from retreino.models import LoadedModel, ModelInfo

    inp = keras.Input((160, 160, 3))
    out = keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(inp))
    info = ModelInfo(format="keras", source="x", input_size=(160, 160), preprocessing="tf", head="softmax",
                     class_names=["a", "b"])
    with pytest.raises(ExportError, match=r"224x224x3 input.*\(160, 160, 3\)"):
        export_model(LoadedModel(keras.Model(inp, out), info), "tm", tmp_path / "tm", measure=False)


def test_int8_without_images_asks_for_them(water_bottles, tmp_path):
    from retreino.export import export_model

    with pytest.raises(RetreinoError, match="calibrates its quantization on real images"):
        export_model(water_bottles, "tflite-int8", tmp_path / "q")


def test_cli_exports_the_real_teachable_machine_model(tmp_path, capsys):
    from retreino.cli import main

    images = tmp_path / "images"
    images.mkdir()
    for p in real_images("test", "dogs", 10):
        (images / p.name).write_bytes(p.read_bytes())
    rc = main(["export", str(WATER_BOTTLES), "--format", "h5", "--out", str(tmp_path / "h5"),
               "--images", str(images), "--no-timing"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "model.h5" in out and "on 10 real" in out and "ok" in out
    meta = json.loads((tmp_path / "h5" / "retreino.json").read_text())
    assert meta["class_names"] == ["5 Galoon", "500ML"] and meta["export"]["parity"]["passed"]


def test_keras2_h5_writer_covers_the_rest_of_its_supported_layers(tmp_path):
    import keras
    import tf_keras

    from retreino.export.keras2_h5 import SUPPORTED, write_keras2_h5

    keras.utils.set_random_seed(5)
    L = keras.layers
    inp = keras.Input((16, 16, 3))
    c = L.Conv2D(4, 3, padding="same")(inp)
    c2 = L.Conv2D(4, 1)(inp)
    maps = [
        L.Conv2DTranspose(3, 3, strides=2)(c), L.LayerNormalization()(c), L.ELU()(c), L.PReLU()(c),
        L.GaussianNoise(0.1)(c), L.GaussianDropout(0.1)(c), L.SpatialDropout2D(0.1)(c), L.Cropping2D(2)(c),
        L.UpSampling2D(2)(c), L.Activation("tanh")(c), L.Subtract()([c, c2]), L.Multiply()([c, c2]),
        L.Average()([c, c2]), L.Maximum()([c, c2]), L.Minimum()([c, c2]),
    ]
    vectors = [L.GlobalAveragePooling2D()(m) for m in maps]
    vectors.append(L.Flatten()(L.Conv1D(2, 3)(L.Reshape((256, 4))(c))))
    vectors.append(L.Flatten()(L.Permute((3, 1, 2))(c)))
    model = keras.Model(inp, L.Dense(3, activation="softmax")(L.Concatenate()(vectors)))
    used = {layer.__class__.__name__ for layer in model.layers}
    assert used >= SUPPORTED - {"BatchNormalization", "DepthwiseConv2D", "SeparableConv2D", "LeakyReLU", "ReLU",
                                "Softmax", "Dropout", "MaxPooling2D", "AveragePooling2D", "GlobalMaxPooling2D",
                                "ZeroPadding2D", "Add", "Rescaling"}

    write_keras2_h5(model, tmp_path / "m.h5")
    x = np.random.RandomState(1).uniform(-1, 1, (2, 16, 16, 3)).astype("float32")
    k2 = tf_keras.models.load_model(str(tmp_path / "m.h5"), compile=False)
    np.testing.assert_allclose(k2.predict(x, verbose=0), np.asarray(model(x)), atol=1e-5)


def test_cli_and_api_agree_on_the_formats():
    from retreino.cli.export import FORMATS as CLI_FORMATS
    from retreino.cli.export import parse_formats
    from retreino.export import FORMATS

    assert CLI_FORMATS == FORMATS
    assert parse_formats("all") == list(FORMATS)
    assert parse_formats("ONNX, tflite") == ["onnx", "tflite"]
    with pytest.raises(RetreinoError, match="unknown export format 'tensorrt'"):
        parse_formats("onnx,tensorrt")
