"""Hostile inputs: every file here is a real attack made by the test; none may run code, read an outside
file, or hang. Each asserts: no marker file written, no outside byte in any output, a one-line error
naming the file and the reason (see docs/security.md)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import WATER_BOTTLES, real_images
from retreino.errors import ModelLoadError, UnsafeModelError

SECRET = b"TOP-SECRET-LINE-0123456789abcdef\n" * 64


@pytest.fixture()
def secret(tmp_path) -> Path:
    """A local file an attacker wants to read: its bytes must never reach an output."""
    p = tmp_path / "outside" / "secret.txt"
    p.parent.mkdir()
    p.write_bytes(SECRET)
    return p


def _archive_members(path: Path) -> dict[str, bytes]:
    """The members of a .keras archive (a zip), by name."""
    with zipfile.ZipFile(path) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def _write_archive(path: Path, members: dict[str, bytes]) -> Path:
    """A .keras archive holding `members`: a real file altered as an attacker would."""
    with zipfile.ZipFile(path, "w") as zf:
        for n, data in members.items():
            zf.writestr(n, data)
    return path


def _one_line(exc: Exception, *must: str) -> str:
    msg = str(exc)
    assert "\n" not in msg, msg
    assert "TOP-SECRET" not in msg, msg
    for m in must:
        assert m in msg, msg
    return msg


# --------------------------------------------------------------------------- a small real model folder


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A real 2-class Keras model (32x32 input) saved by retreino: the folder an attacker plants exports in."""
    import keras

    from retreino import save_model
    from retreino.models import LoadedModel
    from retreino.models.info import ModelInfo

    keras.utils.set_random_seed(1)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="head")(x))
    info = ModelInfo(format="keras", source="", input_size=(32, 32), preprocessing="unit", head="softmax",
                     class_names=["cats", "dogs"])
    folder = tmp_path_factory.mktemp("tiny_model")
    save_model(LoadedModel(model, info), folder / "fine_tuned_model.keras")
    return folder


def _plant(model_dir: Path, fmt: str, file: str) -> Path:
    """An export folder whose record claims everything `auto` looks for: current, checked, fastest."""
    from retreino.runtimes import model_fingerprint

    folder = model_dir / "exports" / fmt
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"format": "keras", "source": "x", "input_size": [32, 32], "preprocessing": "unit", "head": "softmax",
            "class_names": ["cats", "dogs"],
            "export": {"format": fmt, "file": file, "parity": {"passed": True}, "latency_ms": 0.01,
                       "keras_latency_ms": 100.0,
                       "source_sha256": model_fingerprint(model_dir / "fine_tuned_model.keras")}}
    (folder / "retreino.json").write_text(json.dumps(meta))
    return folder


def _file_writing_savedmodel(folder: Path, marker: Path) -> None:
    """A real TF SavedModel whose serving signature writes `marker` (tf.io.write_file) then answers."""
    import tensorflow as tf

    class Evil(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.float32)])
        def serve(self, x):
            tf.io.write_file(str(marker), "pwned")
            n = tf.shape(x)[0]
            return {"output_0": tf.tile([[0.5, 0.5]], [n, 1])}

    evil = Evil()
    tf.saved_model.save(evil, str(folder), signatures={"serving_default": evil.serve})


def test_auto_never_opens_a_planted_savedmodel_and_naming_it_needs_unsafe(tiny_model_dir, tmp_path):
    from retreino import load_model
    from retreino.inference import Predictor

    run = tmp_path / "model"
    shutil.copytree(tiny_model_dir, run)
    marker = tmp_path / "marker.txt"
    _file_writing_savedmodel(_plant(run, "savedmodel", "."), marker)
    pixels = np.zeros((1, 32, 32, 3), np.uint8)

    p = Predictor(load_model(run))  # auto: the record says fastest and checked; still never chosen
    assert p.runtime == "keras"
    p.predict_pixels(pixels)
    with pytest.raises(UnsafeModelError) as err:
        Predictor(load_model(run), runtime="savedmodel")
    _one_line(err.value, str(run / "exports" / "savedmodel"), "SavedModel", "--unsafe")
    with pytest.raises(UnsafeModelError):
        Predictor(str(run / "exports" / "savedmodel"))  # the export folder named as the model: still refused
    assert not marker.exists()

    # Named and --unsafe: the user said they trust the folder, and the graph really runs.
    trusted = Predictor(load_model(run, unsafe=True), runtime="savedmodel")
    trusted.predict_pixels(pixels)
    assert marker.exists()


@pytest.mark.slow
def test_the_cli_refuses_a_planted_savedmodel_in_one_line(tiny_model_dir, tmp_path):
    run = tmp_path / "model"
    shutil.copytree(tiny_model_dir, run)
    marker = tmp_path / "marker.txt"
    _file_writing_savedmodel(_plant(run, "savedmodel", "."), marker)
    image = real_images(n=1)[0]
    cmd = [sys.executable, "-m", "retreino", "predict", str(run), str(image), "--runtime", "savedmodel"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("retreino predict: error:")]
    assert len(lines) == 1 and "SavedModel" in lines[0] and "Traceback" not in r.stderr, r.stderr
    r = subprocess.run(cmd[:-2], capture_output=True, text=True, timeout=300)  # auto
    assert r.returncode == 0, r.stderr
    assert not marker.exists()


