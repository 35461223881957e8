"""Training speed features: the frozen-prefix split, ONNX Runtime parity, oneDNN agreement, distribution.

Speed itself is measured by bench/train.py; these tests check that the fast paths compute the
same thing as the plain Keras path.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from conftest import ROOT, WATER_BOTTLES, cats_vs_dogs_subset, real_images
from retreino import load_model
from retreino.cli import main
from retreino.data import decode_all
from retreino.models.surgery import freeze_all_but_last, freeze_head_only, prepare_for_classes
from retreino.preprocessing import scale_pixels_np
from retreino.speed.accelerate import Accelerator, PrefixRunner
from retreino.speed.prefix import split_model


@pytest.fixture(scope="module")
def reheaded():
    """water_bottles re-headed to cats/dogs, frozen for fine-tuning the last 5 layers."""
    loaded = prepare_for_classes(load_model(WATER_BOTTLES), ["cats", "dogs"]).loaded
    freeze_all_but_last(loaded.model, 5)
    return loaded


@pytest.fixture(scope="module")
def real_batch():
    """16 real photos scaled to [-1, 1], and their labels (8 cats, 8 dogs)."""
    paths = real_images("validation", "cats", 8) + real_images("validation", "dogs", 8)
    x = scale_pixels_np(decode_all(paths).astype("float32"), "tf").astype("float32")
    return x, np.array([0] * 8 + [1] * 8)


def test_split_of_a_nested_model_shares_layers_and_computes_the_same(reheaded, real_batch):
    model = reheaded.model
    split = split_model(model)
    # Cut right before the first trainable layer (block_16_project): one 7x7x336 input for the tail.
    assert split.useful and split.prefix.output_shape == (None, 7, 7, 336)
    assert [w.path for w in split.tail.trainable_weights] == [w.path for w in model.trainable_weights]
    assert all(a is b for a, b in zip(split.tail.trainable_weights, model.trainable_weights))
    x = real_batch[0][:4]
    np.testing.assert_allclose(np.asarray(split.tail(split.prefix(x))), np.asarray(model(x)), atol=1e-6)
    # Warm-up: only the head trains, so the prefix is the whole backbone up to the pooled features.
    freeze_head_only(model)
    try:
        assert split_model(model).prefix.output_shape == (None, 1280)
    finally:
        freeze_all_but_last(model, 5)


def test_split_across_a_residual_connection_gives_the_tail_two_inputs():
    inputs = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(4, 3, padding="same", name="a")(inputs)
    b = keras.layers.Conv2D(4, 3, padding="same", name="b")(a)
    c = keras.layers.Conv2D(4, 3, padding="same", name="c")(b)
    added = keras.layers.Add(name="add")([a, c])
    outputs = keras.layers.Dense(2, activation="softmax", name="head")(keras.layers.GlobalAveragePooling2D()(added))
    inner = keras.Model(inputs, outputs, name="inner")
    model = keras.Sequential([keras.Input((8, 8, 3)), inner])  # nested, as real exports are
    for name in ("a", "b"):
        inner.get_layer(name).trainable = False
    split = split_model(model)
    assert len(split.prefix.outputs) == 2  # a's output (the skip) and b's output (into c)
    x = np.random.default_rng(0).normal(size=(3, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(split.tail(split.prefix(x))), np.asarray(model(x)), atol=1e-6)
    # A Dropout before the first trainable layer behaves differently in training: the prefix stops there.
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(4, name="frozen", trainable=False)(inputs)
    out = keras.layers.Dense(2, name="head")(keras.layers.Dropout(0.5)(hidden))
    split = split_model(keras.Model(inputs, out))
    assert split.prefix_layers == 1 and split.prefix.output_shape == (None, 4)


def test_onnx_prefix_then_keras_tail_matches_the_full_keras_model(reheaded, real_batch):
    """The equivalence the acceleration rests on: same weights, real images, outputs and loss within 1e-4."""
    model = reheaded.model
    x, labels = real_batch
    split = split_model(model)
    runner = PrefixRunner(split.prefix, x)
    assert runner.runtime == "onnx", runner.describe()  # the fast runtime passed its parity check
    features = runner(x)
    got = np.asarray(split.tail(features[0]))
    want = np.asarray(model(x))
    np.testing.assert_allclose(got, want, atol=1e-4)
    y = keras.utils.to_categorical(labels, 2)
    loss = keras.losses.CategoricalCrossentropy()
    assert abs(float(loss(y, got)) - float(loss(y, want))) < 1e-4
    # And the prefix's own outputs: 7x7x336 ReLU6 features, agreeing to float32 rounding.
    np.testing.assert_allclose(features[0], np.asarray(split.prefix(x)), atol=1e-4 * 6)


def test_validation_features_are_computed_once(reheaded, real_batch):
    import tensorflow as tf

    x, labels = real_batch
    y = keras.utils.to_categorical(labels, 2)
    images = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    acc = Accelerator.build(reheaded.model, lambda m: freeze_all_but_last(m, 5), x[:4], batch_size=8, seed=0,
                            cache_budget_mb=64, runtime="keras")
    calls = []
    runner = acc.runner
    acc.runner = lambda batch: calls.append(len(batch)) or runner(batch)
    acc.runner.n_outputs, acc.runner.output_shapes = runner.n_outputs, runner.output_shapes
    first = [np.asarray(f) for f, _ in acc.validation(images, len(x))]
    second = [np.asarray(f) for f, _ in acc.validation(images, len(x))]
    assert calls == [8, 8]  # two batches, once
    np.testing.assert_array_equal(np.concatenate(first), np.concatenate(second))
    # Batches of 8 through a traced function vs 16 eagerly: oneDNN blocks differently, float32 rounding.
    np.testing.assert_allclose(np.concatenate(first), np.asarray(acc.split.prefix(x)), atol=1e-4)


ONEDNN_SCRIPT = textwrap.dedent("""
    import sys, numpy as np
    from retreino import load_model
    from retreino.data import decode_all
    from retreino.preprocessing import scale_pixels_np
    paths = sys.argv[2:]
    x = scale_pixels_np(decode_all(paths).astype("float32"), "tf").astype("float32")
    loaded = load_model(sys.argv[1].split("::")[0])
    np.save(sys.argv[1].split("::")[1], np.asarray(loaded.model(x)))
