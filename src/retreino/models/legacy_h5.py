"""Rebuild a Keras 2 (tf.keras) H5 model as a native Keras 3 model.

Keras 3 refuses most Keras 2 H5 files found in the wild: `DepthwiseConv2D(groups=1)` is an
unknown argument, and nested Sequential/Functional models fail to re-link ("expects 1 input(s),
but it received 2 input tensors"). Instead of patching Keras, retreino reads the saved graph
itself: every leaf layer is deserialised by Keras 3 from its (translated) config, the graph is
re-linked from the Keras 2 node lists, and weights are assigned layer by layer, matched by the
layer and weight names stored in the file and checked by shape. Anything that cannot be rebuilt
faithfully raises ModelLoadError naming the layer.
"""
from __future__ import annotations

import json
from collections import defaultdict

from ..errors import ModelLoadError, UnsafeModelError
from ..safety import CODE_LAYERS, config_nodes

CONTAINERS = {"Sequential", "Functional", "Model"}

# Keras 2 config keys that Keras 3 no longer accepts, and the only value that is harmless to drop.
_DROPPABLE = {
    "DepthwiseConv2D": {"groups": 1},
}
# Keys Keras 2 wrote on every layer that Keras 3 takes from the graph instead.
_SHAPE_KEYS = ("batch_input_shape", "input_shape", "batch_size", "input_dim")
# Keras 2 weight names that Keras 3 renamed.
_WEIGHT_ALIASES = {"depthwise_kernel": "kernel"}


MAX_CONFIG_DEPTH = 200  # real model configs nest a few levels per container; 5,000 is an attack


def read_model_config(h5file, path="the model file") -> dict:
    raw = h5file.attrs.get("model_config")
    if raw is None:
        raise ModelLoadError(f"{path}: no model config")
    config = parse_json(raw, f"{path} model_config")
    if not isinstance(config, dict) or not isinstance(config.get("config", {}), (dict, list)):
        raise ModelLoadError(f"{path}: model_config is not a model config (a JSON {type(config).__name__})")
    return config


