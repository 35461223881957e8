"""Input scaling: the one place that knows what pixel values each model expects.

Images flow through retreino as float32 RGB in [0, 255]; `scale_pixels` maps them to a model's
input range. The notebook rescaled everything to [0, 1]; Teachable Machine and MobileNetV2
expect [-1, 1], so the mode travels with the model's metadata instead of being assumed.
"""
from __future__ import annotations

from .errors import RetreinoError

# mode -> (human description, value range for display)
MODES = {
    "tf": "[-1, 1] (x / 127.5 - 1)",
    "unit": "[0, 1] (x / 255)",
    "raw": "[0, 255] (the model rescales itself)",
    "caffe": "BGR, ImageNet mean subtracted (caffe)",
    "torch": "[0, 1], ImageNet mean/std normalised (torch)",
}

# User-facing aliases accepted by --input-range.
ALIASES = {
    "-1,1": "tf", "[-1,1]": "tf", "tf": "tf",
    "0,1": "unit", "[0,1]": "unit", "unit": "unit",
    "0,255": "raw", "[0,255]": "raw", "raw": "raw",
    "caffe": "caffe", "torch": "torch",
}

_IMAGENET_MEAN_RGB = (123.68, 116.779, 103.939)
_IMAGENET_STD_RGB = (0.229, 0.224, 0.225)


def normalize_mode(value: str) -> str:
    """Turn a user's `--input-range` value into a mode name, or fail with the accepted values."""
    key = str(value).replace(" ", "").lower()
    if key not in ALIASES:
        raise RetreinoError(
            f"unknown input range {value!r}: use one of -1,1 | 0,1 | 0,255 | caffe | torch"
        )
    return ALIASES[key]


def describe(mode: str) -> str:
    return MODES.get(mode, mode)


# mode -> what happens to a pixel, in the words of someone preparing images for the model
PIXEL_WORDS = {
    "tf": "pixels scaled to [-1, 1]",
    "unit": "pixels scaled to [0, 1]",
    "raw": "pixels kept in [0, 255] (the model rescales itself)",
    "caffe": "pixels as BGR with the ImageNet mean subtracted (caffe)",
    "torch": "pixels scaled to [0, 1], then ImageNet mean/std normalised (torch)",
}
RESIZE_WORDS = {"stretch": "stretched to {size}", "crop": "center-cropped to {size}", "pad": "padded to {size}"}


def input_contract(mode: str, input_size=None, resize: str | None = None) -> str:
    """The model's input contract in words, e.g. "pixels scaled to [-1, 1], stretched to 224x224".

    >>> input_contract("tf", (224, 224), "crop")
    'pixels scaled to [-1, 1], center-cropped to 224x224'
    """
    text = PIXEL_WORDS.get(mode, f"pixels scaled as {mode!r}")
    if input_size:
        h, w = list(input_size)[:2]
        text += ", " + RESIZE_WORDS.get(resize or "stretch", "resized ({mode}) to {size}").format(
            size=f"{w}x{h}", mode=resize)
    return text


def scale_pixels(images, mode: str):
    """Map float pixels in [0, 255] (..., H, W, 3) to the model's input range (any backend)."""
    from keras import ops

    x = ops.cast(images, "float32")
    if mode == "tf":
        return x / 127.5 - 1.0
    if mode == "unit":
        return x / 255.0
    if mode == "raw":
        return x
    if mode == "caffe":
        x = ops.flip(x, axis=-1)  # RGB -> BGR
        return x - ops.convert_to_tensor(_IMAGENET_MEAN_RGB[::-1], dtype="float32")
    if mode == "torch":
        mean = ops.convert_to_tensor([m / 255.0 for m in _IMAGENET_MEAN_RGB], dtype="float32")
        std = ops.convert_to_tensor(_IMAGENET_STD_RGB, dtype="float32")
        return (x / 255.0 - mean) / std
    raise RetreinoError(f"unknown preprocessing mode {mode!r}")


def scale_pixels_np(images, mode: str):
    """NumPy twin of `scale_pixels` for runtimes outside Keras (ONNX Runtime, LiteRT)."""
    import numpy as np

    x = np.asarray(images, dtype=np.float32)
    if mode == "tf":
        return x / 127.5 - 1.0
    if mode == "unit":
        return x / 255.0
    if mode == "raw":
        return x
    if mode == "caffe":
        return x[..., ::-1] - np.array(_IMAGENET_MEAN_RGB[::-1], dtype=np.float32)
    if mode == "torch":
        mean = np.array([m / 255.0 for m in _IMAGENET_MEAN_RGB], dtype=np.float32)
        return (x / 255.0 - mean) / np.array(_IMAGENET_STD_RGB, dtype=np.float32)
    raise RetreinoError(f"unknown preprocessing mode {mode!r}")
