"""Teachable Machine's TensorFlow.js download read by retreino, checked against the real @tensorflow/tfjs.

Import parity runs the same model.json + weights.bin through tfjs (npm, pure-JS CPU backend, in
Node) and through retreino's Keras 3 rebuild, on the same preprocessed pixels of 32 real photos.
Quantized and sharded variants are made from the real exports the way the TF.js converter writes
them; tfjs-core decodes their weights too, and both decodings must agree exactly.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from retreino import load_model
from retreino.cli import main
from retreino.models.tfjs import read_weights
from tfjs_helpers import TFJS_EXPORTS, parity_photos, tfjs_decode, tfjs_predict, tm_pixels

LEAVES, MASKS = TFJS_EXPORTS["leaves"], TFJS_EXPORTS["masks"]


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    """32 real photos, center-cropped to 224x224 and scaled to [-1, 1]: fed identically to both runtimes."""
    return tm_pixels(parity_photos(32)).astype(np.float32) / 127.5 - 1


@pytest.mark.slow
@pytest.mark.parametrize("name", ["leaves", "masks"])
def test_predictions_equal_tfjs_on_32_real_photos(name, pixels, tmp_path):
    loaded = load_model(TFJS_EXPORTS[name])
    keras_probs = np.asarray(loaded.model.predict(pixels, verbose=0))
    tfjs_probs = tfjs_predict(TFJS_EXPORTS[name] / "model.json", pixels, tmp_path)
    assert tfjs_probs.shape == keras_probs.shape == (32, 2)
    diff = float(np.abs(tfjs_probs - keras_probs).max())
    print(f"{name}: max |p_keras - p_tfjs| = {diff:.2e} on 32 photos")
    assert diff <= 1e-4
    assert (tfjs_probs.argmax(1) == keras_probs.argmax(1)).all()


def test_metadata_classes_and_contract():
    leaves, masks = load_model(LEAVES), load_model(MASKS / "model.json")
    assert leaves.class_names == ["diseased leaves", "healthy leaves"]
    assert masks.class_names == ["노마스크", "마스크"]  # UTF-8 labels from metadata.json
    for m in (leaves, masks):
        assert m.info.format == "teachable-machine-tfjs"
        assert m.info.input_size == (224, 224) and m.info.preprocessing == "tf" and m.info.head == "softmax"
        assert m.info.resize == "crop"  # TM's page center-crops: the contract travels with the model
    assert leaves.info.keras_version == "tfjs-layers 1.7.4"


def test_inspect_cli(capsys):
    assert main(["inspect", str(MASKS), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["format"] == "teachable-machine-tfjs" and s["classes"] == ["노마스크", "마스크"]
    assert s["input_shape"] == [224, 224, 3] and s["layers_flattened"] > 150


def _rewrite(src, dst, transform):
    """Copy a TF.js folder, re-encoding its weights with transform(specs, arrays) -> (groups, shard bytes)."""
    dst.mkdir()
    model = json.loads((src / "model.json").read_text(encoding="utf-8"))
    arrays = read_weights(src / "model.json", model["weightsManifest"])
    model["weightsManifest"], shards = transform(model["weightsManifest"][0]["weights"], arrays)
    for name, data in shards.items():
        (dst / name).write_bytes(data)
    (dst / "model.json").write_text(json.dumps(model), encoding="utf-8")
    shutil.copy(src / "metadata.json", dst / "metadata.json")
    return dst


def _quantize(dtype: str):
    """The TF.js converter's forms: affine uint8/uint16 (q * scale + min) or float16."""
    def transform(specs, arrays):
        out, blobs = [], []
        for spec, (_, value) in zip(specs, arrays):
            spec = dict(spec)
            if dtype == "float16":
                spec["quantization"] = {"dtype": "float16"}
                blobs.append(value.astype("<f2").tobytes())
            else:
                qmax = np.iinfo(dtype).max
                lo, hi = float(value.min()), float(value.max())
                scale = (hi - lo) / qmax if hi > lo else 1.0
                q = np.clip(np.round((value.astype(np.float64) - lo) / scale), 0, qmax)
                q = q.astype(np.dtype(dtype).newbyteorder("<"))
                spec["quantization"] = {"dtype": dtype, "scale": scale, "min": lo}
                blobs.append(q.tobytes())
            out.append(spec)
        return [{"paths": ["weights.bin"], "weights": out}], {"weights.bin": b"".join(blobs)}

    return transform