def _onnx_with_custom_op(path: Path, domain: str = "com.example.io") -> None:
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("WriteFile", ["x"], ["y"], domain=domain, name="exfiltrate", path="/tmp/x")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 32, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(domain, 1)])
    onnx.save(model, str(path))


def _onnx_with_external_data(path: Path, secret: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.FLOAT, [2], [0.0, 0.0])
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    for k, v in (("location", os.path.relpath(secret, path.parent)), ("offset", "0"), ("length", "8")):
        entry = weight.external_data.add()
        entry.key, entry.value = k, v
    node = helper.make_node("Add", ["x", "w"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], initializer=[weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


def test_onnx_with_a_custom_domain_operator_is_refused_when_opened(tiny_model_dir, tmp_path):
    from retreino import load_model
    from retreino.inference import Predictor

    run = tmp_path / "model"
    shutil.copytree(tiny_model_dir, run)
    folder = _plant(run, "onnx", "model.onnx")
    _onnx_with_custom_op(folder / "model.onnx")
    for make in (lambda: Predictor(load_model(run)), lambda: Predictor(load_model(run), runtime="onnx"),
                 lambda: Predictor(str(folder / "model.onnx"))):
        with pytest.raises(UnsafeModelError) as err:
            make()
        _one_line(err.value, "model.onnx", "com.example.io:WriteFile", "default ONNX domain")


def test_onnx_reading_its_weights_from_another_file_is_refused(tmp_path, secret):
    from retreino.safety import check_onnx

    path = tmp_path / "model.onnx"
    _onnx_with_external_data(path, secret)
    with pytest.raises(UnsafeModelError) as err:
        check_onnx(path)
    _one_line(err.value, "model.onnx", "tensor 'w'", "secret.txt")


def test_an_export_record_pointing_outside_its_folder_is_refused(tiny_model_dir, tmp_path):
    from retreino import load_model
    from retreino.inference import Predictor

    run = tmp_path / "model"
    shutil.copytree(tiny_model_dir, run)
    elsewhere = tmp_path / "elsewhere.onnx"
    _onnx_with_custom_op(elsewhere, domain="")  # harmless ops, but outside the export folder
    _plant(run, "onnx", "../../../elsewhere.onnx")
    with pytest.raises(UnsafeModelError) as err:
        Predictor(load_model(run), runtime="onnx")
    _one_line(err.value, "outside the export folder")


@pytest.mark.slow
def test_tflite_with_a_flex_file_writing_op_is_refused(tiny_model_dir, tmp_path):
    import tensorflow as tf

    from retreino import load_model
    from retreino.inference import Predictor

    marker = tmp_path / "marker.txt"

    @tf.function(input_signature=[tf.TensorSpec([1, 32, 32, 3], tf.float32)])
    def evil(x):
        tf.io.write_file(str(marker), tf.strings.as_string(tf.reduce_sum(x)))
        return tf.nn.softmax(tf.reduce_mean(x, axis=[1, 2])[:, :2])

    converter = tf.lite.TFLiteConverter.from_concrete_functions([evil.get_concrete_function()], evil)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    run = tmp_path / "model"
    shutil.copytree(tiny_model_dir, run)
    folder = _plant(run, "tflite", "model.tflite")
    (folder / "model.tflite").write_bytes(converter.convert())
    with pytest.raises(UnsafeModelError) as err:
        Predictor(load_model(run))
    _one_line(err.value, "model.tflite", "custom operator(s)", "'FlexWriteFile'")
    assert not marker.exists()


def test_real_tflite_and_onnx_exports_pass_the_checks(tiny_model_dir, tmp_path):
    """The checks must not refuse what `retreino export` makes (parity opens each export through them)."""
    from retreino import load_model
    from retreino.export import export_models

    results = export_models(load_model(tiny_model_dir), ("onnx", "tflite"), measure=False)
    assert {r.format for r in results} == {"onnx", "tflite"}


# --------------------------------------------------------------------------- HDF5 external storage and links


def _tm_copy(tmp_path) -> Path:
    dst = tmp_path / "tm"
    shutil.copytree(WATER_BOTTLES, dst)
    return dst / "keras_model.h5"


def _first_weight(f):
    import h5py

    found = []
    f["model_weights"].visititems(lambda n, o: found.append(n) if isinstance(o, h5py.Dataset) and not found else None)
    return "model_weights/" + found[0]


@pytest.mark.parametrize("attack", ["external_storage", "external_link", "virtual_dataset"])
def test_h5_reading_another_file_is_refused_by_name_before_any_weight(attack, tmp_path, secret):
    import h5py

    from retreino import load_model

    h5 = _tm_copy(tmp_path)
    with h5py.File(h5, "a") as f:
        name = _first_weight(f)
        shape, dtype = f[name].shape, f[name].dtype
        if attack == "external_storage":
            del f[name]
            f.create_dataset(name, shape=shape, dtype=dtype, external=[(str(secret), 0, h5py.h5f.UNLIMITED)])
        elif attack == "external_link":
            other = tmp_path / "other.h5"
            with h5py.File(other, "w") as o:
                o["w"] = np.zeros(shape, dtype)
            del f[name]
            f[name] = h5py.ExternalLink(str(other), "/w")
        else:
            other = tmp_path / "other.h5"
            with h5py.File(other, "w") as o:
                o["w"] = np.zeros(shape, dtype)
            layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
            layout[...] = h5py.VirtualSource(str(other), "w", shape=shape)
            del f[name]
            f.create_virtual_dataset(name, layout)
    with pytest.raises(UnsafeModelError) as err:
        load_model(h5)
    short = name.split("/")[-1]
    _one_line(err.value, "keras_model.h5", short, {"external_storage": "external storage", "external_link":
                                                   "external link", "virtual_dataset": "virtual dataset"}[attack])


def test_keras_archive_whose_weights_use_external_storage_is_refused(tiny_model_dir, tmp_path, secret):
    import h5py

    from retreino import load_model

    src = tiny_model_dir / "fine_tuned_model.keras"
    members = _archive_members(src)
    weights = tmp_path / "w.h5"
    weights.write_bytes(members["model.weights.h5"])
    with h5py.File(weights, "a") as f:
        found = []
        f.visititems(lambda n, o: found.append(n) if isinstance(o, h5py.Dataset) and not found else None)
        shape, dtype = f[found[0]].shape, f[found[0]].dtype
        del f[found[0]]
        f.create_dataset(found[0], shape=shape, dtype=dtype, external=[(str(secret), 0, h5py.h5f.UNLIMITED)])
    members["model.weights.h5"] = weights.read_bytes()
    evil = _write_archive(tmp_path / "evil.keras", members)
    with pytest.raises(UnsafeModelError) as err:
        load_model(evil)
    _one_line(err.value, "evil.keras", "external storage")


# --------------------------------------------------------------------------- legacy rebuild and Keras 3 configs


def _legacy_h5(path: Path, config: dict) -> Path:
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(config)
        f.attrs["keras_version"] = "2.4.0"
        f.create_group("model_weights")
    return path


def _sequential(*layers) -> dict:
    return {"class_name": "Sequential", "config": {"name": "m", "layers": [
        {"class_name": "InputLayer", "config": {"batch_input_shape": [None, 32, 32, 3], "name": "in"}}, *layers]}}


@pytest.mark.parametrize("cls", ["StringLookup", "IntegerLookup"])
def test_legacy_h5_lookup_vocabulary_naming_a_file_is_refused_unread(cls, tmp_path, secret):
    from retreino import load_model

    h5 = _legacy_h5(tmp_path / "evil.h5", _sequential(
        {"class_name": cls, "config": {"name": "lookup", "vocabulary": str(secret)}}))
    for unsafe in (False, True):  # a file argument is refused even with --unsafe: it is never code
        with pytest.raises(UnsafeModelError) as err:
            load_model(h5, unsafe=unsafe)
        _one_line(err.value, "evil.h5", f"{cls} 'lookup'", "vocabulary", "names a file")


def test_legacy_rebuild_runs_under_keras_safe_mode(tmp_path):
    from retreino import load_model

    marker = tmp_path / "marker"
    h5 = _legacy_h5(tmp_path / "evil.h5", _sequential({"class_name": "Dense", "config": {
        "name": "d", "units": 2,
        "activation": {"module": "os", "class_name": "function", "registered_name": "system",
                       "config": f"touch {marker}"}}}))
    with pytest.raises(ModelLoadError) as err:
        load_model(h5)
    _one_line(err.value, "'d'")
    assert not marker.exists()


def test_keras3_refusals_say_what_was_refused(tiny_model_dir, tmp_path, secret):
    import keras

    from retreino import load_model

    inputs = keras.Input((32, 32, 3))
    out = keras.layers.Lambda(lambda t: t[:, 0, 0, :2], name="sneaky")(inputs)
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, out).save(path)
    with pytest.raises(UnsafeModelError) as err:
        load_model(path)
    _one_line(err.value, "lambda.keras", "Lambda layer 'sneaky'")

    # A .keras whose config names a vocabulary file: refused naming the layer and the argument.
    members = _archive_members(tiny_model_dir / "fine_tuned_model.keras")
    config = json.loads(members["config.json"])
    config["config"]["layers"][1]["class_name"] = "StringLookup"
    config["config"]["layers"][1]["config"]["vocabulary"] = str(secret)
    members["config.json"] = json.dumps(config).encode()
    evil = _write_archive(tmp_path / "vocab.keras", members)
    with pytest.raises(UnsafeModelError) as err:
        load_model(evil)
    _one_line(err.value, "vocab.keras", "StringLookup", "vocabulary")


# --------------------------------------------------------------------------- data outside the data folder


def _real_dataset(root: Path, n: int) -> Path:
    """root/cats and root/dogs holding copies of n real training photos each."""
    for i, src in enumerate(real_images("train", "cats", n) + real_images("train", "dogs", n)):
        d = root / ("cats" if i < n else "dogs")
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, d / src.name)
    return root


