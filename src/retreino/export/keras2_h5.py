"""Write a Keras 3 model as a Keras 2 (tf.keras) H5 file: the inverse of `models/legacy_h5.py`.

Keras 3's own `model.save("x.h5")` writes Keras 3 layer configs (`batch_shape`, DTypePolicy
objects, `{"args": ..., "kwargs": ...}` nodes) that Keras 2 cannot read, so apps built on
Teachable Machine's sample code (`tf.keras.models.load_model("keras_model.h5")`) would break.
This writer translates each leaf layer's config to its Keras 2 form and flattens nested
Sequential/Functional sub-models into one Functional graph: Keras 2 and Keras 3 number the
nodes of nested models differently, and a flat graph is the one layout both read the same way.

Only layers whose Keras 2 twin computes the same thing are written; anything else (Lambda,
custom and Keras 3-only layers, non-default Keras 3-only options) raises ExportError naming
the layer, never a file that loads into something subtly different.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np

from ..errors import RetreinoError

KERAS2_VERSION = "2.15.0"  # what the file claims to be; any Keras 2 from 2.4 on reads this layout

# Built-in layers whose Keras 2 counterpart has the same config keys (after translation) and
# computes the same function at inference.
SUPPORTED = {
    "InputLayer", "Conv1D", "Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Conv2DTranspose",
    "Dense", "BatchNormalization", "LayerNormalization",
    "ReLU", "LeakyReLU", "ELU", "PReLU", "Activation", "Softmax",
    "Dropout", "SpatialDropout2D", "GaussianNoise", "GaussianDropout",
    "MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D", "GlobalMaxPooling2D",
    "ZeroPadding2D", "Cropping2D", "UpSampling2D", "Flatten", "Reshape", "Permute",
    "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate",
    "Rescaling",
}

# Keras 3-only options, and the value under which dropping them changes nothing.
_DROP_IF = {
    "optional": False,
    "lora_rank": None,
    "lora_alpha": None,
    "quantization_config": None,
    "synchronized": False,
    "renorm": False,
    "renorm_clipping": None,
    "rms_scaling": False,  # LayerNormalization
}
# Keras 2.6+ options: dropped at their default so older Keras 2 (TM's sample code) reads the file too.
_DROP_AT_DEFAULT = {"keepdims": False}
# Keras 3-only options of initializers (VarianceScaling), harmless when None.
_NESTED_DROP = ("input_axes", "output_axes")
_DROP_WITH_RENORM_OFF = ("renorm_momentum",)
# Keras 3 variable names that Keras 2 spelled differently, per layer class.
_WEIGHT_NAMES = {"DepthwiseConv2D": {"kernel": "depthwise_kernel"}}


class ExportError(RetreinoError):
    """A model that a chosen export format cannot express faithfully."""


def write_keras2_h5(model, path, *, fmt: str = "h5", metadata: str | None = None) -> None:
    """Write `model` (Keras 3) to `path` as a Keras 2 H5 file; `metadata` goes in a root attribute."""
    import h5py

    config = keras2_config(model, fmt=fmt)
    leaves = _leaf_objects(model, fmt)
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = KERAS2_VERSION
        f.attrs["backend"] = "tensorflow"
        f.attrs["model_config"] = json.dumps(config)
        if metadata is not None:
            f.attrs["retreino"] = metadata
        weights = f.create_group("model_weights")
        names = [lc["name"] for lc in config["config"]["layers"]]
        weights.attrs["layer_names"] = [n.encode("utf-8") for n in names]
        weights.attrs["backend"] = "tensorflow"
        weights.attrs["keras_version"] = KERAS2_VERSION
        for name in names:
            group = weights.create_group(name)
            layer = leaves.get(name)
            entries = _keras2_weights(layer) if layer is not None else []
            group.attrs["weight_names"] = [w.encode("utf-8") for w, _ in entries]
            for wname, value in entries:
                group.create_dataset(wname, data=value)


def keras2_config(model, *, fmt: str = "h5") -> dict:
    """The Keras 2 `model_config` of a Keras 3 model, flattened into one Functional graph."""
    import keras

    graph = _Graph(fmt)
    top = keras.saving.serialize_keras_object(model)
    cls, cfg = top.get("class_name"), top.get("config", {})
    if cls == "Sequential":
        first = next((lc for lc in cfg.get("layers", []) if lc.get("class_name") == "InputLayer"), None)
        batch_shape = (first or {}).get("config", {}).get("batch_shape") or list(model.input_shape)
        inputs = [graph.add_input(f"{cfg.get('name', 'model')}_input", batch_shape)]
    elif cls in ("Functional", "Model"):
        inputs = []
        for ref in _refs(cfg.get("input_layers")):
            lc = next(lc for lc in cfg["layers"] if lc["name"] == ref[0])
            inputs.append(graph.add_input(ref[0], lc["config"].get("batch_shape")))
    else:
        raise ExportError(f"the model is a bare {cls} layer, not a Sequential or Functional model ({fmt})")
    outputs = graph.flatten(top, inputs)
    return {
        "class_name": "Functional",
        "config": {
            "name": cfg.get("name", "model"),
            "layers": graph.layers,
            "input_layers": [[n, 0, 0] for n, _, _ in inputs],
            "output_layers": [[n, 0, t] for n, _, t in outputs],
        },
    }


class _Graph:
    """Accumulates Keras 2 layer entries while walking nested Keras 3 configs."""

    def __init__(self, fmt: str):
        self.fmt = fmt
        self.layers: list[dict] = []
        self.names: set[str] = set()

    def _claim(self, name: str, cls: str) -> None:
        if name in self.names:
            raise ExportError(
                f"two layers are both named '{name}' ({cls}); {self.fmt} matches weights by layer name. "
                "Rename one before exporting"
            )
        self.names.add(name)

    def add_input(self, name: str, batch_shape) -> tuple[str, int, int]:
        if batch_shape is None:
            raise ExportError(f"input '{name}' has no fixed shape; {self.fmt} needs one")
        self._claim(name, "InputLayer")
        self.layers.append({
            "class_name": "InputLayer",
            "config": {"batch_input_shape": list(batch_shape), "dtype": "float32", "sparse": False,
                       "ragged": False, "name": name},
            "name": name,
            "inbound_nodes": [],
        })
        return (name, 0, 0)

    def flatten(self, obj: dict, inputs: list) -> list:
        """Emit the leaves of a serialized Sequential/Functional fed by `inputs`; return its outputs."""
        cls, cfg = obj["class_name"], obj.get("config", {})
        if cls == "Sequential":
            current = inputs
            for lc in cfg.get("layers", []):
                if lc.get("class_name") == "InputLayer":
                    continue
                current = self._call(lc, current)
            return current
        # Functional: resolve each layer once all the tensors it reads exist.
        produced: dict[tuple[str, int], tuple] = {}
        for i, ref in enumerate(_refs(cfg.get("input_layers"))):
            produced[(ref[0], ref[2])] = inputs[i]
        pending = [lc for lc in cfg.get("layers", []) if lc.get("class_name") != "InputLayer"]
        while pending:
            progressed = False
            for lc in list(pending):
                nodes = lc.get("inbound_nodes", [])
                if len(nodes) > 1:
                    raise ExportError(
                        f"layer '{lc['name']}' ({lc['class_name']}) is called {len(nodes)} times (a shared "
                        f"layer); {self.fmt} export handles layers used once"
                    )
                history = _tensor_refs(nodes[0]["args"]) if nodes else []
                if not all((h[0], h[2]) in produced for h in history):
                    continue
                args = [produced[(h[0], h[2])] for h in history]
                kwargs = nodes[0].get("kwargs", {}) if nodes else {}
                outs = self._call(lc, args, kwargs)
                for t, out in enumerate(outs):
                    produced[(lc["name"], t)] = out
                pending.remove(lc)
                progressed = True
            if not progressed:
                names = ", ".join(lc["name"] for lc in pending[:3])
                raise ExportError(f"cannot order layer(s) {names} for {self.fmt}: the graph is not a plain DAG")
        outs = []
        for ref in _refs(cfg.get("output_layers")):
            outs.append(produced[(ref[0], ref[2])])
        return outs

    def _call(self, lc: dict, inputs: list, kwargs: dict | None = None) -> list:
        cls = lc.get("class_name")
        if cls in ("Sequential", "Functional", "Model"):
            return self.flatten(lc, inputs)
        name = lc.get("config", {}).get("name") or lc.get("name")
        if kwargs and any(_tensor_refs(v) for v in kwargs.values()):
            raise ExportError(f"layer '{name}' ({cls}) takes tensors as keyword arguments; {self.fmt} cannot express that")
        self._claim(name, cls)
        self.layers.append({
            "class_name": cls,
            "config": keras2_layer_config(cls, lc.get("config", {}), self.fmt),
            "name": name,
            "inbound_nodes": [[[n, node, t, dict(kwargs or {})] for n, node, t in inputs]],
        })
        return [(name, 0, 0)]


def _refs(value) -> list:
    """Keras 3 writes one input/output as [name, node, tensor], several as a list of those."""
    if not value:
        return []
    return [value] if isinstance(value[0], str) else list(value)


def _tensor_refs(args) -> list:
    """keras_history triples of every tensor in a Keras 3 node's (nested) arguments, in order."""
    found = []
    if isinstance(args, dict):
        if args.get("class_name") == "__keras_tensor__":
            found.append(tuple(args["config"]["keras_history"]))
        else:
            for v in args.values():
                found.extend(_tensor_refs(v))
    elif isinstance(args, (list, tuple)):
        for v in args:
            found.extend(_tensor_refs(v))
    return found