""")


def test_onednn_on_agrees_with_onednn_off(tmp_path):
    """retreino turns TensorFlow's oneDNN kernels on (it ships with them off on some CPUs): same answers."""
    paths = [str(p) for p in real_images("test", "cats", 4) + real_images("test", "dogs", 4)]
    outs = {}
    for flag in ("0", "1"):
        out = tmp_path / f"onednn{flag}.npy"
        env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": flag, "PYTHONPATH": str(ROOT / "src")}
        subprocess.run([sys.executable, "-c", ONEDNN_SCRIPT, f"{WATER_BOTTLES}::{out}", *paths],
                       env=env, check=True, capture_output=True, timeout=300)
        outs[flag] = np.load(out)
    assert outs["0"].shape == (8, 2)
    np.testing.assert_allclose(outs["1"], outs["0"], atol=1e-5)


def _subset(root, n_train, n_val):
    return cats_vs_dogs_subset(root, train=n_train, validation=n_val)


MIRRORED_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from retreino.training import train
    from retreino.config import AugmentConfig
    from retreino import load_model
    data, runs, probe = sys.argv[1:4]
    common = dict(model=sys.argv[4], data=data, runs_dir=runs, epochs=2, warmup_epochs=0, head_init="warmup", batch_size=8, test_split=0.0,
                  learning_rate=1e-3, augment=AugmentConfig.off(), accelerate="off", printer=lambda *a: None)
    single = train(name="single", **common)
    mirrored = train(name="mirrored", distribute="mirrored", **common)
    x = np.load(probe)
    out = {}
    for run in (single, mirrored):
        model = load_model(run.dir / "last.keras").model
        out[run.dir.name] = {"losses": [r["loss"] for r in run.history], "probs": np.asarray(model(x)).tolist()}
    out["replicas"] = tf.distribute.MirroredStrategy().num_replicas_in_sync
    print(json.dumps(out))
