"""Experiment tracking in the formats the field already reads: TensorBoard event files and MLflow.

Both are optional (`pip install retreino[tracking]`) and both are plain Keras callbacks that
`train()` adds after its own, so they see the same per-epoch `logs` as history.csv:

- `--tensorboard`: event files in `<run>/tensorboard/{train,validation}/`, one scalar per metric
  per epoch under Keras' own tag names (`epoch_loss`, `epoch_accuracy`, `epoch_learning_rate`), so
  `tensorboard --logdir runs/` overlays training and validation curves of every run.
- `--mlflow [URI]`: one MLflow run per retreino run (a local `mlruns/` file store by default, or
  any tracking URI such as `http://mlflow:5000`): the config as params, every epoch's metrics with
  `step=epoch`, and the best model (`fine_tuned_model.keras`) plus `labels.txt` as artifacts.
  The MLflow run id is kept in `<run>/mlflow_run_id`, so `--resume` continues the same MLflow run.

Only the chief of a multi-worker cluster tracks (the caller decides; see `callbacks_for`).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from . import _env

tf = _env.import_tensorflow()

import keras  # noqa: E402

from . import runs  # noqa: E402
from .errors import RetreinoError  # noqa: E402

TENSORBOARD_DIR = "tensorboard"
MLFLOW_RUN_ID = "mlflow_run_id"
DEFAULT_MLFLOW_URI = "mlruns"
EXPERIMENT = "retreino"


def callbacks_for(cfg, run_dir: Path) -> list:
    """The tracking callbacks `cfg` asks for (empty when none): TensorBoard first, then MLflow."""
    out = []
    if getattr(cfg, "tensorboard", False):
        out.append(TensorBoardLogger(Path(run_dir) / TENSORBOARD_DIR))
    if getattr(cfg, "mlflow", None):
        out.append(MlflowLogger(cfg.mlflow, run_dir, cfg))
    return out


def _lr(model) -> float:
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


class TensorBoardLogger(keras.callbacks.Callback):
    """Per-epoch scalars through `tf.summary`, in the layout keras.callbacks.TensorBoard writes.

    Not keras' own callback: retreino fits each phase (warm-up, fine-tune) in its own `fit`, and
    under frozen-prefix acceleration the model being fit is only the network's tail; this one writes
    one continuous curve across phases and resumes, keyed by the run's global epoch.
    """

    def __init__(self, log_dir: Path):
        super().__init__()
        try:
            import tensorboard  # noqa: F401  (tf.summary writes through it)
        except ImportError as exc:
            raise RetreinoError("--tensorboard needs tensorboard: pip install 'retreino[tracking]'") from exc
        self.log_dir = Path(log_dir)
        self._writers: dict[str, object] = {}

    def _writer(self, split: str):
        if split not in self._writers:
            self._writers[split] = tf.summary.create_file_writer(str(self.log_dir / split))
        return self._writers[split]

    def on_epoch_end(self, epoch, logs=None):
        step = epoch + 1
        for key, value in (logs or {}).items():
            if key.startswith("_"):
                continue
            split, name = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
            with self._writer(split).as_default():
                tf.summary.scalar(f"epoch_{name}", float(value), step=step)
        with self._writer("train").as_default():
            tf.summary.scalar("epoch_learning_rate", _lr(self.model), step=step)
        for w in self._writers.values():
            w.flush()

    def on_train_end(self, logs=None):
        for w in self._writers.values():
            w.flush()


def flat_params(d: dict, prefix: str = "") -> dict[str, str]:
    """{"augment": {"rotation": 20}} -> {"augment.rotation": "20"}: MLflow params are flat strings."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat_params(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v)
    return out


def tracking_uri(uri: str) -> str:
    """A bare folder (the default `mlruns`) becomes a file:// URI; anything with a scheme passes through."""
    if "://" in uri or uri.startswith(("databricks", "file:")):
        return uri
    return Path(uri).expanduser().resolve().as_uri()


class MlflowLogger(keras.callbacks.Callback):
    """One MLflow run per retreino run, through `MlflowClient` (no global active run to leak)."""

    def __init__(self, uri: str, run_dir: Path, cfg):
        super().__init__()
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as exc:
            raise RetreinoError("--mlflow needs MLflow: pip install 'retreino[tracking]' (or mlflow-skinny)") from exc
        self.run_dir, self.cfg = Path(run_dir), cfg
        self.uri = tracking_uri(uri)
        if self.uri.startswith("file:"):
            # MLflow 3 keeps its file store in "maintenance mode" and refuses it unless asked; a local
            # folder is what `mlflow ui --backend-store-uri mlruns` and every older client read.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=self.uri)
        self.run_id: str | None = None

    def _start(self):
        id_file = self.run_dir / MLFLOW_RUN_ID
        if id_file.exists():  # a resume: keep logging into the same MLflow run
            self.run_id = id_file.read_text(encoding="utf-8").strip()
            self.client.update_run(self.run_id, status="RUNNING")
            return
        exp = self.client.get_experiment_by_name(EXPERIMENT)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(EXPERIMENT)
        run = self.client.create_run(exp_id, run_name=self.run_dir.name,
                                     tags={"retreino.run_dir": str(self.run_dir.resolve())})
        self.run_id = run.info.run_id
        id_file.write_text(self.run_id + "\n", encoding="utf-8")
        params = flat_params(self.cfg.to_dict())
        from mlflow.entities import Param

        items = [Param(k, v[:6000]) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):  # MLflow's batch limit
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def on_train_begin(self, logs=None):
        if self.run_id is None:
            self._start()

    def on_epoch_end(self, epoch, logs=None):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, epoch + 1) for k, v in (logs or {}).items() if not k.startswith("_")]
        metrics.append(Metric("lr", _lr(self.model), now, epoch + 1))
        self.client.log_batch(self.run_id, metrics=metrics)

    def on_train_end(self, logs=None):
        # Each phase ends its own fit: the best model so far is (re)logged, the last one wins.
        for name in (runs.BEST_KERAS, runs.LABELS):
            path = self.run_dir / name
            if path.exists():
                self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, status="FINISHED")
