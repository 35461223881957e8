"""Walking a Keras model as a flat list of layers, whatever its nesting."""
from __future__ import annotations

from typing import Iterator


def model_inputs(model):
    """A model's inputs as a new `keras.Model` over them should take them: the tensor itself when there is one.

    Given the list `model.inputs`, Keras builds a model that expects a list and warns ("The structure
    of `inputs` doesn't match the expected structure") each time it is called with one array.
    """
    return model.inputs[0] if len(model.inputs) == 1 else model.inputs


def nodes_in_order(model) -> list:
    """The calls (Keras `Node`s) of a functional model's graph, inputs first, outputs last.

    Keras 3 has no public accessor for a functional graph's nodes; `_nodes_by_depth` (depth 0 is
    the outputs) is what Keras' own `Functional` uses to run and save the graph. This is the one
    place retreino reads it, so a Keras change breaks one function, not three modules.
    """
    by_depth = model._nodes_by_depth
    return [n for depth in sorted(by_depth, reverse=True) for n in by_depth[depth]]


def is_container(layer) -> bool:
    import keras

    return isinstance(layer, keras.Model)


def flatten_layers(model) -> list:
    """Leaf layers in forward order, descending into nested Sequential/Functional models.

    "The last N layers" means the last N of this list: a Teachable Machine export has only
    three top-level layers, two of which are whole sub-models.
    """
    out = []

    def walk(m):
        for layer in m.layers:
            if is_container(layer):
                walk(layer)
            else:
                out.append(layer)

    walk(model)
    # Input layers carry no computation; they would only dilute the count.
    return [layer for layer in out if layer.__class__.__name__ != "InputLayer"]


def iter_containers(model) -> Iterator:
    yield model
    for layer in model.layers:
        if is_container(layer):
            yield from iter_containers(layer)


def find_head(model) -> tuple[str, int]:
    """Classify the output: ("softmax"|"sigmoid"|"logits"|"features", output units)."""
    shape = model.output_shape
    if isinstance(shape, list):
        shape = shape[0]
    units = int(shape[-1]) if shape[-1] is not None else 0
    if len(shape) != 2:
        return "features", units
    layers = flatten_layers(model)
    for layer in reversed(layers):
        name = layer.__class__.__name__
        if name == "Softmax":
            return "softmax", units
        if name == "Activation" or hasattr(layer, "activation"):
            act = getattr(layer, "activation", None)
            act_name = getattr(act, "__name__", str(act))
            if act_name == "softmax":
                return "softmax", units
            if act_name == "sigmoid":
                return "sigmoid", units
            if name in ("Dense", "Activation"):
                return ("logits" if act_name == "linear" else "features"), units
        if name in ("Dropout", "Flatten", "Reshape"):
            continue
        if name in ("GlobalAveragePooling2D", "GlobalMaxPooling2D"):
            return "features", units
    return "features", units
