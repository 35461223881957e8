"""Where and how training runs: tf.distribute strategies, mixed precision, the acceleration choice."""
from __future__ import annotations

import contextlib

from .. import _env

tf = _env.import_tensorflow()

import keras  # noqa: E402

from ..config import ACCELERATE, DISTRIBUTE, PRECISIONS, TRAIN_CONSTRAINTS  # noqa: E402, F401
from ..constraints import validate  # noqa: E402
from ..errors import RetreinoError  # noqa: E402

_SPEED_FLAGS = {"distribute": "--distribute", "precision": "--precision", "accelerate": "--accelerate"}


def gpus() -> list:
    return tf.config.list_physical_devices("GPU")


def check(cfg) -> None:
    """Reject unknown values with one line before anything is loaded (from config's constraints table)."""
    values = {name: getattr(cfg, name) for name in _SPEED_FLAGS}
    validate(values, {name: TRAIN_CONSTRAINTS[name] for name in _SPEED_FLAGS}, names=_SPEED_FLAGS)


def strategy_for(name: str | None):
    """None (Keras' default single-device strategy) or a tf.distribute strategy.

    `multiworker` reads the cluster from the TF_CONFIG environment variable, as every
    MultiWorkerMirroredStrategy program does; run the same command on every worker.
    """
    if name in (None, "", "none"):
        return None
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise RetreinoError(f"unknown --distribute {name!r}: use {' or '.join(DISTRIBUTE)}")


@contextlib.contextmanager
def run_context(cfg, printer=print):
    """Precision policy and distribution scope for the whole run (model loading included: variables
    must be created inside the strategy's scope and under the policy). Yields the strategy or None."""
    check(cfg)
    policy = keras.mixed_precision.global_policy().name
    mixed = cfg.precision == "mixed" and bool(gpus())
    if cfg.precision == "mixed" and not mixed:
        printer("--precision mixed needs a GPU and none is visible: training in float32")
    strategy = strategy_for(cfg.distribute)
    if strategy is not None:
        printer(f"Distributed: {type(strategy).__name__} over {strategy.num_replicas_in_sync} replica(s)")
    try:
        if mixed:
            keras.mixed_precision.set_global_policy("mixed_float16")
        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            yield strategy
    finally:
        if mixed:
            keras.mixed_precision.set_global_policy(policy)


def use_mixed(cfg) -> bool:
    return cfg.precision == "mixed" and bool(gpus())


def accelerate_reason(cfg) -> str | None:
    """Why frozen-prefix acceleration is off for this run, or None when it is on."""
    if cfg.accelerate == "off":
        return "off (--accelerate off)"
    if cfg.distribute not in (None, "", "none"):
        return "off under --distribute (every replica runs the whole model)"
    if gpus():
        return "off on a GPU (Keras there is faster than ONNX Runtime on the CPU)"
    return None


def patch_symbolic_build(model) -> None:
    """Work around Keras 3.x's first-batch build under MultiWorkerMirroredStrategy.

    Before the first step, Keras' TF trainer (`_maybe_symbolic_build`) takes one distributed batch
    and calls `strategy.reduce("MEAN", (x, y), axis=None)` on the whole tuple; the collective
    strategy's reduce accepts one DistributedValues, not a nested structure, and fails with
    "... with an unsupported type (PerReplica) to a Tensor." (MirroredStrategy takes another path,
    which is why only multi-worker broke). The build needs shapes only, so this gives it the local
    replica's batch instead: no collective, same shapes. Set on the instance; nothing global changes.
    """
    strategy = tf.distribute.get_strategy()
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return
    original = model._maybe_symbolic_build

    def local(v):
        return strategy.experimental_local_results(v)[0] if isinstance(v, tf.distribute.DistributedValues) else v

    def build(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, it in iterator:
                data_batch = tf.nest.map_structure(local, next(it))
                break
        return original(iterator=None, data_batch=data_batch)

    model._maybe_symbolic_build = build
