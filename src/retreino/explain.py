"""Where is the model looking? Grad-CAM heatmaps and overlays for any loaded classifier.

Grad-CAM (Selvaraju et al., ICCV 2017): take the last convolutional feature map A (for
MobileNetV2 at 224x224, 7x7x1280), the gradient of the class score y_c with respect to it, and
weight each channel k by its mean gradient a_k = mean_ij dy_c/dA_ij^k; the heatmap is
ReLU(sum_k a_k A^k), scaled to [0, 1]. The class score is the pre-softmax logit when the head
ends in a softmax or sigmoid Dense layer (the probability saturates on confident images and its
gradient vanishes), else the model's output itself.

The feature map is found in the *flattened* graph (`speed.prefix.flat_model` re-calls every leaf
layer on fresh tensors), so a Teachable Machine export, Sequential[Sequential(MobileNetV2),
Sequential(head)], is handled like any functional model: the flat graph outputs both the inner
feature map and the score.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import RetreinoError

OVERLAY_ALPHA = 0.45
OVERLAY_MAX_SIDE = 448


@dataclass
class Explanation:
    """A Grad-CAM heatmap for one image and the class it explains.

    `heatmap` is (h, w) float32 in [0, 1] at the feature map's resolution (7x7 for MobileNetV2
    at 224); `heatmap_at(size)` upsamples it; `overlay()` blends it over the image as uint8 RGB.
    `np.asarray(explanation)` is the heatmap.
    """

    heatmap: np.ndarray
    class_index: int
    class_name: str
    probability: float
    pixels: np.ndarray  # the model's input, uint8 (H, W, 3)
    layer: str  # the feature map's layer

    def __array__(self, dtype=None, copy=None):
        return self.heatmap.astype(dtype) if dtype is not None else self.heatmap

    def heatmap_at(self, size: tuple[int, int]) -> np.ndarray:
        """The heatmap bilinearly resized to (height, width), in [0, 1]."""
        from PIL import Image

        h, w = size
        im = Image.fromarray(self.heatmap.astype(np.float32), mode="F")
        return np.clip(np.asarray(im.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32), 0.0, 1.0)

    def peak(self, size: tuple[int, int] | None = None) -> tuple[int, int]:
        """(row, col) of the heatmap's maximum, at `size` (default: the model's input size)."""
        hm = self.heatmap_at(size or self.pixels.shape[:2])
        return tuple(int(v) for v in np.unravel_index(int(np.argmax(hm)), hm.shape))

    def overlay(self, image: Any = None, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
        """The heatmap (jet colours) blended over `image` (default: the model's input), uint8 RGB.

        The original photo (a path or pixels) may be given instead of the input: a stretched
        input maps back onto it by stretching the heatmap the same way.
        """
        from matplotlib import colormaps

        base = self.pixels if image is None else _as_pixels(image)
        h, w = base.shape[:2]
        scale = min(1.0, OVERLAY_MAX_SIDE / max(h, w))
        if scale < 1.0:
            from PIL import Image

            h, w = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
            base = np.asarray(Image.fromarray(base).resize((w, h), Image.Resampling.BILINEAR))
        colours = colormaps["jet"](self.heatmap_at((h, w)))[..., :3] * 255.0
        return np.clip((1 - alpha) * base.astype(np.float32) + alpha * colours, 0, 255).astype(np.uint8)

    def save(self, path: str | os.PathLike, image: Any = None) -> Path:
        """Write the overlay as PNG or JPEG (by extension)."""
        from PIL import Image

        from .atomic import atomic_path

        path = Path(path)
        with atomic_path(path) as tmp:
            fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
            Image.fromarray(self.overlay(image)).save(tmp, format=fmt, **({"quality": 85} if fmt == "JPEG" else {}))
        return path

    def png_bytes(self, image: Any = None) -> bytes:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(self.overlay(image)).save(buf, format="PNG")
        return buf.getvalue()

    def data_url(self, image: Any = None) -> str:
        """The overlay as a `data:image/png;base64,...` URL (for web pages and report.html)."""
        import base64

        return "data:image/png;base64," + base64.b64encode(self.png_bytes(image)).decode("ascii")

    def __repr__(self) -> str:
        h, w = self.heatmap.shape
        return f"<Explanation {self.class_name!r} {self.probability:.1%} heatmap {h}x{w} on {self.layer!r}>"


def _as_pixels(image) -> np.ndarray:
    from .data.images import open_image, to_rgb

    if isinstance(image, np.ndarray):
        return np.clip(image, 0, 255).astype(np.uint8)
    if hasattr(image, "mode") and hasattr(image, "size"):
        return np.asarray(to_rgb(image), dtype=np.uint8)
    return np.asarray(open_image(image), dtype=np.uint8)


# --------------------------------------------------------------------------- the gradient model


class GradCAM:
    """Grad-CAM for one Keras model: built once (the flat graph), then any number of images."""

    def __init__(self, model):
        import keras

        from .speed.prefix import flat_model

        if model is None:
            raise RetreinoError("Grad-CAM needs the Keras model (an export alone has no gradients)")
        flat = flat_model(model)
        feature, score, apply_head, layer = _find_tensors(flat)
        self.layer = layer
        self.apply_head = apply_head  # maps the score tensor to logits (or None: the output is the score)
        self.model = keras.Model(flat.inputs, [feature, score], name="gradcam")

    def heatmaps(self, x: np.ndarray, class_index: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Scaled inputs (N, H, W, 3) -> (heatmaps (N, h, w) in [0, 1], the class index explained per image)."""
        import tensorflow as tf

        x = tf.convert_to_tensor(np.asarray(x, dtype=np.float32))
        with tf.GradientTape() as tape:
            feature, score = self.model(x, training=False)
            tape.watch(feature)
            logits = self.apply_head(score) if self.apply_head is not None else score
            if logits.shape[-1] == 1:  # one sigmoid unit: class 1 is +z, class 0 is -z
                logits = tf.concat([-logits, logits], axis=-1)
            if class_index is None:
                idx = tf.argmax(logits, axis=-1, output_type=tf.int32)
            else:
                idx = tf.convert_to_tensor(np.asarray(class_index, dtype=np.int32))
            chosen = tf.gather(logits, idx, axis=1, batch_dims=1)
        grads = tape.gradient(chosen, feature)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * feature, axis=-1)).numpy()
        top = cam.reshape(len(cam), -1).max(axis=1).reshape(-1, 1, 1)
        cam = np.where(top > 0, cam / np.maximum(top, 1e-12), 0.0).astype(np.float32)
        return cam, idx.numpy()


