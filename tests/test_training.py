"""Fine-tuning: surgery, loss choice, a real training run, resume after SIGKILL."""
from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, WATER_BOTTLES, cats_vs_dogs_subset
from retreino import load_model
from retreino.cli import main
from retreino.models.graph import flatten_layers
from retreino.models.summary import count_params
from retreino.models.surgery import HEAD_NAME, freeze_all_but_last, prepare_for_classes


def test_last_n_counts_flattened_layers_and_keeps_batchnorm_frozen():
    loaded = load_model(WATER_BOTTLES)
    prepared = prepare_for_classes(loaded, ["cats", "dogs"])
    model = prepared.loaded.model
    assert prepared.new_head and model.output_shape == (None, 2)
    trained = freeze_all_but_last(model, 5)
    names = [layer.name for layer in trained]
    # The last 5 layers with weights: block_16_project, its BN, Conv_1, its BN, the new head.
    assert names == ["block_16_project", "Conv_1", "retreino_head"]
    assert all(not layer.trainable for layer in flatten_layers(model) if layer.__class__.__name__ == "BatchNormalization")
    assert count_params(model.trainable_weights) == sum(count_params(layer.weights) for layer in trained)
    assert count_params(model.trainable_weights) < count_params(model.weights)
    # The notebook's way, model.layers[-5:], would have unfrozen the whole nested backbone:
    assert len(model.layers) < 5
    with_bn = freeze_all_but_last(model, 5, train_bn=True)
    assert [layer.name for layer in with_bn] == ["block_16_project", "block_16_project_BN", "Conv_1", "Conv_1_bn", "retreino_head"]


def test_head_kept_when_classes_match():
    loaded = load_model(WATER_BOTTLES)
    prepared = prepare_for_classes(loaded, ["5 Galoon", "500ML"])
    assert not prepared.new_head and prepared.loaded.model is loaded.model


@pytest.mark.parametrize(
    "head,units,loss",
    [("softmax", 2, "CategoricalCrossentropy"), ("softmax", 5, "CategoricalCrossentropy"),
     ("sigmoid", 1, "BinaryCrossentropy"), ("logits", 3, "CategoricalCrossentropy")],
)
def test_loss_follows_head(head, units, loss):
    from retreino.training import loss_and_metric

    loss_obj, metric = loss_and_metric(head, units, label_smoothing=0.0)
    assert type(loss_obj).__name__ == loss
    assert getattr(loss_obj, "from_logits", False) == (head == "logits")
    assert metric.name == "accuracy"


def _subset(root: Path, n_train: int, n_val: int) -> Path:
    return cats_vs_dogs_subset(root, train=n_train, validation=n_val)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """The acceptance run: water_bottles re-headed to cats/dogs, 2 epochs on 100+100 training images."""
    from retreino.training import train

    data = _subset(tmp_path_factory.mktemp("data"), 100, 50)
    runs = tmp_path_factory.mktemp("runs")
    return train(model=str(WATER_BOTTLES), data=str(data), epochs=1, runs_dir=str(runs), name="cats")