def _outside_dataset(tmp_path):
    """12 real photos in data/{cats,dogs}, plus a file symlink and a folder symlink to outside/private.jpg."""
    outside = tmp_path / "outside"
    outside.mkdir()
    secret_image = outside / "private.jpg"
    shutil.copy(real_images("test", "dogs", 1)[0], secret_image)
    root = _real_dataset(tmp_path / "data", 6)
    os.symlink(secret_image, root / "cats" / "linked.jpg")  # a file symlink out of the folder
    os.symlink(secret_image.parent, root / "dogs" / "linked_dir")  # a folder symlink out of it
    return root


def test_symlinks_out_of_the_data_folder_are_refused_and_listed(tmp_path):
    from retreino import load_dataset
    from retreino.data.check import check_dataset

    root = _outside_dataset(tmp_path)

    ds = load_dataset(root, warn=False)
    used = [p for s in ds.splits() for p in s.paths]
    assert len(used) == 12 and not any("linked" in p for p in used)
    refused = sorted(Path(p.path).name for p in ds.problems if p.kind == "outside_data")
    assert refused == ["linked.jpg", "private.jpg"], ds.problems
    text = check_dataset(root).format()
    assert "outside the data folder (2, warning)" in text and "linked.jpg" in text

    ds = load_dataset(root, warn=False, follow_links=True)
    assert len([p for s in ds.splits() for p in s.paths]) == 14
    assert not [p for p in ds.problems if p.kind == "outside_data"]


