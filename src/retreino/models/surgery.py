"""Model surgery for fine-tuning: keep or replace the head, freeze all but the last N layers.

Two of the notebook's mistakes are fixed here. "The last 5 layers" counts the *flattened* layers
(a Teachable Machine export has only two top-level layers, so `model.layers[-5:]` unfreezes the
whole network) and only layers with weights count (activations, pooling and dropout have nothing to
train; counting them would leave "the last 5" training just the head), and BatchNormalization stays frozen, in inference mode, unless asked otherwise
(training it on small batches of new data wrecks the statistics learned on ImageNet).
"""
from __future__ import annotations

from dataclasses import dataclass

from .. import _env

_env.import_tensorflow()

import keras  # noqa: E402

from ..errors import ModelLoadError  # noqa: E402
from .graph import find_head, flatten_layers, is_container, iter_containers, model_inputs, nodes_in_order  # noqa: E402
from .info import LoadedModel, ModelInfo  # noqa: E402

POOLING = ("GlobalAveragePooling2D", "GlobalMaxPooling2D", "Flatten")
HEAD_NAME = "retreino_head"


@dataclass
class Prepared:
    """A model ready to compile, and what was done to it."""

    loaded: LoadedModel
    new_head: bool
    reason: str


def prepare_for_classes(
    loaded: LoadedModel, class_names: list[str], dropout: float = 0.0, seed: int = 42
) -> Prepared:
    """Keep the head when it already predicts `class_names`, else put a new softmax head on the features."""
    info = loaded.info
    head, units = find_head(loaded.model)
    n = len(class_names)
    if head != "features":
        same = info.class_names is not None and list(info.class_names) == list(class_names)
        fits = (head == "sigmoid" and units == 1 and n == 2) or units == n
        if same and fits:
            return Prepared(loaded, False, f"the model already predicts {', '.join(class_names)}: head kept")
    features = feature_extractor(loaded.model)
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=loaded.model.input_shape[1:], name="image")
    x = features(inputs)
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name="retreino_dropout")(x)
    outputs = keras.layers.Dense(n, activation="softmax", name=HEAD_NAME)(x)
    model = keras.Model(inputs, outputs, name="retreino_classifier")
    new_info = ModelInfo.from_dict({**info.to_dict(), "class_names": list(class_names), "head": "softmax"})
    before = f"{units}-unit {head} head" if head != "features" else "no head"
    return Prepared(LoadedModel(model, new_info), True, f"{before} replaced by a new {n}-way softmax head")


def feature_extractor(model):
    """The model up to (and including) its last global pooling layer, as one reusable layer."""
    if find_head(model)[0] == "features" and len(model.output_shape) == 2:
        return model
    layers = model.layers
    # Top-level layers up to the one that ends in (or is) the last pooling layer.
    for i in range(len(layers) - 1, -1, -1):
        layer = layers[i]
        if layer.__class__.__name__ in POOLING or (is_container(layer) and _ends_with_pooling(layer)):
            kept = layers[: i + 1]
            break
    else:
        raise ModelLoadError(
            "cannot find the pooled features to put a new head on (no GlobalAveragePooling/Flatten layer "
            "at the top level or at the end of a sub-model)"
        )
    if isinstance(model, keras.Sequential):
        inputs = keras.Input(shape=model.input_shape[1:])
        x = inputs
        for layer in kept:
            x = layer(x)
        return keras.Model(inputs, x, name="features")
    # A sub-model's `.output` is a tensor of its own graph (a run's `features` model, loaded from .keras): take
    # the outer model's call of it instead, or the new model's output is not connected to its inputs.
    node = next((n for n in nodes_in_order(model) if n.operation is kept[-1]), None)
    return keras.Model(model_inputs(model), node.output_tensors[0] if node is not None else kept[-1].output, name="features")


def _ends_with_pooling(container) -> bool:
    leaves = flatten_layers(container)
    return bool(leaves) and leaves[-1].__class__.__name__ in POOLING


def freeze_all_but_last(model, n: int, train_bn: bool = False) -> list:
    """Freeze everything, then unfreeze the last `n` flattened layers; returns the layers left trainable.

    Containers stay "trainable" so that Keras looks inside them; each leaf decides for itself.
    BatchNormalization layers among the last n stay frozen (inference mode) unless `train_bn`.
    """
    for container in iter_containers(model):
        container.trainable = True  # recursive in Keras 3; leaves are set right after
    leaves = flatten_layers(model)
    last = set(map(id, last_weighted(leaves, n)))
    trainable = []
    for layer in leaves:
        on = id(layer) in last and (train_bn or not isinstance(layer, keras.layers.BatchNormalization))
        layer.trainable = on
        if on and layer.weights:
            trainable.append(layer)
    return trainable


def last_weighted(leaves: list, n: int) -> list:
    """The last `n` layers that have weights, in forward order."""
    weighted = [layer for layer in leaves if layer.weights]
    return weighted[-n:] if n > 0 else []


def freeze_head_only(model) -> list:
    """Warm-up: only the new head trains."""
    for container in iter_containers(model):
        container.trainable = True
    trainable = []
    for layer in flatten_layers(model):
        layer.trainable = layer.name == HEAD_NAME
        if layer.trainable:
            trainable.append(layer)
    return trainable


def trainable_report(model, n: int, train_bn: bool) -> list[tuple[str, str, str, int]]:
    """(layer, class, state, params) for the last n+3 flattened layers, for `--dry-run`."""
    import numpy as np

    leaves = flatten_layers(model)
    counted = set(map(id, last_weighted(leaves, n)))
    start = min((leaves.index(layer) for layer in leaves if id(layer) in counted), default=len(leaves))
    rows = []
    for layer in leaves[max(0, start - 2):]:
        params = int(sum(int(np.prod(w.shape)) for w in layer.weights))
        if layer.trainable and layer.weights:
            state = "trains"
        elif isinstance(layer, keras.layers.BatchNormalization) and id(layer) in counted and not train_bn:
            state = "frozen (BatchNorm, inference mode)"
        elif layer.weights:
            state = "frozen"
        else:
            state = "no weights"
        rows.append((layer.name, layer.__class__.__name__, state, params))
    return rows