def keras2_layer_config(cls: str, cfg: dict, fmt: str = "h5") -> dict:
    """Translate one leaf layer's Keras 3 config to Keras 2, or raise ExportError naming the layer."""
    name = cfg.get("name", "?")
    if cls not in SUPPORTED:
        why = (
            "it embeds Python code" if cls in ("Lambda", "TFOpLambda")
            else "it has no Keras 2 equivalent with the same config"
        )
        raise ExportError(
            f"layer '{name}' ({cls}) cannot be expressed in the {fmt} format: {why}. "
            "Export to keras or savedmodel instead, or rebuild the model from built-in layers"
        )
    out = _plain(cfg)
    if not out.get("renorm", False):
        for key in _DROP_WITH_RENORM_OFF:
            out.pop(key, None)
    for key, harmless in _DROP_IF.items():
        if key in out:
            if out[key] != harmless:
                raise ExportError(
                    f"layer '{name}' ({cls}) uses {key}={out[key]!r}, a Keras 3 option the {fmt} format "
                    "(Keras 2) cannot express"
                )
            del out[key]
    for key, default in _DROP_AT_DEFAULT.items():
        if out.get(key, object()) == default:
            del out[key]
    if cls == "InputLayer":
        out["batch_input_shape"] = out.pop("batch_shape", None)
    if cls == "LeakyReLU":
        out["alpha"] = out.pop("negative_slope", 0.3)
    return out


