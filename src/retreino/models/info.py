"""What retreino knows about a model beyond its weights: classes, input, scaling, head."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..preprocessing import describe

HEAD_TYPES = ("softmax", "sigmoid", "logits", "features")

FORMAT_NAMES = {
    "teachable-machine": "Teachable Machine export (Keras 2 H5, rebuilt for Keras 3)",
    "teachable-machine-tfjs": "Teachable Machine export (TensorFlow.js, rebuilt for Keras 3)",
    "tfjs": "TensorFlow.js Layers model (rebuilt for Keras 3)",
    "keras2-h5": "Keras 2 legacy H5 (rebuilt for Keras 3)",
    "keras3-h5": "Keras 3 H5",
    "keras": "Keras 3 .keras archive",
    "keras-applications": "Keras Applications backbone",
}


@dataclass
class ModelInfo:
    """Metadata that travels with a model through training, export and serving."""

    format: str
    source: str
    input_size: tuple[int, int]
    preprocessing: str  # a mode of retreino.preprocessing: "tf" means [-1, 1]
    head: str  # one of HEAD_TYPES
    class_names: list[str] | None = None
    backbone: str | None = None
    keras_version: str | None = None
    notes: list[str] = field(default_factory=list)
    # How a photo is fitted to input_size (see retreino.data.images.resize), part of the model's
    # contract like the input range: a Teachable Machine export expects TM's center crop.
    resize: str = "stretch"  # stretch | crop | pad
    interpolation: str = "bilinear"  # bilinear | lanczos | bicubic | nearest
    temperature: float | None = None  # temperature scaling fitted on validation (retreino.calibration)
    tta: str | None = None  # test-time augmentation every prediction applies: "flip" or None (retreino.tta)
    unknown: dict[str, Any] | None = None  # out-of-distribution detector: method, threshold, file (retreino.ood)

    @property
    def num_classes(self) -> int | None:
        return len(self.class_names) if self.class_names else None

    @property
    def value_range(self) -> str:
        return describe(self.preprocessing)

    @property
    def format_name(self) -> str:
        return FORMAT_NAMES.get(self.format, self.format)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["input_size"] = list(self.input_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelInfo":
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        kwargs["input_size"] = tuple(kwargs.get("input_size", (224, 224)))
        return cls(**kwargs)


@dataclass
class LoadedModel:
    """A Keras 3 model and its metadata, as returned by `retreino.load_model`."""

    model: Any  # keras.Model
    info: ModelInfo
    unsafe: bool = False  # loaded with --unsafe: the user trusts this model folder (its exports too)

    @property
    def class_names(self) -> list[str] | None:
        return self.info.class_names

    @property
    def input_size(self) -> tuple[int, int]:
        return self.info.input_size

    def __repr__(self) -> str:
        classes = ", ".join(self.info.class_names or []) or "unknown"
        return (
            f"<LoadedModel {Path(self.info.source).name!r} {self.info.format} "
            f"input={self.info.input_size} head={self.info.head} classes=[{classes}]>"
        )


def read_labels(path: str | Path) -> list[str]:
    """Read a Teachable Machine style labels file: one `INDEX Name` (or bare `Name`) per line."""
    names = []
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:  # written on Windows by hand: cp1252 (a superset of latin-1 for text)
        text = raw.decode("cp1252", errors="replace")
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        first, _, rest = line.partition(" ")
        names.append(rest.strip() if first.isdigit() and rest.strip() else line)
    return names


def labels_text(class_names: list[str]) -> str:
    return "".join(f"{i} {name}\n" for i, name in enumerate(class_names))