def _find_tensors(flat):
    """(last 4-D feature map, score tensor, head function or None, layer name) in a flat functional graph."""
    from keras import ops

    nodes = [n for depth in sorted(flat._nodes_by_depth, reverse=True) for n in flat._nodes_by_depth[depth]
             if n.operation is not None and not n.is_input]
    feature, layer = None, None
    for node in nodes:  # forward order: the last spatial map wins
        for t in node.outputs:
            if len(t.shape) == 4 and (t.shape[1] or 0) > 1 and (t.shape[2] or 0) > 1:
                feature, layer = t, node.operation.name
    if feature is None:
        raise RetreinoError("Grad-CAM needs a convolutional feature map (a 4-D layer output); this model has none")
    out = flat.outputs[0]
    last = next((n for n in reversed(nodes) if any(t is out for t in n.outputs)), None)
    op = getattr(last, "operation", None)
    act = getattr(getattr(op, "activation", None), "__name__", "")
    if op is not None and op.__class__.__name__ == "Dense" and act in ("softmax", "sigmoid"):
        # Score the logits: the Dense layer's input times its kernel, without the squashing.
        def head(x, op=op):
            z = ops.matmul(x, op.kernel)
            return z + op.bias if op.use_bias else z

        return feature, last.input_tensors[0], head, layer
    if op is not None and op.__class__.__name__ in ("Softmax", "Activation") and last.input_tensors:
        return feature, last.input_tensors[0], None, layer
    return feature, out, None, layer


def gradcam_for(loaded) -> GradCAM:
    """The GradCAM of a LoadedModel, built once and kept on it."""
    cached = loaded.__dict__.get("_retreino_gradcam")
    if cached is None:
        cached = GradCAM(loaded.model)
        loaded.__dict__["_retreino_gradcam"] = cached
    return cached


# --------------------------------------------------------------------------- public API


def explain(model, image, class_name: str | int | None = None, resize_mode: str = "stretch") -> Explanation:
    """Grad-CAM heatmap of one image: where the model looks for the class it predicts (or `class_name`).

    `model` is a LoadedModel or anything `load_model` accepts; `image` a path, bytes, PIL image or
    uint8 pixels. Returns an `Explanation`: `.heatmap` (7x7 in [0, 1] for MobileNetV2), the class,
    its probability, and `.overlay()` / `.save(path)` for the picture.

    >>> e = explain(RUN, IMAGE)
    >>> e.heatmap.shape, float(e.heatmap.max())
    ((7, 7), 1.0)
    >>> path = e.save(RUNS / "why.png")
    """
    from .prediction import _pixels, as_loaded, as_predictor

    loaded = as_loaded(model)
    if loaded.info.head == "features":
        raise RetreinoError("this model has no classification head (a bare backbone): train it first")
    predictor = as_predictor(loaded, runtime="keras", resize_mode=resize_mode)
    pixels = _pixels(image, predictor)
    return explain_pixels(loaded, pixels[None], class_name)[0]


def explain_pixels(loaded, pixels: np.ndarray, class_name: str | int | None = None) -> list[Explanation]:
    """Explanations for a batch of uint8 input pixels (N, H, W, 3) at the model's input size."""
    from .inference import probabilities
    from .preprocessing import scale_pixels_np

    names = list(loaded.info.class_names or [])
    index = None
    if class_name is not None:
        if isinstance(class_name, int):
            i = class_name
        elif class_name in names:
            i = names.index(class_name)
        else:
            raise RetreinoError(f"unknown class {class_name!r}: the model's classes are {', '.join(names)}")
        index = np.full(len(pixels), i, dtype=np.int32)
    cam = gradcam_for(loaded)
    x = scale_pixels_np(pixels, loaded.info.preprocessing)
    maps, idx = cam.heatmaps(x, index)
    probs = probabilities(np.asarray(loaded.model(x, training=False)), loaded.info.head)
    out = []
    for k in range(len(pixels)):
        i = int(idx[k])
        out.append(Explanation(maps[k], i, names[i] if i < len(names) else f"class_{i}", float(probs[k, i]),
                               np.asarray(pixels[k], dtype=np.uint8), cam.layer))
    return out


def overlay_path(image_path: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """Where `predict --explain` writes the overlay of an image: FOLDER/<stem>.gradcam.png."""
    return Path(folder) / f"{Path(image_path).stem}.gradcam.png"
