"""The default recipe's first phase: a linear probe fitted to convergence, then fine-tuning (LP-FT).

Kumar et al. (ICLR 2022, "Fine-Tuning can Distort Pretrained Features and Underperform
Out-of-Distribution") show that fine-tuning from a random head distorts the features the
backbone brought, and that fitting the head first (a linear probe) then fine-tuning avoids it.
Here the probe is scikit-learn's `LogisticRegression` on the frozen backbone's pooled features of
the training split (photos fitted by the model's resize contract, no augmentation), with its
inverse regularisation C chosen on the validation split's log loss; its weights become the new
Dense head. The probe is recorded as the run's first epoch and checkpointed, and a fine-tuning
epoch replaces it only when it beats it on validation in accuracy AND loss (`best_val_loss` in
the run state, which RunRecorder honours): a run never ends worse on validation than the
baseline a user would try first. Mirrored copies of the training photos join the probe's
training set when they lower the validation loss (`MIRROR_TRAINING`; docs/accuracy.md).

`docs/accuracy.md` has the measurements behind these choices.
"""
from __future__ import annotations

import time
import warnings

import numpy as np

from . import _env

_env.import_tensorflow()

import keras  # noqa: E402

from .models.graph import model_inputs  # noqa: E402
from .models.surgery import HEAD_NAME  # noqa: E402

PHASE = "linear-probe"
HEAD_INITS = ("linear-probe", "warmup")
# Inverse regularisation strengths tried; the validation split picks one.
C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
# The probe is fitted twice, on the training photos and on the photos plus their mirror images
# (the flips augmentation would show), and the validation loss keeps one: the mirrored copies
# lowered it on 4 of the 6 rows of bench/accuracy.py and raised it on 2 (docs/accuracy.md).
MIRROR_TRAINING = True


def feature_function(model):
    """scaled images -> the input of the model's new head, in inference mode (BatchNorm, Dropout)."""
    import tensorflow as tf

    features = keras.Model(model_inputs(model), model.get_layer(HEAD_NAME).input)
    return tf.function(lambda x: features(x, training=False), reduce_retracing=True)


def pooled_features(fn, images_ds, flip: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, D), integer labels (N,)) of a dataset of (scaled images, labels), in its order."""
    import tensorflow as tf

    xs, ys = [], []
    for x, y in images_ds:
        if flip:
            x = tf.reverse(x, axis=[2])
        xs.append(np.asarray(fn(x)))
        y = np.asarray(y)
        ys.append(y.argmax(-1) if y.ndim == 2 and y.shape[-1] > 1 else y.reshape(-1).astype(np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def fit_probe(train_x, train_y, val_x, val_y, n_classes: int, grid=C_GRID):
    """The LogisticRegression with the lowest validation log loss over `grid` -> (model, C, val probs)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    best = None
    labels = np.arange(n_classes)
    for c in grid:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # lbfgs convergence notes at the largest C
            lr = LogisticRegression(C=c, max_iter=2000).fit(train_x, train_y)
        probs = full_probs(lr, val_x, n_classes)
        loss = float(log_loss(val_y, probs, labels=labels))
        if best is None or loss < best[0]:
            best = (loss, lr, c, probs)
    return best[1], best[2], best[3]


def log_loss_over(y, probs, n_classes: int) -> float:
    """Log loss with every class counted, also those missing from `y` (a small validation split can miss one)."""
    from sklearn.metrics import log_loss

    return float(log_loss(y, probs, labels=np.arange(n_classes)))


def full_probs(lr, x, n_classes: int) -> np.ndarray:
    """predict_proba over all classes (a class missing from training gets probability 0)."""
    out = np.zeros((len(x), n_classes), np.float64)
    out[:, lr.classes_] = lr.predict_proba(x)
    # Float32 features give float32 probabilities, whose rows miss 1 by more than the float64
    # tolerance of sklearn's log_loss (a warning per call in the training log): normalise in float64.
    return out / out.sum(axis=1, keepdims=True)


