"""The Teachable Machine input/output contract, checked before a `tm` or `tfjs` export is written.

Both formats are read by Teachable Machine's apps or its `@teachablemachine/image` library, which
feed 224x224x3 pixels scaled to [-1, 1] and read softmax probabilities by class name. A model
outside that contract would load there and silently predict wrongly, so it is refused with advice.
"""
from __future__ import annotations

from ..models.info import LoadedModel
from .keras2_h5 import ExportError

TM_INPUT = (224, 224, 3)

# Per format: how the consumer sizes and scales its input, reads the output, and where labels go.
_CONSUMERS = {
    "tm": dict(size="Teachable Machine apps resize to that", scale="apps compute image/127.5 - 1",
               output="apps read probabilities", labels="labels.txt"),
    "tfjs": dict(size="Teachable Machine's library crops photos to that",
                 scale="Teachable Machine's library feeds x/127 - 1",
                 output="Teachable Machine's library reads probabilities", labels="metadata.json"),
}


def check_tm_contract(loaded: LoadedModel, fmt: str = "tm") -> None:
    """Raise ExportError (one line, with what to do) unless `loaded` fits TM's contract for `fmt` ("tm", "tfjs")."""
    why = _CONSUMERS[fmt]
    info, model = loaded.info, loaded.model
    shape = tuple(model.input_shape[1:])
    if shape != TM_INPUT:
        raise ExportError(
            f"the {fmt} format needs a 224x224x3 input ({why['size']}); this model takes "
            f"{shape}. Retrain from a 224x224 backbone, or export to keras/onnx/tflite"
        )
    if info.preprocessing != "tf":
        raise ExportError(
            f"the {fmt} format needs inputs scaled to [-1, 1] ({why['scale']}); this model expects "
            f"{info.value_range}. Retrain from a Teachable Machine or MobileNetV2 base, or export to another format"
        )
    if info.head != "softmax":
        raise ExportError(
            f"the {fmt} format needs a softmax output ({why['output']}); this model's head is {info.head}. "
            "Retrain with a softmax head, or export to another format"
        )
    if not info.class_names:
        raise ExportError(f"the {fmt} format needs class names for {why['labels']}; pass class_names (--labels) "
                          "when loading")