@pytest.mark.slow
def test_training_run_learns_and_writes_every_file(trained_run):
    run = trained_run
    assert len(run.history) == 2 and [r["phase"] for r in run.history] == ["linear-probe", "finetune"]
    assert max(r["val_accuracy"] for r in run.history) > 0.8
    d = run.dir
    for name in ("config.json", "fine_tuned_model.keras", "fine_tuned_model.h5", "last.keras", "labels.txt",
                 "history.csv", "learning_curves.png", "report.html"):
        assert (d / name).is_file() and (d / name).stat().st_size > 0, name
    best = load_model(d)
    assert best.class_names == ["cats", "dogs"] and best.info.preprocessing == "tf"
    h5 = load_model(d / "fine_tuned_model.h5")
    x = np.random.default_rng(0).uniform(-1, 1, (2, 224, 224, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(h5.model(x)), np.asarray(best.model(x)), atol=1e-6)
    import keras

    assert keras.saving.load_model(d / "last.keras").optimizer is not None
    assert (d / "labels.txt").read_text() == "0 cats\n1 dogs\n"
    with open(d / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["epoch", "phase", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"]
    record = json.loads((d / "config.json").read_text())
    # The notebook's 5 layers at 1e-5 lost to a linear probe; the defaults train deeper, faster (docs/accuracy.md).
    assert record["config"]["unfreeze"] == 30 and record["config"]["learning_rate"] == 1e-4
    assert record["data"]["fingerprint"] and record["versions"]["keras"]
    assert (d / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(d.glob(".*"))  # no temporary files left behind
    # The temperature: fitted out of fold on train + validation when the best model is the linear probe (with
    # the mirror images the probe or flip TTA used); else on the validation answers predictions will give (ood.py).
    cal = json.loads((d / "calibration.json").read_text())
    assert cal["temperature"] == pytest.approx(best.info.temperature)
    assert cal["tta"]["tta"] == best.info.tta
    counts = record["data"]["counts"]
    n_train, n_val = sum(counts["train"].values()), sum(counts["validation"].values())  # 180, 100
    pooled = best.info.unknown["threshold_from"]
    if run.best_epoch == 1:
        assert cal["fit"]["source"] == "out-of-fold train+validation"
        assert cal["fit"]["n"] == n_train + n_val
        # The probe's features are the frozen backbone's: the training images' leave-one-out kNN scores
        # join validation's in the unknown threshold.
        assert pooled == {"validation": n_val, "knn_training": n_train}
        assert cal["head_refit"] is None  # the probe is its own refit
    else:
        # Fine-tuning won: its head was refitted as a probe on the new features, and kept only when better.
        refit = cal["head_refit"]
        assert refit["before"]["val_accuracy"] == pytest.approx(run.best_val_accuracy, abs=1e-6)
        better = (refit["after"]["val_accuracy"] >= refit["before"]["val_accuracy"]
                  and refit["after"]["val_loss"] < refit["before"]["val_loss"])
        assert refit["kept"] == better
        assert cal["fit"]["source"] == "validation"
        assert cal["fit"]["n"] == n_val
        assert pooled == {"validation": n_val, "knn_training": 0}
    assert cal["temperature"] == (cal["fit"]["fitted"] if cal["fit"]["kept"] else 1.0)


def test_dry_run_lists_trainable_layers(capsys, tmp_path):
    data = _subset(tmp_path / "data", 10, 5)
    assert main(["train", "--model", str(WATER_BOTTLES), "--data", str(data), "--dry-run", "--runs-dir", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "Conv_1" in out and "trains" in out and "inference mode" in out
    # The last 30 layers with weights reach back to block_12_project (BatchNorm counted, and frozen).
    state = {m[1]: m[2] for m in re.finditer(r"^(\w+) +\w+ +(trains|frozen)", out, re.M)}
    assert state["block_12_depthwise"] == "frozen" and state["block_12_project"] == "trains"
    assert ("Trainable parameters: 311,474 of 412,770 (after the new head is fitted as a linear probe on the frozen "
            "features), learning rate 0.0001") in out
    assert main(["train", "--model", str(WATER_BOTTLES), "--data", str(data), "--dry-run", "--unfreeze", "5", "--lr", "1e-5",
                 "--head-init", "warmup", "--runs-dir", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert ("Trainable parameters: 183,554 of 412,770 (after a 3-epoch head-only warm-up at 0.001), learning rate 1e-05"
            in out)
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing


@pytest.mark.slow
def test_fine_tuning_validates_and_saves_the_weight_average(tmp_path):
    """The best model holds the optimizer's moving average (what validation scored); last.keras the raw weights."""
    import keras

    from retreino.training import train

    data = _subset(tmp_path / "data", 40, 20)
    saved = {}
    for average in ("ema", "off"):
        run = train(model=str(WATER_BOTTLES), data=str(data), epochs=1, head_init="warmup", warmup_epochs=0, tta="off",
                    weight_average=average, runs_dir=str(tmp_path / "runs"), name=average, printer=lambda *a: None)
        assert run.best_epoch == 1 and [r["phase"] for r in run.history] == ["finetune"]
        last = keras.saving.load_model(run.dir / "last.keras")
        best = {v.path: v for v in keras.saving.load_model(run.dir / "fine_tuned_model.keras").weights}
        raw = {v.path: np.asarray(v) for v in last.trainable_variables}
        averages = [np.asarray(v) for v in last.optimizer.variables if v.path.endswith("_average")]
        saved[average] = (raw, {path: np.asarray(best[path]) for path in raw}, averages)
    raw, best, averages = saved["ema"]
    assert len(raw) == len(averages) > 4  # the last 30 layers with weights: kernels and biases
    for (path, w), avg in zip(raw.items(), averages):
        np.testing.assert_allclose(best[path], avg, atol=1e-6, err_msg=path)
    assert max(float(np.abs(best[p] - raw[p]).max()) for p in raw) > 1e-4  # the average is not the last step
    raw, best, averages = saved["off"]
    assert averages == []
    for path, w in raw.items():
        np.testing.assert_array_equal(best[path], w)


@pytest.mark.slow
def test_layer_decay_gives_each_layer_below_the_head_a_smaller_share_of_the_rate(tmp_path):
    """--layer-decay 0.5: one SGD step moves the k-th trainable layer below the head by 0.5**k of what the
    same step moves it at one rate. The saved files hold a plain Keras SGD (they load without retreino); the
    scales come from the layers that train, which a reloaded last.keras (--resume) still says."""
    import keras

    from retreino.optimizers import layer_rate_scales
    from retreino.training import train

    data = _subset(tmp_path / "data", 12, 6)  # 24 training photos: one batch, one step
    start = {v.path: np.asarray(v) for v in prepare_for_classes(load_model(WATER_BOTTLES), ["cats", "dogs"],
                                                                seed=1).loaded.model.weights}
    moved, lines = {}, []
    for decay in (1.0, 0.5):
        run = train(model=str(WATER_BOTTLES), data=str(data), epochs=1, head_init="warmup", warmup_epochs=0, tta="off",
                    optimizer="sgd", learning_rate=0.01, layer_decay=decay, unfreeze=5, seed=1,
                    runs_dir=str(tmp_path / "runs"), name=f"d{decay}", printer=lines.append)
        last = keras.saving.load_model(run.dir / "last.keras", compile=True)
        moved[decay] = {v.path: np.asarray(v) - start[v.path] for v in last.trainable_variables}
        assert type(last.optimizer) is keras.optimizers.SGD
        if decay != 1.0:
            scales = layer_rate_scales(flatten_layers(last), decay)
    kernels = [p for p in moved[1.0] if p.endswith("kernel")]  # forward order: block_16_project, Conv_1, head
    assert [p.split("/")[-2] for p in kernels] == ["block_16_project", "Conv_1", "retreino_head"]
    for k, path in enumerate(reversed(kernels)):
        assert scales.get(path, 1.0) == 0.5 ** k
        full, decayed = moved[1.0][path], moved[0.5][path]
        assert float(np.abs(full).max()) > 1e-6, path  # the step moved it
        np.testing.assert_allclose(decayed, full * 0.5 ** k, rtol=1e-3, atol=1e-7, err_msg=path)
    assert any("learning rate 0.01 at the head, down to 0.0025 in the deepest layer" in line for line in lines), lines


@pytest.mark.slow
def test_nan_loss_stops_with_clear_message_and_keeps_best(tmp_path, capsys):
    data = _subset(tmp_path / "data", 30, 10)
    args = ["train", "--model", str(WATER_BOTTLES), "--data", str(data), "--runs-dir", str(tmp_path / "runs"),
            "--name", "nan", "--head-init", "warmup", "--warmup-epochs", "1", "--epochs", "3", "--no-augment"]
    # Plain SGD at an infinite rate turns weights into inf and NaN at the first fine-tuning step.
    assert main(args + ["--optimizer", "sgd", "--lr", "inf"]) == 2
    err = capsys.readouterr().err
    assert "NaN" in err and len(err.strip().splitlines()) == 1
    run = tmp_path / "runs" / "nan"
    assert load_model(run).class_names == ["cats", "dogs"]  # the warm-up's best model survived


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume(tmp_path):
    data = _subset(tmp_path / "data", 60, 20)
    run = tmp_path / "runs" / "killed"
    cmd = [sys.executable, "-m", "retreino", "train", "--model", str(WATER_BOTTLES), "--data", str(data),
           "--runs-dir", str(tmp_path / "runs"), "--name", "killed", "--head-init", "warmup", "--warmup-epochs", "1", "--epochs", "3"]
    env = {**os.environ, "RETREINO_QUIET": "1", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    state = run / "state.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if state.exists() and json.loads(state.read_text()).get("epoch", 0) >= 2:
            break
        assert proc.poll() is None, proc.stdout.read().decode()
        time.sleep(0.2)
    time.sleep(1.0)  # into epoch 3
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = json.loads(state.read_text())["epoch"]
    assert 2 <= done < 4, "the kill must land before the run finished"
    resumed = subprocess.run(cmd[:4] + ["--resume", str(run)], env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"Resuming {run} after epoch {done}" in resumed.stdout
    with open(run / "history.csv") as fh:
        epochs = [int(r["epoch"]) for r in csv.DictReader(fh)]
    assert epochs == [1, 2, 3, 4]  # every epoch exactly once, the same count as an uninterrupted run
    assert load_model(run).class_names == ["cats", "dogs"]
    assert json.loads(state.read_text())["finished"] is True


def test_killed_while_calibrating_then_resume_only_calibrates(tmp_path):
    """The epochs are done and state.json says finished, but the end-of-training calibration was
    killed: --resume runs that step alone (no epoch again) instead of "nothing to resume"."""
    data = _subset(tmp_path / "data", 30, 10)
    run = tmp_path / "runs" / "cal"
    cmd = [sys.executable, "-m", "retreino", "train", "--model", str(WATER_BOTTLES), "--data", str(data),
           "--runs-dir", str(tmp_path / "runs"), "--name", "cal", "--epochs", "1"]
    env = {**os.environ, "RETREINO_QUIET": "1", "PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in proc.stdout:  # the kill lands on the line that starts the calibration
        seen.append(line)
        if line.startswith("Calibrating"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert seen and seen[-1].startswith("Calibrating"), "".join(seen)
    assert json.loads((run / "state.json").read_text())["finished"] is True
    assert not (run / "calibration.json").exists()
    rows = (run / "history.csv").read_text()
    resumed = subprocess.run(cmd[:4] + ["--resume", str(run)], env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "finished its 2 epochs but not its calibration; calibrating now" in resumed.stdout
    assert (run / "history.csv").read_text() == rows  # no epoch trained again
    assert json.loads((run / "calibration.json").read_text())["unknown"]["method"] == "knn"
    assert load_model(run / "fine_tuned_model.keras").info.unknown["threshold"] is not None
    again = subprocess.run(cmd[:4] + ["--resume", str(run)], env=env, capture_output=True, text=True, timeout=600)
    assert "already finished (2 epochs); nothing to resume" in again.stdout


def _head_model(dim: int, classes: int):
    """features -> the recipe's softmax head, as re-headed models name it."""
    import keras

    inp = keras.Input((dim,))
    return keras.Model(inp, keras.layers.Dense(classes, activation="softmax", name=HEAD_NAME)(inp))


def test_refit_head_replaces_a_worse_head_and_keeps_a_better_one():
    from retreino.recipe import refit_head

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (3, 16))

    def draw(n):
        y = np.arange(n) % 3
        return (centres[y] + rng.normal(0, 0.8, (n, 16))).astype(np.float32), y

    (tf_, ty), (vf, vy), (mf, _) = draw(120), draw(60), draw(120)
    model = _head_model(16, 3)
    before = [w.copy() for w in model.get_layer(HEAD_NAME).get_weights()]
    # A head that knows nothing (uniform answers) is beaten: replaced, and the model answers as the refit says.
    record = refit_head(model, tf_, ty, vf, vy, np.full((60, 3), 1 / 3), 3, mirror_f=mf)
    assert record["kept"] and record["after"]["val_loss"] < record["before"]["val_loss"] == pytest.approx(np.log(3))
    assert record["after"]["val_accuracy"] > 0.9 and record["C"] in (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
    np.testing.assert_allclose(np.asarray(model(vf)), record["probs"](vf), atol=1e-5)
    assert not np.allclose(model.get_layer(HEAD_NAME).get_weights()[0], before[0])
    # A head already right on every validation image with near-certainty is not: the weights stay.
    model = _head_model(16, 3)
    kept = [w.copy() for w in model.get_layer(HEAD_NAME).get_weights()]
    perfect = np.full((60, 3), 1e-6)
    perfect[np.arange(60), vy] = 1 - 2e-6
    record = refit_head(model, tf_, ty, vf, vy, perfect, 3)
    assert not record["kept"] and "probs" not in record and record["mirrored"] is False
    for w, k in zip(model.get_layer(HEAD_NAME).get_weights(), kept):
        np.testing.assert_array_equal(w, k)
