"""Model selection: k-fold cross-validation (`cross_validate`) and hyper-parameter search (`tune`).

Both drive `retreino.training.train` once per fold or trial, so every fold and trial is an
ordinary run directory (config.json, history.csv, fine_tuned_model.keras ...) that
`retreino train --config <dir>/config.json` reproduces and `retreino evaluate --run` measures.
"""
from __future__ import annotations

__all__ = ["CVResult", "TuneResult", "cross_validate", "tune"]


def __getattr__(name):
    # Lazy, so that `retreino --help` does not import TensorFlow or Optuna.
    if name in ("cross_validate", "CVResult"):
        from . import cv

        return getattr(cv, name)
    if name in ("tune", "TuneResult"):
        from . import tune

        return getattr(tune, name)
    raise AttributeError(name)