def _three_shards(specs, arrays):
    data = b"".join(np.asarray(v, "<f4").tobytes() for _, v in arrays)
    cut = [0, len(data) // 3, 2 * len(data) // 3 + 5, len(data)]  # cuts inside weights, as TF.js's 4 MB shards do
    names = [f"group1-shard{i + 1}of3.bin" for i in range(3)]
    return [{"paths": names, "weights": specs}], {n: data[cut[i]:cut[i + 1]] for i, n in enumerate(names)}


def test_several_shards_load_bit_for_bit(tmp_path, pixels):
    sharded = _rewrite(MASKS, tmp_path / "sharded", _three_shards)
    a, b = load_model(MASKS).model, load_model(sharded).model
    for wa, wb in zip(a.weights, b.weights):
        assert np.array_equal(np.asarray(wa), np.asarray(wb))


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_quantized_weights_decode_exactly_as_tfjs(dtype, tmp_path, pixels):
    folder = _rewrite(MASKS, tmp_path / dtype, _quantize(dtype))
    ours = dict(read_weights(folder / "model.json", json.loads((folder / "model.json").read_text())["weightsManifest"]))
    theirs = tfjs_decode(folder / "model.json", tmp_path)
    assert set(ours) == set(theirs) and len(ours) == 263
    for name, value in ours.items():
        assert np.array_equal(value.ravel(), theirs[name]), name  # bit for bit
    # and the quantized model still classifies like the float one
    base = np.asarray(load_model(MASKS).model.predict(pixels[:8], verbose=0))
    quant = np.asarray(load_model(folder).model.predict(pixels[:8], verbose=0))
    assert (base.argmax(1) == quant.argmax(1)).mean() >= 0.75
    assert np.abs(base - quant).max() < (0.5 if dtype == "uint8" else 0.05)


def test_float16_weights(tmp_path, pixels):
    """tfjs 1.3.1 (TM's pinned runtime) cannot read float16 at all; newer tfjs decodes IEEE half floats."""
    folder = _rewrite(MASKS, tmp_path / "f16", _quantize("float16"))
    loaded = load_model(folder)
    base = np.asarray(load_model(MASKS).model.predict(pixels[:8], verbose=0))
    half = np.asarray(loaded.model.predict(pixels[:8], verbose=0))
    assert np.abs(base - half).max() < 0.02
    kernel = loaded.model.get_layer("sequential_1").get_layer("model1").get_layer("Conv1").kernel
    ref = load_model(MASKS).model.get_layer("sequential_1").get_layer("model1").get_layer("Conv1").kernel
    assert np.array_equal(np.asarray(kernel), np.asarray(ref).astype(np.float16).astype(np.float32))


# ---- one clear line for each bad folder


def _cli_error(capsys, path) -> str:
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def _copy(tmp_path):
    dst = tmp_path / "tm"
    shutil.copytree(MASKS, dst)
    for f in dst.iterdir():
        f.chmod(0o644)
    return dst


def test_error_truncated_weights(capsys, tmp_path):
    folder = _copy(tmp_path)
    data = (folder / "weights.bin").read_bytes()
    (folder / "weights.bin").write_bytes(data[: len(data) // 2])
    assert "weights.bin is truncated" in _cli_error(capsys, folder)


def test_error_missing_shard(capsys, tmp_path):
    folder = _copy(tmp_path)
    (folder / "weights.bin").unlink()
    assert "weights.bin named by model.json is missing" in _cli_error(capsys, folder)


def test_error_shard_outside_the_folder(capsys, tmp_path):
    folder = _copy(tmp_path)
    model = json.loads((folder / "model.json").read_text())
    model["weightsManifest"][0]["paths"] = ["../../etc/passwd"]
    (folder / "model.json").write_text(json.dumps(model))
    assert "outside the model's folder" in _cli_error(capsys, folder)


def test_error_graph_model_and_bad_json(capsys, tmp_path):
    graph = tmp_path / "graph" / "model.json"
    graph.parent.mkdir()
    graph.write_text(json.dumps({"format": "graph-model", "modelTopology": None, "weightsManifest": []}))
    assert "graph model" in _cli_error(capsys, graph.parent)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert "is not valid JSON" in _cli_error(capsys, broken)


def test_error_labels_do_not_match_outputs(capsys, tmp_path):
    folder = _copy(tmp_path)
    (folder / "metadata.json").write_text(json.dumps({"labels": ["a", "b", "c"], "imageSize": 224}))
    assert "names 3 classes but the model outputs 2" in _cli_error(capsys, folder)