def parse_json(raw, what: str):
    """JSON text from a model file, refused on bad encoding or nesting deeper than MAX_CONFIG_DEPTH."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ModelLoadError(f"{what} is not UTF-8 text") from exc
    if not isinstance(raw, str):
        raise ModelLoadError(f"{what} is not JSON text")
    depth = deepest = 0
    for ch in raw:  # brackets inside strings only over-count, which errs on the side of refusing
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    if deepest > MAX_CONFIG_DEPTH:
        raise ModelLoadError(f"{what} nests {deepest} levels deep (over {MAX_CONFIG_DEPTH}): not a model config")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ModelLoadError(f"{what} is not valid JSON ({str(exc).splitlines()[0][:120]})") from exc


def find_code_layers(config: dict) -> list[str]:
    """Names of layers in a (nested) config that embed Python code."""
    found = []
    for c in config_nodes(config):
        if c.get("class_name") in CODE_LAYERS:
            cfg = c.get("config") if isinstance(c.get("config"), dict) else {}
            found.append(f"{c['class_name']} '{cfg.get('name', c.get('name', '?'))}'")
    return found


def rebuild(config: dict, *, unsafe: bool = False):
    """Build a Keras 3 model (untrained weights) from a Keras 2 `model_config`."""
    code = find_code_layers(config)
    if code and not unsafe:
        raise UnsafeModelError(
            f"the model embeds Python code ({', '.join(code[:3])}); loading it runs that code. "
            "Pass --unsafe (unsafe=True) only if you trust the file"
        )
    from keras.src.saving.serialization_lib import SafeModeScope

    from ..safety import file_arguments

    files = file_arguments(config)
    if files:
        raise UnsafeModelError(f"refused: {files[0]} names a file, which loading would read")
    # Keras' own safe mode too, so nothing from_config deserialises may run code.
    with SafeModeScope(not unsafe):
        return _build(config, unsafe=unsafe)


def _build(layer_config: dict, *, unsafe: bool):
    cls = layer_config.get("class_name")
    cfg = layer_config.get("config", {})
    if cls == "Sequential":
        return _build_sequential(cfg, unsafe=unsafe)
    if cls in ("Functional", "Model"):
        return _build_functional(cfg, unsafe=unsafe)
    return _build_leaf(cls, cfg, unsafe=unsafe)


def _build_leaf(cls: str, cfg: dict, *, unsafe: bool):
    import keras

    name = cfg.get("name", "?")
    cfg = {k: v for k, v in cfg.items() if k not in _SHAPE_KEYS}
    for key, harmless in _DROPPABLE.get(cls, {}).items():
        if key in cfg:
            if cfg[key] != harmless:
                raise ModelLoadError(
                    f"layer '{name}' ({cls}) uses {key}={cfg[key]!r}, which Keras 3 cannot express"
                )
            del cfg[key]
    if cls == "BatchNormalization" and isinstance(cfg.get("axis"), list) and len(cfg["axis"]) == 1:
        cfg["axis"] = cfg["axis"][0]  # Keras 2 stored a one-element list; Keras 3 takes an int
    if isinstance(cfg.get("dtype"), dict):  # Keras 2.x mixed-precision policy object
        cfg["dtype"] = cfg["dtype"].get("config", {}).get("name", "float32")
    layer_cls = getattr(keras.layers, cls, None)
    if layer_cls is None or not isinstance(layer_cls, type):
        raise ModelLoadError(
            f"layer '{name}' is of class {cls}, which is not a built-in Keras layer (a custom layer "
            "needs its code, which a model file does not carry)"
        )
    try:
        return layer_cls.from_config(cfg)
    except Exception as exc:  # Keras raises TypeError/ValueError with long messages
        cause = exc.__cause__ or exc.__context__ or exc
        reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise ModelLoadError(f"cannot rebuild layer '{name}' ({cls}) in Keras 3: {reason}") from exc


def _input_from_config(cfg: dict, name: str | None = None):
    import keras

    shape = cfg.get("batch_input_shape") or cfg.get("batch_shape")
    if shape is None:
        raise ModelLoadError(f"input layer '{cfg.get('name', '?')}' has no shape in the file")
    return keras.Input(batch_shape=tuple(shape), dtype=cfg.get("dtype") or "float32", name=name)


def _build_sequential(cfg: dict, *, unsafe: bool):
    import keras

    layer_cfgs = cfg.get("layers", [])
    layers = []
    batch_shape = cfg.get("build_input_shape")
    for lc in layer_cfgs:
        if lc.get("class_name") == "InputLayer":
            batch_shape = lc["config"].get("batch_input_shape") or lc["config"].get("batch_shape")
            continue
        if batch_shape is None and not layers:
            batch_shape = lc.get("config", {}).get("batch_input_shape")
        layers.append(_build(lc, unsafe=unsafe))
    if batch_shape is None and layers and isinstance(layers[0], keras.Model):
        # A Sequential that starts with a whole sub-model (TF.js writes no shape on it): its input is the sub-model's.
        batch_shape = (None, *layers[0].input_shape[1:])
    if batch_shape is None:
        raise ModelLoadError(f"Sequential model '{cfg.get('name', '?')}' has no input shape in the file")
    inputs = keras.Input(batch_shape=tuple(batch_shape))
    return keras.Sequential([inputs, *layers], name=cfg.get("name"))


def _build_functional(cfg: dict, *, unsafe: bool):
    import keras

    produced: dict[tuple[str, int], object] = {}
    pending = list(cfg.get("layers", []))
    while pending:
        progressed = False
        for lc in list(pending):
            lname = lc.get("name") or lc["config"]["name"]
            if lc["class_name"] == "InputLayer":
                produced[(lname, 0)] = _input_from_config(lc["config"], name=lname)
                pending.remove(lc)
                progressed = True
                continue
            nodes = lc.get("inbound_nodes", [])
            if not all((ref[0], ref[1]) in produced for node in nodes for ref in node):
                continue
            layer = _build(lc, unsafe=unsafe)
            offset = _node_offset(lc)
            for i, node in enumerate(nodes):
                if isinstance(node, dict):
                    raise ModelLoadError(f"layer '{lname}' uses a node format this reader does not know")
                args = [_pick(produced[(ref[0], ref[1])], ref[2]) for ref in node]
                kwargs = node[0][3] if len(node[0]) > 3 and node[0][3] else {}
                try:
                    produced[(lname, i + offset)] = layer(args[0] if len(args) == 1 else args, **kwargs)
                except Exception as exc:
                    raise ModelLoadError(
                        f"cannot re-link layer '{lname}' ({lc['class_name']}): {str(exc).splitlines()[0]}"
                    ) from exc
            pending.remove(lc)
            progressed = True
        if not progressed:
            names = ", ".join(lc.get("name", "?") for lc in pending[:3])
            raise ModelLoadError(f"cannot resolve the inputs of layer(s) {names}: the graph is inconsistent")

    def refs(key):
        return [_pick(produced[(r[0], r[1])], r[2]) for r in cfg[key]]

    inputs, outputs = refs("input_layers"), refs("output_layers")
    return keras.Model(
        inputs[0] if len(inputs) == 1 else inputs,
        outputs[0] if len(outputs) == 1 else outputs,
        name=cfg.get("name"),
    )


def _node_offset(layer_config: dict) -> int:
    """Keras 2 numbers a nested model's calls after its own construction node (node 0).

    Mirrors Keras 2's `_should_skip_first_node`: Functional models, and Sequential models that
    start with an InputLayer, own a node linking their input to their output.
    """
    cls = layer_config.get("class_name")
    if cls in ("Functional", "Model"):
        return 1
    if cls == "Sequential":
        layers = layer_config.get("config", {}).get("layers", [])
        return 1 if layers and layers[0].get("class_name") == "InputLayer" else 0
    return 0


def _pick(out, index: int):
    return out[index] if isinstance(out, (list, tuple)) else out


def load_weights(model, weights_group) -> None:
    """Assign weights saved by Keras 2 under `model_weights` to the rebuilt Keras 3 model."""
    saved: dict[str, list[tuple[str, object]]] = defaultdict(list)
    for top in _attr_list(weights_group, "layer_names"):
        group = weights_group[top]
        for wname in _attr_list(group, "weight_names"):
            parts = wname.split("/")
            layer_name = parts[-2] if len(parts) >= 2 else top
            short = parts[-1].split(":")[0]
            saved[layer_name].append((short, group[wname][()]))
    assign_weights(model, saved)


def assign_weights(model, saved: dict[str, list[tuple[str, object]]], source: str = "the file") -> None:
    """Set every leaf layer's weights from `saved` (layer name -> [(weight name, array)]), checked by shape.

    Shared by the Keras 2 H5 reader and the TensorFlow.js reader (models/tfjs.py): both name weights
    `layer/weight` and order them per layer; a layer, weight or shape that does not match raises.
    """
    from .graph import flatten_layers

    used = set()
    for layer in flatten_layers(model):
        if not layer.weights:
            continue
        entries = saved.get(layer.name)
        if not entries:
            raise ModelLoadError(f"{source} holds no weights for layer '{layer.name}'")
        remaining = list(entries)
        values = []
        for var in layer.weights:
            match = next(
                (e for e in remaining if e[0] == var.name or _WEIGHT_ALIASES.get(e[0]) == var.name),
                None,
            )
            if match is None:
                raise ModelLoadError(f"layer '{layer.name}': no saved value for weight '{var.name}'")
            remaining.remove(match)
            if tuple(match[1].shape) != tuple(var.shape):
                raise ModelLoadError(
                    f"layer '{layer.name}': saved '{match[0]}' has shape {tuple(match[1].shape)}, "
                    f"the rebuilt layer expects {tuple(var.shape)}"
                )
            values.append(match[1])
        if remaining:
            extra = ", ".join(e[0] for e in remaining)
            raise ModelLoadError(f"layer '{layer.name}': saved weights not used by Keras 3: {extra}")
        layer.set_weights(values)
        used.add(layer.name)
    unused = sorted(set(saved) - used)
    if unused:
        raise ModelLoadError(f"{source} has weights for layers the rebuilt model lacks: {', '.join(unused[:5])}")


def _attr_list(group, key: str) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in group.attrs.get(key, [])]