def _plain(value: Any) -> Any:
    """Keras 3 serialization -> Keras 2: drop module/registered_name, DTypePolicy -> its name."""
    if isinstance(value, dict):
        if value.get("class_name") in ("DTypePolicy", "FloatDTypePolicy"):
            return value.get("config", {}).get("name", "float32")
        if "class_name" in value and "config" in value and ("module" in value or "registered_name" in value):
            inner = {k: v for k, v in value["config"].items() if not (k in _NESTED_DROP and v is None)}
            return {"class_name": value["class_name"], "config": _plain(inner)}
        return {k: _plain(v) for k, v in value.items() if k != "build_config"}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _leaf_objects(model, fmt: str) -> dict:
    from ..models.graph import flatten_layers

    leaves: dict = {}
    for layer in flatten_layers(model):
        if layer.name in leaves:
            raise ExportError(f"two layers are both named '{layer.name}'; {fmt} matches weights by layer name")
        leaves[layer.name] = layer
    return leaves


def _keras2_weights(layer) -> list[tuple[str, np.ndarray]]:
    """(Keras 2 weight name, value) in the order Keras 2 creates them: trainable first."""
    rename = _WEIGHT_NAMES.get(layer.__class__.__name__, {})
    ordered = list(layer.trainable_weights) + list(layer.non_trainable_weights)
    if not layer.trainable:
        ordered = list(layer.weights)
    out = []
    for var in ordered:
        short = var.name.split("/")[-1].split(":")[0]
        out.append((f"{layer.name}/{rename.get(short, short)}:0", np.asarray(var.numpy())))
    return out