def test_labels_csv_rows_outside_the_data_folder_are_refused_even_with_follow_links(tmp_path):
    from retreino import load_dataset
    from retreino.data.check import check_dataset

    outside = tmp_path / "outside.jpg"
    shutil.copy(real_images("test", "dogs", 1)[0], outside)
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    rows = ["filename,label"]
    for i, src in enumerate(real_images("train", "cats", 5) + real_images("train", "dogs", 5)):
        shutil.copy(src, root / "images" / src.name)
        rows.append(f"{src.name},{'cat' if i < 5 else 'dog'}")
    rows += [f"{outside},dog", "../../outside.jpg,dog", "../outside.jpg,cat"]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    for follow in (False, True):
        ds = load_dataset(root, warn=False, follow_links=follow)
        used = [p for s in ds.splits() for p in s.paths]
        assert len(used) == 10 and not any(Path(p).name == "outside.jpg" for p in used)
        kinds = [p.message for p in ds.problems if p.kind == "outside_data"]
        assert len(kinds) == 3 and any("an absolute path" in m for m in kinds) and any("'..'" in m for m in kinds)
    assert "outside the data folder (3, warning)" in check_dataset(root).format()


def test_check_data_cli_has_follow_links(tmp_path):
    root = _outside_dataset(tmp_path)
    from retreino.cli import main

    assert main(["check-data", str(root), "--json"]) == 0
    assert main(["check-data", str(root), "--json", "--follow-links"]) == 0


# --------------------------------------------------------------------------- robustness: model files


@pytest.mark.parametrize("config", ["[1, 2]", "null", "[" * 5000 + "]" * 5000,
                                    '{"class_name": "Sequential", "config": 3}'])
def test_malformed_model_config_is_one_line(config, tmp_path):
    import h5py

    from retreino import load_model

    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = config
        f.attrs["keras_version"] = "2.4.0"
        f.create_group("model_weights")
    with pytest.raises(ModelLoadError) as err:
        load_model(path)
    _one_line(err.value, "bad.h5")


def test_keras_zip_bomb_is_refused_on_declared_sizes(tmp_path):
    from retreino import load_model

    bomb = tmp_path / "bomb.keras"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("config.json", "{}")
        with zf.open("model.weights.h5", "w") as member:
            chunk = b"\0" * (1 << 20)
            for _ in range(16):  # 16 MiB of zeros: about 16 KB compressed
                member.write(chunk)
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(ModelLoadError) as err:
        load_model(bomb)
    _one_line(err.value, "bomb.keras", "model.weights.h5", "zip bomb")


def test_non_utf8_labels_txt_is_read(tmp_path):
    from retreino.models.info import read_labels

    p = tmp_path / "labels.txt"
    p.write_bytes("0 Café\n1 Pão\n".encode("cp1252"))
    assert read_labels(p) == ["Café", "Pão"]


# --------------------------------------------------------------------------- robustness: data folders


def test_a_fifo_in_a_predict_folder_is_skipped_never_opened(tmp_path):
    """Run in a subprocess with a timeout: opening the FIFO would block forever."""
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(real_images(n=1)[0], folder / "cat.jpg")
    os.mkfifo(folder / "trap.jpg")
    code = ("import sys; from retreino.prediction import find_images; "
            "print([p.name for p in find_images(sys.argv[1])])")
    r = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "['cat.jpg']" in r.stdout
    assert "trap.jpg" in r.stderr  # named


