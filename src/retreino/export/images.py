"""The images an export is checked (and int8-calibrated) on: real photos, or smooth synthetic ones."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import RetreinoError
from ..models.info import ModelInfo


def _image_list(images) -> list[Path]:
    if images is None:
        return []
    if isinstance(images, (str, os.PathLike)):
        root = Path(images)
        if not root.exists():
            raise RetreinoError(f"no such image folder: {root}")
        if root.is_file():
            return [root]
        from ..data.images import IMAGE_EXTENSIONS
        from ..errors import DataError
        from ..prediction import find_images  # the one finder: regular files, .tif/.tiff included

        try:
            return sorted(find_images(root))
        except DataError:
            raise RetreinoError(f"{root} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})") from None
    return [Path(p) for p in images]


def _split_images(paths: list[Path], n_parity: int, n_cal: int, seed: int):
    """Disjoint parity and calibration samples when there are enough images, overlapping otherwise."""
    if not paths:
        return [], []
    order = np.random.RandomState(seed).permutation(len(paths))
    shuffled = [paths[i] for i in order]
    parity = shuffled[:n_parity]
    rest = shuffled[n_parity:]
    calibration = rest[:n_cal] if len(rest) >= min(n_cal, 20) else shuffled[:n_cal]
    return sorted(parity), calibration


def _load_pixels(paths: Sequence[Path], info: ModelInfo) -> np.ndarray:
    """Real photos fitted to the input as the model's contract says (resize mode, interpolation)."""
    from ..data.images import read_image

    return np.stack([read_image(p, info.input_size, info.resize, info.interpolation) for p in paths])


def _synthetic(size, n: int, seed: int) -> np.ndarray:
    """Smooth random colour fields: more image-like activations than white noise."""
    from PIL import Image

    rng = np.random.RandomState(seed)
    h, w = size
    out = []
    for _ in range(n):
        small = rng.randint(0, 256, (rng.randint(2, 9), rng.randint(2, 9), 3)).astype(np.uint8)
        out.append(np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC)))
    return np.stack(out)
