"""Tracking: a real training run through the CLI, read back with TensorBoard's and MLflow's own readers."""
from __future__ import annotations

import csv

import pytest

from conftest import WATER_BOTTLES, cats_vs_dogs_subset

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    from retreino.cli import main

    tmp = tmp_path_factory.mktemp("tracking")
    data = cats_vs_dogs_subset(tmp / "data", train=8, validation=4)
    uri = tmp / "mlruns"
    rc = main(["train", "--model", str(WATER_BOTTLES), "--data", str(data), "--runs-dir", str(tmp / "runs"),
               "--name", "tracked", "--epochs", "1", "--batch-size", "8",
               "--tensorboard", "--mlflow", str(uri)])
    assert rc == 0
    run_dir = tmp / "runs" / "tracked"
    with open(run_dir / "history.csv", newline="") as fh:
        history = list(csv.DictReader(fh))
    return run_dir, uri, history


@pytest.mark.slow
def test_tensorboard_event_files_hold_every_epoch(tracked_run):
    import tensorflow as tf
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _, history = tracked_run
    assert [row["phase"] for row in history] == ["linear-probe", "finetune"]
    for split, prefix in (("train", ""), ("validation", "val_")):
        acc = EventAccumulator(str(run_dir / "tensorboard" / split))
        acc.Reload()
        assert {"epoch_loss", "epoch_accuracy"} <= set(acc.Tags()["tensors"]), acc.Tags()
        for metric in ("loss", "accuracy"):
            events = acc.Tensors(f"epoch_{metric}")
            assert [e.step for e in events] == [1, 2], split
            values = [float(tf.make_ndarray(e.tensor_proto)) for e in events]
            expected = [float(row[prefix + metric]) for row in history]
            assert values == pytest.approx(expected, rel=1e-5)


@pytest.mark.slow
def test_mlflow_run_has_params_metrics_and_best_model(tracked_run):
    import mlflow
    from mlflow.tracking import MlflowClient

    run_dir, uri, history = tracked_run
    from retreino.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri(str(uri)))
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["epochs"] == "1" and run.data.params["batch_size"] == "8"
    assert run.data.params["augment.rotation"] == "20.0"
    client = MlflowClient(tracking_uri=tracking_uri(str(uri)))
    val_acc = client.get_metric_history(run_id, "val_accuracy")
    assert sorted(m.step for m in val_acc) == [1, 2]
    assert [m.value for m in sorted(val_acc, key=lambda m: m.step)] == pytest.approx(
        [float(row["val_accuracy"]) for row in history], rel=1e-6)
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"fine_tuned_model.keras", "labels.txt"} <= artifacts
