"""Runtimes: exports open without the Keras model, and runtime="auto" only trusts checked, current, faster exports."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import held_out_images
from retreino.errors import RetreinoError


@pytest.fixture()
def run_copy(retrained_run, retrained_exports, tmp_path):
    """A private copy of the exported run whose export records a test may edit."""
    dst = tmp_path / "run"
    shutil.copytree(retrained_run, dst)
    return dst


def _edit(run, fmt, **changes):
    path = run / "exports" / fmt / "retreino.json"
    meta = json.loads(path.read_text())
    for key, value in changes.items():
        if key == "passed":
            meta["export"]["parity"]["passed"] = value
        else:
            meta["export"][key] = value
    path.write_text(json.dumps(meta))


def _set_latencies(run, keras_ms, **by_format):
    for fmt in ("keras", "h5", "tm", "savedmodel", "tflite", "tflite-int8", "onnx"):
        _edit(run, fmt, latency_ms=by_format.get(fmt.replace("-", "_"), 50.0), keras_latency_ms=keras_ms)


@pytest.fixture(scope="module")
def pixels():
    from retreino.data.images import read_image

    return np.stack([read_image(p, (224, 224)) for p in held_out_images(2)])


def test_auto_uses_the_fastest_export_that_passed(run_copy):
    from retreino import load_model
    from retreino.inference import Predictor

    loaded = load_model(run_copy)
    _set_latencies(run_copy, keras_ms=10.0, onnx=1.0, tflite=2.0, tflite_int8=3.0, savedmodel=4.0)
    assert Predictor(loaded).runtime == "onnx"
    _edit(run_copy, "onnx", passed=False)  # a failed parity check is never used
    assert Predictor(loaded).runtime == "tflite"
    _set_latencies(run_copy, keras_ms=1.0, onnx=1.0, tflite=2.0, tflite_int8=3.0)  # none beats Keras
    assert Predictor(loaded).runtime == "keras"


def test_auto_ignores_exports_of_an_older_model(run_copy):
    from retreino import load_model
    from retreino.inference import Predictor

    _set_latencies(run_copy, keras_ms=10.0, onnx=1.0)
    loaded = load_model(run_copy)
    assert Predictor(loaded).runtime == "onnx"
    # Retrained since: the model file changes, its exports no longer describe it.
    loaded.model.layers[-1].kernel.assign(loaded.model.layers[-1].kernel.numpy() * 2)
    from retreino import save_model

    save_model(loaded, run_copy / "fine_tuned_model.keras")
    assert Predictor(load_model(run_copy)).runtime == "keras"
    with pytest.raises(RetreinoError, match="no onnx export of this model"):
        Predictor(load_model(run_copy), runtime="onnx")


def test_auto_on_real_measurements_is_consistent_with_the_records(retrained_run, retrained_exports, pixels):
    from retreino import load_model
    from retreino.inference import Predictor
    from retreino.runtimes import best_export

    loaded = load_model(retrained_run)
    best = best_export(loaded.info.source)
    p = Predictor(loaded)
    assert p.runtime == (best.runtime if best else "keras")
    ref = Predictor(loaded, runtime="keras").predict_pixels(pixels)
    assert (p.predict_pixels(pixels).argmax(1) == ref.argmax(1)).all()


@pytest.mark.parametrize("runtime", ["keras", "onnx", "tflite", "tflite-int8", "savedmodel"])
def test_runtime_override(runtime, retrained_run, retrained_exports, pixels):
    from retreino import load_model
    from retreino.inference import Predictor

    loaded = load_model(retrained_run, unsafe=runtime == "savedmodel")  # a SavedModel is a program: --unsafe
    p = Predictor(loaded, runtime=runtime)
    assert p.runtime == runtime and p.class_names == ["cats", "dogs"]
    probs = p.predict_pixels(pixels)
    ref = Predictor(loaded, runtime="keras").predict_pixels(pixels)
    assert probs.shape == (4, 2)
    if runtime == "tflite-int8":  # an int8 softmax moves in steps of 1/256
        np.testing.assert_allclose(probs.sum(1), 1, atol=2 / 256)
    else:
        np.testing.assert_allclose(probs, ref, atol=1e-4)


def test_named_runtime_without_an_export_says_how_to_make_one(water_bottles):
    from retreino.inference import Predictor

    assert Predictor(water_bottles).runtime == "keras"  # no exports: Keras, silently correct
    with pytest.raises(RetreinoError, match=r"no tflite export .* `retreino export .* --format tflite` first"):
        Predictor(water_bottles, runtime="tflite")
    with pytest.raises(RetreinoError, match="unknown runtime 'tensorrt'"):
        Predictor(water_bottles, runtime="tensorrt")


def test_an_export_opens_by_path_with_its_labels_and_scaling(retrained_exports, pixels):
    from retreino.inference import Predictor
    from retreino.runtimes import load_runtime

    for fmt in ("onnx", "tflite", "tflite-int8", "savedmodel", "tm"):
        runtime = load_runtime(retrained_exports[fmt].folder, unsafe=fmt == "savedmodel")  # a program: --unsafe
        assert runtime.info.class_names == ["cats", "dogs"]
        assert runtime.info.preprocessing == "tf" and runtime.info.input_size == (224, 224)
    p = Predictor(str(retrained_exports["onnx"].file))
    assert p.runtime == "onnx"
    assert p.predict_images(held_out_images(2)).shape == (4, 2)


def test_tflite_batches_of_any_size_give_the_same_answers(retrained_exports, pixels):
    from retreino.preprocessing import scale_pixels_np
    from retreino.runtimes import load_runtime

    runtime = load_runtime(retrained_exports["tflite"].folder)
    x = scale_pixels_np(pixels, "tf")
    whole = runtime(x)
    parts = np.concatenate([runtime(x[:1]), runtime(x[1:4])])
    np.testing.assert_allclose(parts, whole, atol=1e-6)
    np.testing.assert_allclose(runtime(x[2:3]), whole[2:3], atol=1e-6)


def test_a_file_without_metadata_is_refused_not_guessed(retrained_exports, tmp_path):
    import onnx

    from retreino.runtimes import load_runtime

    model = onnx.load(str(retrained_exports["onnx"].file))
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    with pytest.raises(RetreinoError, match="carries no retreino metadata.*Re-export"):
        load_runtime(bare)


def test_tflite_runtime_is_safe_under_concurrent_calls(retrained_exports, pixels):
    """serve calls one Predictor from several threads; one LiteRT interpreter must not interleave them."""
    from concurrent.futures import ThreadPoolExecutor

    from retreino.preprocessing import scale_pixels_np
    from retreino.runtimes import load_runtime

    runtime = load_runtime(retrained_exports["tflite"].folder)
    x = scale_pixels_np(pixels, "tf")
    expected = {n: runtime(x[:n]) for n in (1, 2, 3, 4)}
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda n: (n, runtime(x[:n])), [1, 2, 3, 4] * 6))
    for n, out in results:
        np.testing.assert_allclose(out, expected[n], atol=1e-6)