def test_deep_folders_symlink_loops_and_fifos_in_a_dataset(tmp_path):
    """A 10,000-level folder, a symlink loop and a FIFO: load_dataset finishes, in a subprocess with a timeout."""
    root = _real_dataset(tmp_path / "data", 4)
    os.symlink(root / "cats", root / "cats" / "loop")
    os.mkfifo(root / "dogs" / "trap.jpg")
    fd = os.open(root / "dogs", os.O_RDONLY)
    try:
        for _ in range(10_000):
            os.mkdir("d", dir_fd=fd)
            new = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = new
    finally:
        os.close(fd)
    code = ("import sys; from retreino import load_dataset; ds = load_dataset(sys.argv[1], warn=False); "
            "print([p.path for p in ds.problems if p.kind == 'not_regular']); print(sum(len(s) for s in ds.splits()))")
    try:
        r = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, timeout=300)
    finally:
        remove_deep_chain(root / "dogs", "d")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "8"
    assert r.stdout.strip().splitlines()[-2] == repr([str(root / "dogs" / "trap.jpg")])  # named, never opened


def remove_deep_chain(parent: Path, name: str) -> None:
    """Remove parent/name/name/... one level at a time (shutil.rmtree recurses and overflows at 10,000)."""
    top = parent / name
    spare = parent / (name + ".up")
    while top.is_dir():
        inner = top / name
        if inner.is_dir():
            os.rename(inner, spare)
            os.rmdir(top)
            os.rename(spare, top)
        else:
            shutil.rmtree(top)



def test_a_weight_declared_far_larger_than_the_file_is_refused_before_allocating(tmp_path):
    """2.8 GB declared in a 2.4 MB file: refused, and the loading process stays small (measured in a subprocess)."""
    import h5py

    h5 = _tm_copy(tmp_path)
    with h5py.File(h5, "a") as f:
        name = _first_weight(f)
        del f[name]
        f.create_dataset(name, shape=(26_000, 26_000), dtype="float32")  # never written: the file stays small
    assert h5.stat().st_size < 4 << 20
    # VmHWM: the child's own peak (ru_maxrss of a vfork'ed child carries the test session's high-water mark).
    code = ("import resource, sys\nfrom retreino import load_model\ntry:\n    load_model(sys.argv[1])\n"
            "except Exception as e:\n    print(type(e).__name__, e)\n"
            "print('maxrss_kb', [int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')][0])")
    r = subprocess.run([sys.executable, "-c", code, str(h5)], capture_output=True, text=True, timeout=300)
    out = r.stdout.splitlines()
    assert out[0].startswith("ModelLoadError"), r.stdout + r.stderr[-2000:]
    assert "refused: its datasets declare 2,70" in out[0], out[0]
    rss_mb = int(out[-1].split()[1]) / 1024
    print(f"\npeak RSS loading a 2.7 GB-declared weight: {rss_mb:.0f} MB")
    assert rss_mb < 1500


def test_nan_weights_are_refused_and_nan_outputs_never_shown(tiny_model_dir, tmp_path):
    from retreino import load_model, save_model
    from retreino.errors import RetreinoError
    from retreino.inference import Predictor

    loaded = load_model(tiny_model_dir)
    p = Predictor(loaded, runtime="keras")
    head = loaded.model.get_layer("head")
    saved = head.kernel.numpy()
    try:
        head.kernel.assign(np.full_like(saved, np.nan))
        with pytest.raises(RetreinoError) as err:
            p.predict_pixels(np.zeros((1, 32, 32, 3), np.uint8))
        _one_line(err.value, "NaN")
        save_model(loaded, tmp_path / "nan.keras")
    finally:
        head.kernel.assign(saved)
    with pytest.raises(ModelLoadError) as err:
        load_model(tmp_path / "nan.keras")
    _one_line(err.value, "nan.keras", "NaN or infinite", "head")


@pytest.mark.parametrize("meta", ["[1, 2]", '"text"', '{"input_size": "big"}', '{"class_names": 3}',
                                  '{"head": 7}'])
def test_bad_embedded_or_export_metadata_is_one_line(meta, tiny_model_dir, tmp_path):
    from retreino import load_model
    from retreino.runtimes import read_export

    members = _archive_members(tiny_model_dir / "fine_tuned_model.keras")
    members["retreino.json"] = meta.encode()
    bad = _write_archive(tmp_path / "bad.keras", members)
    with pytest.raises(ModelLoadError) as err:
        load_model(bad)
    _one_line(err.value, "bad.keras", "retreino metadata")

    folder = tmp_path / "export"
    folder.mkdir()
    _onnx_with_custom_op(folder / "model.onnx", domain="")
    (folder / "retreino.json").write_text(meta)
    with pytest.raises(ModelLoadError) as err:
        read_export(folder)  # what runtime="auto" and --runtime NAME read
    _one_line(err.value, "retreino.json", "retreino metadata")


# --------------------------------------------------------------------------- robustness: the server


def test_server_bound_to_loopback_refuses_a_foreign_host_header(serve_server):
    """DNS rebinding: a page on evil.example resolved to 127.0.0.1 sends `Host: evil.example`."""
    import httpx

    port = serve_server.url.rsplit(":", 1)[1]
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example"):
        r = httpx.get(f"{serve_server.url}/model", headers={"Host": host}, timeout=10)
        assert r.status_code == 421 and "DNS rebinding" in r.json()["error"], (host, r.text)
        assert "classes" not in r.text
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost"):
        assert httpx.get(f"{serve_server.url}/model", headers={"Host": host}, timeout=10).status_code == 200, host


