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
from typing import Any, Sequence

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
    resize_mode: str = "stretch"  # how the photo was fitted to the input: maps the heatmap back onto it

    def __array__(self, dtype=None, copy=None):
        return self.heatmap.astype(dtype) if dtype is not None else self.heatmap

    def heatmap_at(self, size: tuple[int, int]) -> np.ndarray:
        """The heatmap bilinearly resized to (height, width) of the model's input (or a multiple), in [0, 1].

        Row 0 is the top of the image, column 0 its left. Cell (i, j) of the h x w map is placed
        at the centre of the i-th of h equal bands (half-pixel centres): measured on water_bottles,
        the gradient centroid of the centre cell of its 7x7 map lies within 1-8 px of that point,
        while the geometric centre of its padded receptive field would be 15.5 px lower right
        (docs/explain.md).
        """
        from PIL import Image

        h, w = size
        im = Image.fromarray(self.heatmap.astype(np.float32), mode="F")
        return np.clip(np.asarray(im.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32), 0.0, 1.0)

    def heatmap_on_image(self, size: tuple[int, int]) -> np.ndarray:
        """The heatmap on the original photo of (height, width), undoing the resize contract.

        stretch: resized to the photo. crop (Teachable Machine's centre crop): the model saw only
        the centred box, so the heat lands there and the cut-off borders are 0. pad: the padded
        bands are dropped before resizing.
        """
        from PIL import Image

        H, W = size
        ih, iw = self.pixels.shape[:2]
        if self.resize_mode == "crop":
            scale = max(iw / W, ih / H)  # ImageOps.fit: scale so the box covers the input
            ch, cw = min(H, int(round(ih / scale))), min(W, int(round(iw / scale)))
            top, left = (H - ch) // 2, (W - cw) // 2
            out = np.zeros((H, W), np.float32)
            out[top:top + ch, left:left + cw] = self.heatmap_at((max(1, ch), max(1, cw)))
            return out
        if self.resize_mode == "pad":
            scale = min(iw / W, ih / H)  # ImageOps.pad: the photo fits inside the input
            ch, cw = max(1, int(round(H * scale))), max(1, int(round(W * scale)))
            top, left = (ih - ch) // 2, (iw - cw) // 2
            inner = self.heatmap_at((ih, iw))[top:top + ch, left:left + cw]
            im = Image.fromarray(inner, mode="F").resize((W, H), Image.Resampling.BILINEAR)
            return np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)
        return self.heatmap_at((H, W))

    def peak(self, size: tuple[int, int] | None = None) -> tuple[int, int]:
        """(row, col) of the heatmap's maximum, at `size` (default: the model's input size)."""
        hm = self.heatmap_at(size or self.pixels.shape[:2])
        return tuple(int(v) for v in np.unravel_index(int(np.argmax(hm)), hm.shape))

    def overlay(self, image: Any = None, alpha: float = OVERLAY_ALPHA, max_side: int = OVERLAY_MAX_SIDE) -> np.ndarray:
        """The heatmap (jet colours) blended over `image` (default: the model's input), uint8 RGB.

        Given the original photo (a path, PIL image or pixels), the overlay covers the whole
        photo (at most OVERLAY_MAX_SIDE px a side) with the heat mapped back through the resize
        contract (`heatmap_on_image`): with a centre crop, what the model never saw stays cold.
        """
        from matplotlib import colormaps
        from PIL import Image

        base = self.pixels if image is None else _as_pixels(image)
        h, w = base.shape[:2]
        scale = min(1.0, max_side / max(h, w))
        if scale < 1.0:
            h, w = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
            base = np.asarray(Image.fromarray(base).resize((w, h), Image.Resampling.BILINEAR))
        heat = self.heatmap_at((h, w)) if image is None else self.heatmap_on_image((h, w))
        colours = colormaps["jet"](heat)[..., :3] * 255.0
        return np.clip((1 - alpha) * base.astype(np.float32) + alpha * colours, 0, 255).astype(np.uint8)

    def save(self, path: str | os.PathLike, image: Any = None, max_side: int = OVERLAY_MAX_SIDE) -> Path:
        """Write the overlay (on `image`, the original photo, when given) as PNG or JPEG (by extension)."""
        from PIL import Image

        from .atomic import atomic_path

        path = Path(path)
        with atomic_path(path) as tmp:
            fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
            Image.fromarray(self.overlay(image, max_side=max_side)).save(tmp, format=fmt, **({"quality": 85} if fmt == "JPEG" else {}))
        return path

    def png_bytes(self, image: Any = None) -> bytes:
        """The overlay as PNG bytes (on `image`, the original photo, when given)."""
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

        from .models.graph import model_inputs
        from .speed.prefix import flat_model

        if model is None:
            raise RetreinoError("Grad-CAM needs the Keras model (an export alone has no gradients)")
        flat = flat_model(model)
        feature, score, apply_head, layer = _find_tensors(flat)
        self.layer = layer
        self.apply_head = apply_head  # maps the score tensor to logits (or None: the output is the score)
        self.model = keras.Model(model_inputs(flat), [feature, score], name="gradcam")

    def heatmaps(self, x: np.ndarray, class_index: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Scaled inputs (N, H, W, 3) -> (heatmaps (N, h, w) in [0, 1], the class index explained per image)."""
        import tensorflow as tf

        x = tf.convert_to_tensor(np.asarray(x, dtype=np.float32))
        with tf.GradientTape() as tape:
            # Watching the input records every op downstream of it, frozen (non-trainable) layers included.
            tape.watch(x)
            feature, score = self.model(x, training=False)
            logits = self.apply_head(score) if self.apply_head is not None else score
            if logits.shape[-1] == 1:  # one sigmoid unit: class 1 is +z, class 0 is -z
                logits = tf.concat([-logits, logits], axis=-1)
            elif self.apply_head is not None:
                # Softmax ignores a vector added to every class's weights; centring the logits
                # drops that shared part, so the map shows what tells this class from the others.
                logits = logits - tf.reduce_mean(logits, axis=-1, keepdims=True)
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

    from .models.graph import nodes_in_order

    nodes = [n for n in nodes_in_order(flat) if n.operation is not None and not n.is_input]
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


def explanation(model, image, class_name: str | int | None = None,
                resize_mode: str | None = None) -> Explanation:
    """The Grad-CAM `Explanation` of one image: heatmap, class, probability, overlay and save.

    `model` is a LoadedModel, a Predictor or anything `load_model` accepts; `image` a path,
    bytes, PIL image or uint8 pixels, fitted to the input by the model's own resize contract
    (Teachable Machine: centre crop) unless `resize_mode` says otherwise. `class_name` (a name
    or an index) explains that class instead of the predicted one.

    >>> e = explanation(RUN, IMAGE)
    >>> e.heatmap.shape, float(e.heatmap.max())
    ((7, 7), 1.0)
    >>> path = e.save(RUNS / "why.png", image=IMAGE)   # the overlay on the whole photo
    """
    from .prediction import _pixels, as_loaded, as_predictor

    loaded = model.loaded if hasattr(model, "loaded") and hasattr(model, "predict_pixels") else as_loaded(model)
    if loaded.info.head == "features":
        raise RetreinoError("this model has no classification head (a bare backbone): train it first")
    if loaded.model is None:
        raise RetreinoError("Grad-CAM needs the Keras model (an export alone has no gradients)")
    predictor = as_predictor(loaded, runtime="keras", resize_mode=resize_mode)
    pixels = _pixels(image, predictor)
    return explain_pixels(loaded, pixels[None], class_name, resize_mode=predictor.resize_mode)[0]


def explain(model, image, class_name: str | int | None = None, resize_mode: str | None = None,
            size: str = "input") -> np.ndarray:
    """Grad-CAM heatmap of one image: where the model looks for the class it predicts (or `class_name`).

    Returns float32 in [0, 1] (1 at the hottest point), row 0 at the top:
    `size="input"` (default) at the model's input (224 x 224 for MobileNetV2, on the photo as
    fitted: centre-cropped for a Teachable Machine model); `size="image"` at the original photo's
    height x width (heat mapped back through the resize contract; a path, PIL image or pixels);
    `size="features"` the raw map of the last convolutional layer (7 x 7). `explanation()` gives
    the class, probability and overlay picture too.

    >>> heat = explain(RUN, IMAGE)
    >>> heat.shape, float(heat.min()) >= 0.0, float(heat.max())
    ((224, 224), True, 1.0)
    """
    if size not in ("input", "image", "features"):
        raise RetreinoError(f"unknown size {size!r}: use input, image or features")
    e = explanation(model, image, class_name, resize_mode)
    if size == "features":
        return e.heatmap
    if size == "image":
        h, w = _as_pixels(image).shape[:2]
        heat = e.heatmap_on_image((h, w))
    else:
        heat = e.heatmap_at(e.pixels.shape[:2])
    top = float(heat.max())  # interpolation between cell centres leaves the peak a hair under 1
    return heat / top if top > 0 else heat


def explain_pixels(loaded, pixels: np.ndarray, class_name: str | int | Sequence[int] | None = None,
                   resize_mode: str = "stretch") -> list[Explanation]:
    """Explanations for a batch of uint8 input pixels (N, H, W, 3) at the model's input size.

    `class_name`: None (each image's predicted class), a name or index for all, or one index
    per image. `resize_mode` records how the photos were fitted (it maps overlays back onto them)."""
    from .inference import probabilities
    from .preprocessing import scale_pixels_np

    names = list(loaded.info.class_names or [])
    index = None
    if isinstance(class_name, (list, tuple, np.ndarray)):  # one class per image
        index = np.asarray(class_name, dtype=np.int32)
        if index.shape != (len(pixels),) or index.min(initial=0) < 0 or index.max(initial=0) >= max(len(names), 1):
            raise RetreinoError(f"one class index per image, each below {len(names)}, is needed")
    elif class_name is not None:
        if isinstance(class_name, (int, np.integer)):
            i = int(class_name)
            if not 0 <= i < max(len(names), 1):
                raise RetreinoError(f"class index {i} out of range: the model has {len(names)} classes")
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
                               np.asarray(pixels[k], dtype=np.uint8), cam.layer, resize_mode))
    return out


def overlay_path(image_path: str | os.PathLike, folder: str | os.PathLike,
                 root: str | os.PathLike | None = None) -> Path:
    """Where `predict --explain` writes the overlay of an image: FOLDER/<stem>.gradcam.png.

    With `root` (the folder the images were found in) the sub-folders are kept, so two
    cat.1.jpg in different class folders never overwrite each other's overlay."""
    image_path = Path(image_path)
    sub = Path()
    if root is not None:
        try:
            sub = image_path.parent.resolve().relative_to(Path(root).resolve())
        except ValueError:
            sub = Path()
    return Path(folder) / sub / f"{image_path.stem}.gradcam.png"


def write_overlays(predictor, paths, folder: str | os.PathLike, root: str | os.PathLike | None = None,
                   batch_size: int = 16) -> list[tuple[str, Path | None, str | None]]:
    """Grad-CAM overlays of many images into `folder` -> [(path, overlay or None, error or None)].

    Images are fitted exactly as `predictor` fits them (its resize contract), in batches; an
    unreadable file is reported, never fatal.
    """
    from .prediction import read_image_or_error

    loaded = predictor.loaded
    if loaded.model is None:
        raise RetreinoError("--explain needs the Keras model (an export alone has no gradients)")
    out = []
    paths = list(paths)
    for i in range(0, len(paths), batch_size):
        chunk = paths[i:i + batch_size]
        decoded = [read_image_or_error(p, predictor.info.input_size, predictor.resize_mode, predictor.interpolation)
                   for p in chunk]
        ok = [k for k, (px, _) in enumerate(decoded) if px is not None]
        explained = explain_pixels(loaded, np.stack([decoded[k][0] for k in ok]),
                                   resize_mode=predictor.resize_mode) if ok else []
        by_k = dict(zip(ok, explained))
        for k, p in enumerate(chunk):
            if k not in by_k:
                out.append((str(p), None, decoded[k][1]))
                continue
            target = overlay_path(p, folder, root)
            target.parent.mkdir(parents=True, exist_ok=True)
            out.append((str(p), by_k[k].save(target, image=p), None))
    return out
