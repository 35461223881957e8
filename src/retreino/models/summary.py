"""A model summary for people (`retreino inspect`) and scripts (`--json`)."""
from __future__ import annotations

from ..console import key_values
from .graph import find_head, flatten_layers
from .info import LoadedModel


def count_params(weights) -> int:
    import numpy as np

    return int(sum(int(np.prod(w.shape)) for w in weights))


def summarize(loaded: LoadedModel) -> dict:
    model, info = loaded.model, loaded.info
    head, units = find_head(model)
    shape = tuple(int(d) if d is not None else None for d in model.input_shape[1:])
    return {
        "source": info.source,
        "format": info.format,
        "format_name": info.format_name,
        "keras_version": info.keras_version,
        "input_shape": list(shape),
        "preprocessing": info.preprocessing,
        "value_range": info.value_range,
        "classes": info.class_names,
        "num_classes": info.num_classes,
        "layers_flattened": len(flatten_layers(model)),
        "layers_top_level": len(model.layers),
        "params_trainable": count_params(model.trainable_weights),
        "params_total": count_params(model.weights),
        "head": head,
        "output_units": units,
        "backbone": info.backbone,
        "notes": info.notes,
    }


def format_summary(s: dict) -> str:
    classes = s["classes"]
    class_text = f"{len(classes)}: {', '.join(classes)}" if classes else "unknown (no labels)"
    head = {"features": f"none: pooled features ({s['output_units']})"}.get(
        s["head"], f"{s['head']}, {s['output_units']} unit{'s' if s['output_units'] != 1 else ''}"
    )
    pairs = [
        ("Model", s["source"]),
        ("Format", s["format_name"] + (f", saved by Keras {s['keras_version']}" if s["keras_version"] and s["format"] != "keras" else "")),
        ("Input", " x ".join(str(d) for d in s["input_shape"]) + f", values {s['value_range']}"),
        ("Classes", class_text),
        ("Layers", f"{s['layers_flattened']} (flattened), {s['layers_top_level']} at the top level"),
        ("Parameters", f"{s['params_trainable']:,} trainable / {s['params_total']:,} total"),
        ("Head", head),
    ]
    pairs += [("Note", n) for n in s["notes"]]
    return key_values(pairs)
