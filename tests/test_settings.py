"""Settings are checked where they are built, from one table, before anything heavy loads."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import WATER_BOTTLES, cats_vs_dogs_subset
from retreino.cli import main
from retreino.config import TRAIN_CONSTRAINTS, TrainConfig, is_improvement, monitor_mode
from retreino.constraints import SettingError

# (flag, bad value, the start of the message); settings without a flag go through --config.
BAD_FLAGS = [
    ("--epochs", "-1", "--epochs must be an int, 1 or more, got -1"),
    ("--optimizer", "adamm", "unknown --optimizer 'adamm': use adam, adamw, rmsprop or sgd"),
    ("--lr", "0", "--lr must be above 0, got 0.0"),
    ("--unfreeze", "-2", "--unfreeze must be an int, 0 or more, got -2"),
    ("--batch-size", "0", "--batch-size must be an int, 1 or more, got 0"),
    ("--warmup-epochs", "-1", "--warmup-epochs must be an int, 0 or more, got -1"),
    ("--warmup-lr", "-1e-3", "--warmup-lr must be above 0, got -0.001"),
    ("--dropout", "1", "--dropout must be in [0, 1), got 1.0"),
    ("--class-weight", "balance", "unknown --class-weight 'balance': use balanced"),
    ("--label-smoothing", "1.5", "--label-smoothing must be in [0, 1), got 1.5"),
    ("--patience", "-1", "--patience must be an int, 0 or more, got -1"),
    ("--seed", "-3", "--seed must be an int, in [0, 4.29497e+09], got -3"),
    ("--val-split", "1.5", "--val-split must be in [0, 1), got 1.5"),
    ("--test-split", "-0.1", "--test-split must be in [0, 1), got -0.1"),
    ("--resize", "squash", "unknown --resize 'squash': use crop, pad or stretch"),
    ("--cache-mb", "-1", "--cache-mb must be an int, 0 or more, got -1"),
    ("--accelerate", "yes", "unknown --accelerate 'yes': use auto or off"),
    ("--precision", "half", "unknown --precision 'half': use float32 or mixed"),
    ("--distribute", "everywhere", "unknown --distribute 'everywhere': use mirrored or multiworker"),
    ("--rotation", "-5", "--rotation must be in [0, 180], got -5.0"),
    ("--width-shift", "2", "--width-shift must be in [0, 1], got 2.0"),
    ("--height-shift", "-1", "--height-shift must be in [0, 1], got -1.0"),
    ("--zoom", "1", "--zoom must be in [0, 1), got 1.0"),
    ("--brightness", "3", "--brightness must be in [0, 1], got 3.0"),
    ("--contrast", "-1", "--contrast must be in [0, 1], got -1.0"),
    ("--head-init", "probe", "unknown --head-init 'probe': use linear-probe or warmup"),
    ("--tta", "yes", "unknown --tta 'yes': use auto, off or on"),
    ("--weight-average", "swa", "unknown --weight-average 'swa': use ema or off"),
    ("--layer-decay", "0", "--layer-decay must be in (0, 1], got 0.0"),
]
BAD_CONFIG = [
    ("monitor", "val_acc", "unknown monitor 'val_acc': use accuracy, loss, val_accuracy or val_loss"),
    ("reduce_lr_factor", 1.0, "reduce_lr_factor must be in (0, 1), got 1.0"),
    ("reduce_lr_patience", -1, "reduce_lr_patience must be an int, 0 or more, got -1"),
    ("strict", "yes", "strict must be True or False, got 'yes'"),
    ("train_bn", 1, "train_bn must be True or False, got 1"),
    ("tensorboard", "yes", "tensorboard must be True or False, got 'yes'"),
    ("ema_momentum", 1.0, "ema_momentum must be in [0, 1), got 1.0"),
]


def test_every_constrained_setting_has_a_bad_value_below():
    covered = {f[2:].replace("-", "_") for f, _, _ in BAD_FLAGS} | {k for k, _, _ in BAD_CONFIG}
    from retreino.cli.train import FLAGS

    covered = {k for k in TRAIN_CONSTRAINTS if FLAGS.get(k, k)[2:].replace("-", "_") in covered or k in covered}
    assert covered == set(TRAIN_CONSTRAINTS)


def _train_args(tmp_path, *extra):
    return ["train", "--model", str(WATER_BOTTLES), "--data", str(tmp_path / "no-data"),
            "--runs-dir", str(tmp_path / "runs"), *extra]


@pytest.mark.parametrize("flag, value, message", BAD_FLAGS, ids=[f for f, _, _ in BAD_FLAGS])
def test_a_bad_flag_value_is_a_one_line_error_and_makes_no_run(tmp_path, capsys, flag, value, message):
    assert main(_train_args(tmp_path, f"{flag}={value}")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"retreino train: error: {message}"]
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("key, value, message", BAD_CONFIG, ids=[k for k, _, _ in BAD_CONFIG])
def test_a_bad_config_value_is_a_one_line_error_and_makes_no_run(tmp_path, capsys, key, value, message):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"config": {key: value}}))
    assert main(_train_args(tmp_path, "--config", str(config))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"retreino train: error: {message}"]
    assert not (tmp_path / "runs").exists()


def test_a_broken_config_file_is_a_one_line_error(tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_text("{not json")
    assert main(_train_args(tmp_path, "--config", str(config))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"retreino train: error: {config}: not valid JSON")


def test_the_check_runs_before_tensorflow_is_imported(tmp_path):
    code = ("import sys; from retreino.cli import main; rc = main(['train', '--model', 'm', '--data', 'd', "
            "'--epochs', '-1']); assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'imported'; "
            "sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == "retreino train: error: --epochs must be an int, 1 or more, got -1"


def test_a_mistyped_flag_gets_its_command_usage_and_a_suggestion(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--epcohs", "3"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: retreino train ")
    assert err.strip().splitlines()[-1] == "retreino train: error: unrecognized arguments: --epcohs 3 (did you mean --epochs?)"


def test_a_mistyped_command_gets_a_suggestion(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["trian", "--epochs", "3"])
    assert exc.value.code == 2
    assert "unknown command 'trian' (did you mean train?)" in capsys.readouterr().err


def test_api_config_is_checked_where_it_is_built():
    with pytest.raises(SettingError, match=r"^epochs must be an int, 1 or more, got -1$"):
        TrainConfig(epochs=-1)
    with pytest.raises(SettingError, match=r"^val_split \+ test_split must be below 1, got 0.6 \+ 0.5$"):
        TrainConfig(val_split=0.6, test_split=0.5)
    assert TrainConfig(epochs=0, warmup_epochs=2).epochs == 0  # the warm-up alone, asked for
    with pytest.raises(SettingError, match="epochs must be an int, 1 or more, got 0"):
        TrainConfig(epochs=0, warmup_epochs=0)


def test_api_entries_check_before_any_work(tmp_path):
    from retreino.selection.cv import cross_validate
    from retreino.training import train

    for entry in (train, cross_validate):
        with pytest.raises(SettingError, match="unknown optimizer 'nadam'"):
            entry(model=str(WATER_BOTTLES), data=str(tmp_path), optimizer="nadam", runs_dir=str(tmp_path / "runs"))
    assert not (tmp_path / "runs").exists()


def test_serve_checks_its_settings_before_binding():
    pytest.importorskip("fastapi")
    from retreino.serve import ServeSettings, serve

    with pytest.raises(SettingError, match=r"^max_batch must be an int, 1 or more, got 0$"):
        serve(str(WATER_BOTTLES), port=0, settings=ServeSettings(max_batch=0))
    with pytest.raises(SettingError, match=r"^port must be an int, in \[0, 65535\], got 70000$"):
        serve(str(WATER_BOTTLES), port=70000)


def test_the_improvement_direction_follows_the_monitor():
    assert monitor_mode("val_accuracy") == "max" and monitor_mode("accuracy") == "max"
    assert monitor_mode("val_loss") == "min" and monitor_mode("loss") == "min"
    assert is_improvement(0.3, 0.5, "min") and not is_improvement(0.3, 0.5, "max")
    assert is_improvement(0.9, None, "max") and not is_improvement(0.5, 0.5, "min")


@pytest.mark.slow
def test_monitor_val_loss_keeps_the_lowest_loss_model(tmp_path):
    import numpy as np

    from retreino import load_model
    from retreino.training import train

    data = cats_vs_dogs_subset(tmp_path / "data", train=20, validation=10)
    # A high learning rate makes the validation loss move a lot between epochs.
    run = train(model=str(WATER_BOTTLES), data=str(data), epochs=3, warmup_epochs=0, head_init="warmup", learning_rate=3e-3,
                monitor="val_loss", early_stopping_patience=5, test_split=0.0, batch_size=10,
                runs_dir=str(tmp_path / "runs"), name="loss", printer=None)
    losses = [row["val_loss"] for row in run.history]
    assert len(losses) == 3 and len(set(losses)) > 1
    assert run.best_epoch == int(np.argmin(losses)) + 1
    assert run.best_val_accuracy == pytest.approx(min(losses), rel=1e-5)
    state = json.loads((run.dir / "state.json").read_text())
    assert state["best"] == pytest.approx(min(losses), rel=1e-5) and state["best_epoch"] == run.best_epoch
    # The saved best model is the one of that epoch: its validation loss is the lowest one.
    import keras

    from retreino.data import load_dataset, make_pipeline

    best = load_model(run.dir)
    ds = load_dataset(str(data), test_split=0.0)
    val = make_pipeline(ds.validation, image_size=best.info.input_size, preprocessing=best.info.preprocessing,
                        batch_size=10, num_classes=2, label_mode="categorical", training=False,
                        resize_mode=best.info.resize, interpolation=best.info.interpolation)
    model = best.model
    model.compile(loss=keras.losses.CategoricalCrossentropy(), metrics=["accuracy"])
    loss = model.evaluate(val, verbose=0)[0]
    assert loss == pytest.approx(min(losses), abs=2e-3)