# --------------------------------------------------------------------------- robustness: run directories


def test_a_run_directory_is_held_by_one_process_and_killed_writes_are_cleaned(tmp_path):
    from retreino import runs
    from retreino.errors import RetreinoError
    from retreino.training import train

    run = tmp_path / "run"
    run.mkdir()
    (run / runs.CONFIG).write_text(json.dumps({"config": {}, "data": {"class_names": ["a", "b"]}}))
    (run / runs.STATE).write_text(json.dumps({"epoch": 2, "finished": True}))
    stale = run / ".fine_tuned_model.k2j3h4.keras"  # what a write killed half-way leaves
    stale.write_bytes(b"half a model")
    # Another process holds the run (a child, so the lock really is another process's).
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from retreino import runs; "
                               "h = runs.lock_run_dir(sys.argv[1]); print('held', flush=True); time.sleep(60)",
                               str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RetreinoError) as err:
            train(resume=run, printer=lambda *a: None)
        _one_line(err.value, str(run), "in use by another retreino process")
    finally:
        holder.kill()
        holder.wait()
    stale.write_bytes(b"half a model")
    # The holder was killed (SIGKILL): the lock went with it, and the stale temp file is removed.
    assert train(resume=run, printer=lambda *a: None).dir == run
    assert not stale.exists()


def test_a_run_lock_released_at_interpreter_exit_needs_no_import(tmp_path, monkeypatch):
    """A trainer's lock can be collected last at exit, when Python refuses imports ("sys.meta_path is
    None"): releasing it then must not print "Exception ignored in RunLock.__del__" after a clean run."""
    import os

    from retreino import runs

    lock = runs.lock_run_dir(tmp_path)
    fd = lock.fd
    monkeypatch.delitem(sys.modules, "os")  # what a late shutdown looks like to an `import os`
    monkeypatch.setattr(sys, "meta_path", None)
    lock.__del__()
    monkeypatch.undo()
    assert lock.fd is None
    with pytest.raises(OSError):
        os.fstat(fd)  # the descriptor really was closed


@pytest.mark.parametrize("killed", ["before_commit", "after_first_rename"])
def test_best_keras_and_h5_are_always_from_the_same_epoch_after_a_kill(killed, tmp_path):
    import os

    from retreino import runs

    run = tmp_path / "run"
    run.mkdir()
    (run / runs.BEST_KERAS).write_text("epoch 3")
    (run / runs.BEST_H5).write_text("epoch 3")
    pending = runs.pending_best(run)
    for p in pending.values():
        p.write_text("epoch 4")
    if killed == "after_first_rename":  # the commit mark was written, one rename done, then SIGKILL
        (run / runs.COMMIT).write_text("")
        os.replace(pending[runs.BEST_H5], run / runs.BEST_H5)
    runs.lock_run_dir(run).close()  # what the next `train --resume` does first
    want = "epoch 3" if killed == "before_commit" else "epoch 4"
    assert (run / runs.BEST_KERAS).read_text() == (run / runs.BEST_H5).read_text() == want
    assert sorted(p.name for p in run.iterdir()) == [runs.BEST_H5, runs.BEST_KERAS]