""")


def test_mirrored_strategy_over_two_cpu_devices_matches_single_device(tmp_path, real_batch):
    """24 training photos in shuffled batches of 8 (3 steps an epoch, a new order each epoch):
    each batch is split 4+4 over two logical CPUs and the replicas' gradients are summed, the same
    update as on one device up to float32 summation order. Two epochs of Adam (1e-3) later, the
    losses and the predictions agree to 1e-4 (measured: weights within 3e-7).

    With several batches this used to differ (0.58 vs 0.35 epoch-1 loss here): Keras' distributed
    `fit` drew a batch from a throw-away iterator to build the model, which consumed one reshuffle,
    so every distributed epoch saw the next epoch's order. `speed.devices.patch_symbolic_build`
    builds from the dataset's element_spec instead."""
    data = _subset(tmp_path / "data", 12, 4)
    probe = tmp_path / "probe.npy"
    np.save(probe, real_batch[0][:4])
    env = {**os.environ, "RETREINO_QUIET": "1", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT, str(data), str(tmp_path / "runs"), str(probe), str(WATER_BOTTLES)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["replicas"] == 2
    single, mirrored = out["single"], out["mirrored"]
    assert len(single["losses"]) == 2
    np.testing.assert_allclose(mirrored["losses"], single["losses"], atol=1e-4)
    np.testing.assert_allclose(mirrored["probs"], single["probs"], atol=1e-4)
    assert single["losses"][-1] < single["losses"][0]  # it did train


def test_speed_options_are_checked_and_explained(tmp_path, capsys):
    data = _subset(tmp_path / "data", 4, 2)
    base = ["train", "--model", str(WATER_BOTTLES), "--data", str(data), "--runs-dir", str(tmp_path / "runs"), "--dry-run"]
    assert main(base + ["--distribute", "everywhere"]) == 2
    err = capsys.readouterr().err
    assert "unknown --distribute 'everywhere'" in err and len(err.strip().splitlines()) == 1
    assert main(base + ["--precision", "mixed"]) == 0
    assert "--precision mixed needs a GPU and none is visible: training in float32" in capsys.readouterr().out


def test_accelerated_run_saves_the_full_model_with_its_optimizer(tmp_path):
    """The tail trains, but the run directory holds the full model, and last.keras the optimizer state
    that --resume needs (Adam, its step count), not a default optimizer."""
    from retreino.config import AugmentConfig
    from retreino.training import train

    data = _subset(tmp_path / "data", 8, 4)
    lines = []
    run = train(model=str(WATER_BOTTLES), data=str(data), runs_dir=str(tmp_path / "runs"), name="fast", epochs=2,
                warmup_epochs=0, head_init="warmup", batch_size=8, test_split=0.0, augment=AugmentConfig.off(), printer=lines.append)
    # The default last 30 layers with weights reach back to block_12_project: 113 layers stay in front.
    assert any(line.startswith("Speed: the 113 frozen layers in front run on ONNX Runtime") for line in lines), lines
    best = load_model(run.dir)
    assert best.model.input_shape == (None, 224, 224, 3) and best.class_names == ["cats", "dogs"]
    last = keras.saving.load_model(run.dir / "last.keras")
    assert type(last.optimizer).__name__ == "Adam"
    assert int(last.optimizer.iterations) == 4  # 2 epochs x 2 batches of 8
    x = np.random.default_rng(0).uniform(-1, 1, (2, 224, 224, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(load_model(run.dir / "fine_tuned_model.h5").model(x)), np.asarray(best.model(x)), atol=1e-6)
