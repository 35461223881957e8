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
        _configure_coordination()
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise RetreinoError(f"unknown --distribute {name!r}: use {' or '.join(DISTRIBUTE)}")


def _configure_coordination() -> None:
    """TensorFlow's coordination service as MultiWorkerMirroredStrategy would set it up, but with
    the heartbeat timeout from $RETREINO_HEARTBEAT_TIMEOUT_S when that is set.

    A worker that sends no heartbeat within the timeout (TF's default: 10 s) is declared dead and
    every collective aborts. On a crowded machine a live worker can miss that (measured: two
    workers on 2 cores under a load of 30 failed with "Deadline Exceeded" on the heartbeat); a
    longer timeout trades slower detection of a really dead worker for that. The strategy skips
    its own set-up when a service is configured, so this is the one place the value is chosen.
    """
    import os

    seconds = os.environ.get("RETREINO_HEARTBEAT_TIMEOUT_S")
    if not seconds:
        return
    try:
        timeout_ms = int(float(seconds) * 1000)
    except ValueError:
        raise RetreinoError(f"RETREINO_HEARTBEAT_TIMEOUT_S must be a number of seconds, not {seconds!r}") from None
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2  # where TF 2.21 keeps it
    from tensorflow.python.distribute import multi_worker_util
    from tensorflow.python.eager import context

    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    spec = resolver.cluster_spec()
    if resolver.task_type not in ("chief", "worker") or context.context().coordination_service is not None:
        return
    jobs = [coordination_config_pb2.CoordinatedJob(name=job, num_tasks=spec.num_tasks(job))
            for job in ("chief", "worker") if job in spec.jobs]
    context.context().configure_coordination_service(
        service_type="standalone", service_leader=multi_worker_util.coordination_leader(spec),
        coordinated_jobs=jobs, heartbeat_timeout_in_ms=timeout_ms)


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


def in_multi_worker_mode(strategy=None) -> bool:
    """True under a MultiWorkerMirroredStrategy whose TF_CONFIG names more than one worker."""
    strategy = strategy or tf.distribute.get_strategy()
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and strategy.extended._in_multi_worker_mode()


def is_chief(strategy=None) -> bool:
    """TensorFlow's convention: the task of type "chief", or worker 0 when the cluster has no chief.

    Every worker runs the same program; only the chief writes the run directory (the others
    train in a temporary one, deleted at the end: TF's own advice for checkpoints on workers).
    """
    strategy = strategy or tf.distribute.get_strategy()
    if not in_multi_worker_mode(strategy):
        return True
    resolver = strategy.cluster_resolver
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def tf_config_is_chief() -> bool:
    """`is_chief` read from the TF_CONFIG variable alone (before any strategy exists)."""
    import json
    import os

    try:
        spec = json.loads(os.environ.get("TF_CONFIG") or "{}")
    except ValueError:
        return True
    task, cluster = spec.get("task") or {}, spec.get("cluster") or {}
    if task.get("type") == "chief" or not task:
        return True
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0 and "chief" not in cluster


def worker_name(strategy=None) -> str:
    strategy = strategy or tf.distribute.get_strategy()
    resolver = strategy.cluster_resolver
    return f"{resolver.task_type}{resolver.task_id}"


def patch_symbolic_build(model) -> None:
    """Work around two Keras 3.x (3.15) problems of `fit` under a tf.distribute strategy. Set on the
    model instance, only when a strategy is active: nothing global changes.

    1. Before the first step, Keras' TF trainer (`_maybe_symbolic_build`) draws one batch from a
       fresh iterator of the training dataset to learn its shapes. That iterator consumes one
       reshuffle of a `shuffle(reshuffle_each_iteration=True)` dataset, so every epoch of a
       distributed fit sees the order a single-device fit sees one epoch later: the cause of the
       mirrored-vs-single gap with several shuffled batches (0.84 vs 0.81 loss). Under
       MultiWorkerMirroredStrategy the same build then calls `strategy.reduce("MEAN", (x, y))` on a
       whole tuple, which the collective strategy refuses ("... unsupported type (PerReplica) to a
       Tensor."). The build needs shapes and dtypes only, so here it gets the dataset's
       `element_spec` (TensorSpecs have both): no batch drawn, no collective, same shapes.
    2. Under multi-worker, `reduce_per_replica` reduces every logged value with
       `strategy.reduce("MEAN", v, axis=0)`, and metric results are scalars ("Invalid reduction
       dimension 0 for input with 0 dimensions", tensorflow/tensorflow#72388). The steps here return
       each scalar as a 1-element vector, whose axis-0 mean over all workers is the scalar's
       mean: the same figure on every worker, so callbacks (early stopping, LR schedule) agree.
    """
    if not tf.distribute.has_strategy():
        return
    strategy = tf.distribute.get_strategy()
    original = model._maybe_symbolic_build

    def build(iterator=None, data_batch=None):
        if iterator is not None and data_batch is None:
            data_batch = iterator.data_adapter.get_tf_dataset().element_spec
        return original(iterator=None, data_batch=data_batch)

    model._maybe_symbolic_build = build
    if not in_multi_worker_mode(strategy):
        return

    def as_vectors(step):
        def run(data):
            return tf.nest.map_structure(lambda v: tf.reshape(v, [1]) if v.shape.rank == 0 else v, step(data))
        return run

    model.train_step = as_vectors(model.train_step)
    model.test_step = as_vectors(model.test_step)