def test_a_sparse_64_gib_jpg_is_refused_by_its_size_before_reading(tmp_path):
    """Measured in a subprocess: load_dataset and predict's reader stay small and quick."""
    root = _real_dataset(tmp_path / "data", 3)
    giant = root / "dogs" / "giant.jpg"
    with open(giant, "wb") as fh:
        fh.write(b"\xff\xd8\xff\xe0")
        fh.truncate(64 << 30)  # sparse: 64 GiB declared, a few KB on disk
    code = ("import resource, sys\nfrom retreino import load_dataset\nfrom retreino.data.images import read_image\n"
            "ds = load_dataset(sys.argv[1], warn=False)\n"
            "print([p.message for p in ds.problems if p.path and p.path.endswith('giant.jpg')][0])\n"
            "try:\n    read_image(sys.argv[2])\nexcept Exception as e:\n    print(type(e).__name__, e)\n"
            "print([int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')][0])")
    r = subprocess.run([sys.executable, "-c", code, str(root), str(giant)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert "68,719,476,736 bytes, over the" in lines[0], r.stdout
    assert lines[1].startswith("DataError") and "giant.jpg" in lines[1] and "not read" in lines[1], r.stdout
    rss_mb = int(lines[-1]) / 1024
    print(f"\npeak RSS with a sparse 64 GiB .jpg in the data: {rss_mb:.0f} MB")
    assert rss_mb < 1500


def test_a_killed_predict_leaves_no_hidden_temp_file_after_the_next_start(tmp_path):
    from retreino.prediction import RowWriter

    out = tmp_path / "preds.csv"
    # A predict that was SIGKILLed while writing: its temporary file, held by nobody.
    victim = subprocess.Popen([sys.executable, "-c", "import sys, time; from retreino.prediction import RowWriter; "
                               "w = RowWriter(sys.argv[1], ['a', 'b']); print(w._tmp, flush=True); time.sleep(60)",
                               str(out)], stdout=subprocess.PIPE, text=True)
    stale = Path(victim.stdout.readline().strip())
    assert stale.exists() and stale.name.startswith(".preds.")
    live = subprocess.Popen([sys.executable, "-c", "import sys, time; from retreino.prediction import RowWriter; "
                             "w = RowWriter(sys.argv[1], ['a', 'b']); print(w._tmp, flush=True); time.sleep(60)",
                             str(out)], stdout=subprocess.PIPE, text=True)
    try:
        running = Path(live.stdout.readline().strip())
        victim.kill()
        victim.wait()
        w = RowWriter(out, ["a", "b"])
        w.write({"path": "x.jpg", "predicted": "a", "confidence": 0.9, "probabilities": {"a": 0.9, "b": 0.1}})
        w.close(ok=True)
        assert not stale.exists()  # the dead writer's temp is gone
        assert running.exists()  # a live writer's is kept
        assert out.read_text().startswith("path,")
    finally:
        live.kill()
        live.wait()


def test_server_caps_the_decoded_pixels_of_one_request(serve_server):
    """Four small PNGs of 30 Mpx each (120 Mpx, each under the per-image limit): refused on their headers."""
    import io

    import httpx
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (6000, 5000)).save(buf, format="PNG")
    png = buf.getvalue()
    assert len(png) < 1 << 20
    files = [("files", (f"flat{i}.png", png, "image/png")) for i in range(4)]
    r = httpx.post(f"{serve_server.url}/predict", files=files, timeout=60)
    assert r.status_code == 413, r.text
    assert "100,000,000 pixels" in r.text and "flat3.png" in r.text
    assert httpx.get(f"{serve_server.url}/health", timeout=10).status_code == 200


def test_a_weights_file_with_an_external_link_is_refused_before_the_backbone_is_built(tmp_path, secret):
    import h5py

    from retreino import load_model

    weights = tmp_path / "evil.weights.h5"
    with h5py.File(weights, "w") as f:
        f.create_dataset("layers/conv/vars/0", shape=(4,), dtype="float32",
                         external=[(str(secret), 0, h5py.h5f.UNLIMITED)])
    with pytest.raises(UnsafeModelError) as err:
        load_model("mobilenet_v2", weights=weights)
    _one_line(err.value, "evil.weights.h5", "external storage")


def test_a_file_that_vanishes_after_the_scan_is_one_warning_on_the_streaming_path(tmp_path, capfd):
    from retreino import load_dataset
    from retreino.data.pipeline import make_pipeline

    root = _real_dataset(tmp_path / "data", 3)
    ds = load_dataset(root, val_split=0.0, test_split=0.0, warn=False)
    pipe = make_pipeline(ds.train, image_size=(32, 32), batch_size=8, training=True, cache=False, shuffle=False)
    gone = Path(ds.train.paths[0])
    gone.unlink()
    for _ in range(2):  # two epochs: still one warning
        seen = sum(int(x.shape[0]) for x, _ in pipe)
        assert seen == 5
    err = capfd.readouterr().err
    assert err.count("vanished or changed since the data was scanned") == 1 and str(gone) in err, err


def test_a_client_hanging_up_mid_upload_is_one_log_line(serve_server):
    import socket
    import time

    host, port = serve_server.url.rsplit("/", 1)[1].split(":")
    before = len(serve_server.log)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(f"POST /predict HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: multipart/form-data; boundary=xx\r\n"
                  "Content-Length: 500000\r\n\r\n--xx\r\nContent-Disposition: form-data; name=\"files\"; "
                  "filename=\"a.jpg\"\r\n\r\n".encode() + b"\xff\xd8" * 1000)
        time.sleep(0.5)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and "disconnected during POST /predict" not in serve_server.log[before:]:
        time.sleep(0.2)
    new = serve_server.log[before:]
    assert new.count("disconnected during POST /predict") == 1 and "Traceback" not in new, new


@pytest.mark.slow
def test_an_upload_that_stalls_is_timed_out(monkeypatch):
    """A client that stops sending mid-body gets 408 after RETREINO_BODY_TIMEOUT_S, and the server stays up."""
    import socket
    import time

    import httpx

    from test_serve import SERVER_ARGS, start_server

    monkeypatch.setenv("RETREINO_BODY_TIMEOUT_S", "1")
    server = start_server(*SERVER_ARGS)
    try:
        host, port = server.url.rsplit("/", 1)[1].split(":")
        with socket.create_connection((host, int(port)), timeout=30) as s:
            s.sendall(f"POST /predict HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: image/jpeg\r\n"
                      "Content-Length: 100000\r\n\r\n".encode() + b"\xff\xd8" * 100)
            started = time.monotonic()
            answer = s.recv(4096).decode("latin-1")
            waited = time.monotonic() - started
            while "request_timeout" not in answer and (more := s.recv(4096)):
                answer += more.decode("latin-1")
        assert answer.startswith("HTTP/1.1 408") and "request_timeout" in answer, answer
        print(f"\nstalled upload answered 408 after {waited:.1f} s")
        assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
    finally:
        server.stop()


@pytest.fixture(scope="module")
def hardened_server():
    """A real server with small budgets: 20 MB of uploads in flight, 1 s keep-alive and header deadline."""
    from test_serve import SERVER_ARGS, start_server

    env = {"RETREINO_MAX_UPLOAD_MB_IN_FLIGHT": "20", "RETREINO_KEEP_ALIVE_S": "1", "RETREINO_HEADER_TIMEOUT_S": "1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        server = start_server(*SERVER_ARGS)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k)
            else:
                os.environ[k] = v
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.slow
def test_concurrent_uploads_share_one_memory_budget(hardened_server):
    """48 clients at once, each sending 4 files of 0.9 MB or one oversize file: the server holds at most
    20 MB of uploads, answers the rest 503 in one JSON line, and its memory stays bounded."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    server = hardened_server
    before = server.rss_mb()
    big = os.urandom(900_000)
    oversize = os.urandom(3_000_000)

    def send(i: int) -> tuple[int, str]:
        files = [("files", (f"{i}_{k}.jpg", big, "image/jpeg")) for k in range(4)] if i % 2 else \
            [("files", (f"{i}.jpg", oversize, "image/jpeg"))]
        try:
            r = httpx.post(f"{server.url}/predict", files=files, timeout=60)
            return r.status_code, r.text
        except httpx.TransportError as exc:  # refused early while still sending
            return 0, str(exc)

    statuses = []
    for _ in range(3):  # rounds: memory must not creep up round after round
        with ThreadPoolExecutor(48) as pool:
            statuses += list(pool.map(send, range(48)))
    after = server.rss_mb()
    codes = [s for s, _ in statuses]
    busy = [t for s, t in statuses if s == 503 and "uploads_busy" in t]
    print(f"\nRSS {before:.0f} -> {after:.0f} MB; answers {sorted(set(codes))}: "
          f"{codes.count(503)} x 503, {codes.count(413)} x 413, {codes.count(0)} resets")
    assert busy, statuses[:5]
    assert len(busy[0].splitlines()) == 1 and json.loads(busy[0])["detail"].count("limit 20 MB") == 1, busy[0]
    assert 413 in codes
    assert after - before < 300, (before, after)
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
    r = httpx.post(f"{server.url}/predict", files=[("files", ("a.jpg", b"x" * 10, "image/jpeg"))], timeout=30)
    assert r.status_code != 503, r.text  # the budget was given back


@pytest.mark.slow
def test_idle_connections_are_closed_by_the_server(hardened_server):
    """A connection that sends nothing, and one left idle after a request, are closed within ~1 s."""
    import socket
    import time

    host, port = hardened_server.url.rsplit("/", 1)[1].split(":")
    waited = {}
    for case in ("never sends", "idle after a request"):
        with socket.create_connection((host, int(port)), timeout=15) as s:
            if case == "idle after a request":
                s.sendall(f"GET /health HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
                assert s.recv(4096).startswith(b"HTTP/1.1 200")
            started = time.monotonic()
            try:
                while s.recv(4096):
                    pass
                closed = True
            except socket.timeout:
                closed = False
            waited[case] = time.monotonic() - started
        assert closed, f"{case}: still open after {waited[case]:.1f} s"
    print("\nclosed after " + ", ".join(f"{k}: {v:.1f} s" for k, v in waited.items()))
    # A slowloris: its headers a byte every 0.1 s, never finished. The server hangs up on it.
    with socket.create_connection((host, int(port)), timeout=15) as s:
        started = time.monotonic()
        with pytest.raises(OSError):  # a broken pipe or reset once the server has closed
            for byte in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200:
                s.sendall(bytes([byte]))
                time.sleep(0.1)
        slow = time.monotonic() - started
    print(f"slow headers: connection closed, noticed after {slow:.1f} s")
    assert slow < 15


@pytest.mark.slow
def test_disk_full_while_saving_the_best_model_is_one_line_and_keeps_the_best(tiny_model_dir, tmp_path):
    """A real full filesystem (a 3 MB tmpfs): the save fails with ENOSPC, the error names the folder,
    the previous best model still loads."""
    import keras

    from retreino import load_model, runs
    from retreino.training import TrainingError, _Trainer

    mnt = tmp_path / "small_disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        loaded = load_model(tiny_model_dir / "fine_tuned_model.keras")
        trainer = object.__new__(_Trainer)  # only what save_best uses: the run folder and the model info
        trainer.run_dir, trainer.info = mnt / "run", loaded.info
        trainer.run_dir.mkdir()
        trainer.save_best(loaded.model)  # fits: the first best model
        best = trainer.run_dir / runs.BEST_KERAS
        first = best.read_bytes()
        with open(mnt / "filler", "wb") as f:  # fill the disk for real
            try:
                while True:
                    f.write(b"\0" * 65536)
            except OSError:
                pass
        model = keras.models.clone_model(loaded.model)
        with pytest.raises(TrainingError) as err:
            trainer.save_best(model)
        message = _one_line(err.value, "no space left on", str(mnt), "intact in", str(best))
        print("\n" + message)
        assert best.read_bytes() == first
        assert load_model(best).info.class_names == ["cats", "dogs"]
        assert not any(p.exists() for p in runs.pending_best(trainer.run_dir).values())
    finally:
        subprocess.run(["umount", str(mnt)])
