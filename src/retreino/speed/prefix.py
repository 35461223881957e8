"""Split a model into a frozen prefix (forward only) and a trainable tail that shares its layers.

Fine-tuning the last few layers spends almost all its time in the frozen backbone's forward
pass, which never changes. `split_model` cuts the network where the first layer that can train
(or that behaves differently in training, like Dropout) meets the data: everything before the
cut is the *prefix*, a plain function of the pixels that can run in a faster runtime and be
cached; everything after is the *tail*, a Keras model built from the very same layer objects,
so training the tail trains the full model (saving the full model saves the trained weights).

Nested models are flattened first: a Teachable Machine export is
Sequential[Sequential[Functional MobileNetV2, GAP], Sequential[Dense, Dense]] and a re-headed one
is Functional[Input, features(...), Dense]. Each leaf layer is called again on fresh symbolic
tensors, following the nested graphs' own nodes, which gives one flat functional graph. When the
cut crosses a residual connection the tail simply has several inputs.
"""
from __future__ import annotations

from dataclasses import dataclass

from .. import _env

_env.import_tensorflow()

import keras  # noqa: E402

from ..models.graph import nodes_in_order  # noqa: E402

# Layers whose output depends on `training` even without trainable weights: they cannot run in
# the prefix, which is always evaluated in inference mode.
STOCHASTIC = ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
              "GaussianDropout", "AlphaDropout", "ActivityRegularization")


@dataclass
class Split:
    """A model cut in two. `tail(prefix(x)) == full(x)`, and `tail` owns the full model's trainable layers."""

    full: keras.Model
    prefix: keras.Model | None  # None: nothing is frozen at the front, so nothing to split off
    tail: keras.Model
    prefix_layers: int  # leaf layers in the prefix (for messages)

    @property
    def useful(self) -> bool:
        return self.prefix is not None and self.prefix_layers > 0


def flat_model(model: keras.Model) -> keras.Model:
    """The same computation as `model`, one level deep: its leaf layers called on new inputs."""
    inputs = [keras.Input(shape=t.shape[1:], dtype=t.dtype, name=f"input_{i}") for i, t in enumerate(model.inputs)]
    outputs = _call_flat(model, inputs if len(inputs) > 1 else inputs[0])
    return keras.Model(inputs if len(inputs) > 1 else inputs[0], outputs, name=f"{model.name}_flat")


def _call_flat(layer, *args, **kwargs):
    if isinstance(layer, keras.Sequential):
        x = args[0]
        for inner in layer.layers:
            x = _call_flat(inner, x)
        return x
    if isinstance(layer, keras.Model) and hasattr(layer, "_run_through_graph"):
        # Drop call-time flags such as training=...: leaves are called symbolically.
        return layer._run_through_graph(args[0], operation_fn=lambda op: (lambda *a, **k: _call_flat(op, *a, **k)))
    if isinstance(layer, keras.Model):
        raise ValueError(f"cannot look inside the subclassed model {layer.name!r}")
    return layer(*args, **kwargs)


def _static(layer) -> bool:
    """A layer whose output is a fixed function of its inputs during training."""
    if layer.trainable_weights:
        return False
    if layer.__class__.__name__ in STOCHASTIC or layer.__class__.__name__.startswith("Random"):
        return False
    if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable:
        return False  # trainable BN normalises with batch statistics in training
    return True


def split_model(model: keras.Model) -> Split:
    """Cut `model` after its longest frozen, deterministic front part (see the module docstring)."""
    flat = flat_model(model)
    static_ids = {id(t) for t in flat.inputs}  # tensors computable by the prefix
    tail_inputs: dict[int, object] = {}  # static tensors that tail nodes consume, in order of use
    prefix_layers = set()
    for node in nodes_in_order(flat):
        if not node.operation or node.is_input:
            continue
        inputs = node.input_tensors
        if all(id(t) in static_ids for t in inputs) and _static(node.operation):
            static_ids.update(id(t) for t in node.outputs)
            prefix_layers.add(id(node.operation))
        else:
            for t in inputs:
                if id(t) in static_ids:
                    tail_inputs.setdefault(id(t), t)
    outputs = flat.outputs
    for t in outputs:  # an output the prefix computes on its own would leave the tail empty
        if id(t) in static_ids:
            return Split(model, None, flat, 0)
    cut = list(tail_inputs.values())
    if not prefix_layers or any(t is x for t in cut for x in flat.inputs):
        return Split(model, None, flat, 0)
    inputs = flat.inputs if len(flat.inputs) > 1 else flat.inputs[0]
    prefix = keras.Model(inputs, cut if len(cut) > 1 else cut[0], name="frozen_prefix")
    # Functional models accept intermediate tensors as inputs and clone fresh Input layers for them.
    tail = keras.Model(cut if len(cut) > 1 else cut[0], outputs if len(outputs) > 1 else outputs[0], name="trainable_tail")
    return Split(model, prefix, tail, len(prefix_layers))