def head_weights(lr, n_classes: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """A fitted LogisticRegression as the (kernel (D, K), bias (K,)) of a softmax Dense layer.

    Binary: sklearn's one logit z becomes the pair (-z/2, z/2), whose softmax is (1 - s(z), s(z))."""
    kernel = np.zeros((dim, n_classes), np.float32)
    bias = np.full((n_classes,), -30.0, np.float32)  # classes never seen in training: never predicted
    coef, intercept = lr.coef_, lr.intercept_
    if coef.shape[0] == 1:
        a, b = lr.classes_
        kernel[:, a], kernel[:, b] = -coef[0] / 2, coef[0] / 2
        bias[a], bias[b] = -intercept[0] / 2, intercept[0] / 2
    else:
        for row, cls in enumerate(lr.classes_):
            kernel[:, cls], bias[cls] = coef[row], intercept[row]
    return kernel, bias


def run_linear_probe(trainer, state: dict, history: list) -> None:
    """The LP phase of a `_Trainer` run: fit, put the weights in the head, record and checkpoint it
    as one epoch (so --resume, the history and the best-model logic see it like any other)."""
    from .callbacks import NanGuard, RunRecorder

    t0 = time.monotonic()
    model, cfg = trainer.loaded.model, trainer.cfg
    n_classes = len(trainer.dataset.class_names)
    train_ds, val_ds = trainer.pipelines(ordered_train=True)
    fn = feature_function(model)
    tx, ty = pooled_features(fn, train_ds)
    vx, vy = pooled_features(fn, val_ds)
    lr, c, val_probs = fit_probe(tx, ty, vx, vy, n_classes)
    mirrored = False
    if MIRROR_TRAINING:
        fx, _ = pooled_features(fn, train_ds, flip=True)
        lr_m, c_m, val_probs_m = fit_probe(np.concatenate([tx, fx]), np.concatenate([ty, ty]), vx, vy, n_classes)
        if log_loss_over(vy, val_probs_m, n_classes) < log_loss_over(vy, val_probs, n_classes):
            lr, c, val_probs, mirrored = lr_m, c_m, val_probs_m, True
    kernel, bias = head_weights(lr, n_classes, tx.shape[1])
    model.get_layer(HEAD_NAME).set_weights([kernel, bias])

    from sklearn.metrics import log_loss

    train_probs = full_probs(lr, tx, n_classes)
    labels = np.arange(n_classes)
    logs = {
        "loss": float(log_loss(ty, train_probs, labels=labels)),
        "accuracy": float(np.mean(train_probs.argmax(1) == ty)),
        "val_loss": float(log_loss(vy, val_probs, labels=labels)),
        "val_accuracy": float(np.mean(val_probs.argmax(1) == vy)),
    }
    # Float32, as Keras reports its metrics: fine-tuning must beat the probe, not its rounding.
    logs = {k: float(np.float32(v)) for k, v in logs.items()}
    state.extra["best_val_loss"] = logs["val_loss"]  # RunRecorder: a later epoch must not be worse in loss either
    state.extra["probe_c"] = float(c)  # ood.fit_after_training refits this probe out of fold to fit T
    state.extra["probe_mirrored"] = mirrored  # its folds would need the mirrored copies too: ood skips them
    trainer.freeze("warmup")
    trainer.compile(model, 0.0)  # RunRecorder reads a learning rate; no gradient step is taken here
    recorder = RunRecorder(trainer.run_dir, trainer.save_best, history, state, PHASE, NanGuard(), monitor=cfg.monitor)
    recorder.set_model(model)
    recorder.on_epoch_begin(0)
    recorder.t0 = t0
    recorder.on_epoch_end(0, logs)
    _tell_callbacks(trainer.extra_callbacks, model, logs)
    trainer.printer(f"Linear probe: logistic regression on {len(ty):,} pooled feature vectors"
                    f"{' and their mirror images' if mirrored else ''}, "
                    f"C={c:g} chosen on validation: val_accuracy {logs['val_accuracy']:.3f}, "
                    f"val_loss {logs['val_loss']:.4f} ({time.monotonic() - t0:.0f} s)")


def refit_head(model, train_f, train_y, val_f, val_y, val_probs, n_classes: int, mirror_f=None) -> dict | None:
    """After fine-tuning won: the head refitted as a linear probe on the fine-tuned features, kept when better.

    Fine-tuning leaves the head where a few epochs of small SGD steps on augmented photos put it; the
    convex fit on the new features (C on validation log loss, with the mirrored copies when they lower
    it, as the first probe) is the head those features support best. It replaces the head only when it
    is better on validation in accuracy and loss, the rule fine-tuning itself had to pass; then it
    returns what changed and its `probs(features)`, else None. `docs/accuracy.md` ("the head refitted").
    """
    lr, c, probs = fit_probe(train_f, train_y, val_f, val_y, n_classes)
    mirrored = False
    if mirror_f is not None:
        lr_m, c_m, probs_m = fit_probe(np.concatenate([train_f, mirror_f]), np.concatenate([train_y, train_y]),
                                       val_f, val_y, n_classes)
        if log_loss_over(val_y, probs_m, n_classes) < log_loss_over(val_y, probs, n_classes):
            lr, c, probs, mirrored = lr_m, c_m, probs_m, True
    before = {"val_loss": log_loss_over(val_y, val_probs, n_classes),
              "val_accuracy": float(np.mean(np.argmax(val_probs, 1) == val_y))}
    after = {"val_loss": log_loss_over(val_y, probs, n_classes), "val_accuracy": float(np.mean(probs.argmax(1) == val_y))}
    record = {"kept": after["val_accuracy"] >= before["val_accuracy"] and after["val_loss"] < before["val_loss"],
              "C": float(c), "mirrored": mirrored, "before": before, "after": after}
    if not record["kept"]:
        return record
    model.get_layer(HEAD_NAME).set_weights(list(head_weights(lr, n_classes, train_f.shape[1])))
    record["probs"] = lambda f: full_probs(lr, f, n_classes)
    return record


def describe_refit(record: dict) -> str:
    """The training log's line for `refit_head`."""
    b, a = record["before"], record["after"]
    figures = (f"val_accuracy {b['val_accuracy']:.3f} -> {a['val_accuracy']:.3f}, "
               f"val_loss {b['val_loss']:.4f} -> {a['val_loss']:.4f}")
    if record["kept"]:
        return (f"Head refitted as a linear probe on the fine-tuned features (C={record['C']:g}"
                f"{', with mirror images' if record['mirrored'] else ''}): {figures}")
    return f"Head kept as fine-tuned: a linear probe on the fine-tuned features was not better on validation ({figures})"


def best_is_probe(run_dir, state) -> bool:
    """Whether a run's best model is its linear probe: the epoch its history records as this phase."""
    from . import runs

    if state is None or not state.best_epoch:
        return False
    history = runs.read_history(run_dir)
    return len(history) >= state.best_epoch and history[state.best_epoch - 1].get("phase") == PHASE


def _tell_callbacks(callbacks: list, model, logs: dict) -> None:
    """The probe epoch, as a one-epoch `fit` would show it to the extra callbacks (TensorBoard,
    MLflow, a tuner's pruning): their curves start at epoch 1 like history.csv."""
    for cb in callbacks:
        cb.set_model(model)
        cb.on_train_begin()
        cb.on_epoch_begin(0)
        cb.on_epoch_end(0, dict(logs))
        cb.on_train_end(dict(logs))
