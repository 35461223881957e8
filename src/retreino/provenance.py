"""Where a run came from: the record in its config.json, and the data summary printed at its start.

config.json keeps, next to every setting, what is needed to tell later whether a result can be
reproduced: package versions, the data's fingerprint and per-class counts, and the model's
metadata. `retreino train --resume` and `retreino train --config` read the settings back from it.
"""
from __future__ import annotations

import platform
import sys

import numpy as np

from .config import TrainConfig
from .models.info import ModelInfo

SPLITS = ("train", "validation", "test")
PACKAGES = ("retreino", "keras", "tensorflow-cpu", "tensorflow", "numpy", "scikit-learn", "pillow")


def config_record(cfg: TrainConfig, dataset, info: ModelInfo, new_head: bool) -> dict:
    """The content of a run's config.json: settings, versions, data and model."""
    return {
        "config": cfg.to_dict(),
        "versions": versions(),
        "data": {
            "root": str(cfg.data),
            "source": dataset.source,
            "class_names": list(dataset.class_names),
            "fingerprint": dataset.fingerprint(),
            "counts": split_counts(dataset),
            "skipped": list(dataset.skipped),
        },
        "model": info.to_dict(),
        "new_head": new_head,
    }


def versions() -> dict:
    """Python, the platform, and the versions of the packages that decide what a run computes."""
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": sys.platform}
    for pkg in PACKAGES:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def split_counts(dataset) -> dict:
    """{split: {class: images}} for config.json and the report (empty splits left out)."""
    return dict(_counts(dataset))


def describe_data(data: str, dataset) -> str:
    """The lines `retreino train` starts with: the classes, then images per split and class."""
    names = dataset.class_names
    lines = [f"Data: {data} ({dataset.source}), {len(names)} classes: {', '.join(names)}"]
    for split, counts in _counts(dataset):
        per = ", ".join(f"{n} {c}" for c, n in counts.items())
        lines.append(f"  {split:<10} {sum(counts.values()):>6} images ({per})")
    if dataset.skipped:
        lines.append(f"  skipped {len(dataset.skipped)} unreadable file(s): see `retreino check-data {data}`")
    return "\n".join(lines)


def _counts(dataset):
    """(split, {class: images}) for each split that has images, in train/validation/test order."""
    for split in SPLITS:
        s = getattr(dataset, split)
        if s is not None and len(s):
            counts = np.bincount(np.asarray(s.labels), minlength=len(dataset.class_names))
            yield split, {c: int(n) for c, n in zip(dataset.class_names, counts)}
