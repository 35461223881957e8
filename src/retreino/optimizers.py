"""The fine-tuning optimizer: a Keras optimizer by name, optionally with discriminative learning rates.

Discriminative fine-tuning (Howard & Ruder, ACL 2018, "Universal Language Model Fine-tuning for
Text Classification"; the layer-wise decay of BEiT and ELECTRA) gives the layers nearest the head
the full learning rate and each deeper one a smaller share: pre-trained features are general near
the input and specific near the output, so the deep ones should move least. `--layer-decay d`
multiplies the rate by `d` per trainable layer with weights, counted down from the head (which
keeps the full rate): with d = 0.8 the 15th layer below it trains at 0.8**15 = 3.5% of it.

Keras 3 has no per-variable learning rate (TF Addons' MultiOptimizer did not survive Keras 2),
and scaling gradients instead would not work with Adam, whose step does not depend on the
gradient's scale. So the rate is scaled where each variable's step is taken, in the optimizer's
`update_step`, wrapped on the one optimizer instance (`with_layer_rates`). Not a subclass: every
saved file (the best model, last.keras) keeps a plain Keras optimizer that loads anywhere,
without retreino and without tripping the loader's refusal of code from outside Keras; the
scales come back from the run's config (`layer_decay`) and the layers that train, on --resume too.
"""
from __future__ import annotations

from . import _env

_env.import_tensorflow()

import keras  # noqa: E402

from .errors import RetreinoError  # noqa: E402

BASES = {"adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD,
         "rmsprop": keras.optimizers.RMSprop, "adamw": keras.optimizers.AdamW}


def make_optimizer(name: str, learning_rate: float | None, ema_momentum: float | None = None):
    """A Keras optimizer by its config name (config.OPTIMIZERS), at `learning_rate`.

    `ema_momentum`: the optimizer also keeps a moving average of the weights (Keras' `use_ema`),
    which `callbacks.AveragedWeights` validates and saves."""
    key = name.lower()
    if key not in BASES:  # TrainConfig.validate rejects it earlier; a field set later lands here
        raise RetreinoError(f"unknown optimizer {name!r}: use one of {', '.join(BASES)}")
    ema = {} if ema_momentum is None else {"use_ema": True, "ema_momentum": ema_momentum}
    return BASES[key](learning_rate=learning_rate, **ema)


def layer_rate_scales(layers: list, decay: float) -> dict[str, float]:
    """{variable path: decay**k} for the k-th layer with trainable weights counted from the last, k >= 1;
    the head (k = 0) and every layer when decay is 1 train at the full rate, so are not named.
    `layers` in forward order (`graph.flatten_layers`)."""
    if decay == 1.0:
        return {}
    scales = {}
    for k, layer in enumerate(reversed([layer for layer in layers if layer.trainable_weights])):
        for variable in layer.trainable_weights if k else ():
            scales[variable.path] = decay ** k
    return scales


def keeps_weight_average(optimizer) -> bool:
    """Whether `optimizer` keeps a moving average of the weights (a resumed run's, too, whatever the config says)."""
    return bool(getattr(_stepping(optimizer), "use_ema", False))


def _stepping(optimizer):
    """The optimizer that takes the steps: mixed precision wraps it in a LossScaleOptimizer."""
    return getattr(optimizer, "inner_optimizer", optimizer)


def with_layer_rates(optimizer, rate_scales: dict[str, float]):
    """`optimizer`, stepping each variable at `learning_rate * rate_scales[variable.path]` (1 for
    variables not named); returns it. Applied again to the same optimizer it replaces the scales."""
    inner = _stepping(optimizer)
    scales = {path: float(s) for path, s in rate_scales.items() if s != 1.0}
    inner.__dict__.pop("update_step", None)  # the class's own step, under any earlier scales
    if not scales:
        return optimizer
    plain_step = inner.update_step
    by_index: list[float] = []

    def update_step(gradient, variable, learning_rate):
        if not by_index:  # built by now: by position in the optimizer's own list, which
            # `_get_variable_index` (what Keras' own steps use to find their slots) maps any form
            # of a variable to: a KerasVariable, its tf.Variable, a distributed replica.
            by_index.extend(scales.get(v.path, 1.0) for v in inner._trainable_variables)
        scale = by_index[inner._get_variable_index(variable)]
        return plain_step(gradient, variable, learning_rate if scale == 1.0 else learning_rate * scale)

    inner.update_step = update_step
    return optimizer
