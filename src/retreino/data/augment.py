"""Training augmentation as ONE affine warp per image, with ImageDataGenerator's semantics.

The notebook's `ImageDataGenerator(rotation_range=20, width_shift_range=0.2,
height_shift_range=0.2, horizontal_flip=True)` resamples each image once with a combined
matrix (scipy, bilinear, fill_mode='nearest'). Keras' preprocessing layers (RandomRotation,
RandomTranslation, RandomFlip, RandomZoom) resample once *per layer*, which is both slower and
blurrier. Here rotation, shift, zoom and flips are folded into one 3x3 matrix per image and the
whole batch is warped in one pass: OpenCV's `warpAffine` on the uint8 pixels when OpenCV is
installed (SIMD, about 8x faster than TensorFlow's `ImageProjectiveTransformV3` on CPU, measured in
bench/pipeline.py), else that TensorFlow kernel. Both sample bilinearly and extend the edges like
ImageDataGenerator's fill_mode='nearest'. Brightness and contrast are per-pixel arithmetic after.

ImageDataGenerator quirk, not copied: it multiplies `width_shift_range` by the width but applies
the shift vertically (and `height_shift_range` horizontally). Here each shift moves along its own
axis; for the notebook's equal 0.2/0.2 on square inputs the two are the same distribution.
"""
from __future__ import annotations

import math
import os

import numpy as np

from .. import _env

_env.import_tensorflow()
import tensorflow as tf  # noqa: E402

from ..config import AugmentConfig  # noqa: E402


def _uniform(seed, n, low, high):
    return tf.random.stateless_uniform([n], seed=seed, minval=low, maxval=high, dtype=tf.float32)


def affine_matrices(cfg: AugmentConfig, n, height: int, width: int, seed) -> tf.Tensor:
    """(n, 3, 3) matrices mapping output pixel (x, y, 1) to the input position it samples.

    The same distribution as ImageDataGenerator.get_random_transform: rotation uniform in
    +-rotation degrees, shifts uniform in +-fraction of the size, zoom uniform in [1-z, 1+z]
    per axis, each flip with probability 1/2 (applied to the warped image, as it does).
    """
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 6)
    one, zero = tf.ones([n]), tf.zeros([n])
    theta = _uniform(seeds[0], n, -cfg.rotation, cfg.rotation) * (math.pi / 180.0) if cfg.rotation else zero
    tx = _uniform(seeds[1], n, -cfg.width_shift, cfg.width_shift) * width if cfg.width_shift else zero
    ty = _uniform(seeds[2], n, -cfg.height_shift, cfg.height_shift) * height if cfg.height_shift else zero
    if cfg.zoom:
        zx = _uniform(seeds[3], n, 1.0 - cfg.zoom, 1.0 + cfg.zoom)
        zy = _uniform(tf.random.experimental.stateless_fold_in(seeds[3], 1), n, 1.0 - cfg.zoom, 1.0 + cfg.zoom)
    else:
        zx = zy = one
    hflip = tf.cast(_uniform(seeds[4], n, 0.0, 1.0) < 0.5, tf.float32) if cfg.horizontal_flip else zero
    vflip = tf.cast(_uniform(seeds[5], n, 0.0, 1.0) < 0.5, tf.float32) if cfg.vertical_flip else zero

    return compose_affine(theta, tx, ty, zx, zy, hflip, vflip, height, width)


def compose_affine(theta, tx, ty, zx, zy, hflip, vflip, height: int, width: int) -> tf.Tensor:
    """(n, 3, 3) output->input matrices from per-image parameters (1-D tensors of length n).

    theta in radians, tx/ty in pixels (x = column, y = row), zx/zy zoom factors, hflip/vflip 0 or 1.
    """
    theta, tx, ty, zx, zy, hflip, vflip = (tf.cast(v, tf.float32) for v in (theta, tx, ty, zx, zy, hflip, vflip))
    one, zero = tf.ones_like(theta), tf.zeros_like(theta)

    def mat(rows):
        return tf.stack([tf.stack(r, axis=-1) for r in rows], axis=-2)

    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    cos, sin = tf.cos(theta), tf.sin(theta)
    # Centered rotation * shift * zoom, composed as ImageDataGenerator composes them.
    core = mat([[cos * zx, -sin * zy, cos * tx - sin * ty + cx - (cos * zx * cx - sin * zy * cy)],
                [sin * zx, cos * zy, sin * tx + cos * ty + cy - (sin * zx * cx + cos * zy * cy)],
                [zero, zero, one]])
    # Flip the *output*: x -> (W-1) - x when hflip, y -> (H-1) - y when vflip.
    sx, sy = 1.0 - 2.0 * hflip, 1.0 - 2.0 * vflip
    flip = mat([[sx, zero, hflip * (width - 1)], [zero, sy, vflip * (height - 1)], [zero, zero, one]])
    return tf.matmul(core, flip)


def warp(images, matrices) -> tf.Tensor:
    """Resample a float batch (B, H, W, C) through (B, 3, 3) output->input matrices in one call:
    bilinear, edges extended ('nearest'), like ImageDataGenerator."""
    height, width = images.shape[1], images.shape[2]
    n = tf.shape(matrices)[0]
    transforms = tf.concat([tf.reshape(matrices[:, :2, :], [-1, 6]), tf.zeros([n, 2])], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=tf.constant([height, width], tf.int32),
        fill_value=tf.constant(0.0),
        interpolation="BILINEAR", fill_mode="NEAREST")


def _opencv():
    """cv2 when installed and not switched off (RETREINO_AUGMENT_BACKEND=tf forces TensorFlow)."""
    if os.environ.get("RETREINO_AUGMENT_BACKEND", "").lower() == "tf":
        return None
    try:
        import cv2
    except ImportError:
        return None
    return cv2


def warp_numpy(images: np.ndarray, matrices: np.ndarray) -> np.ndarray:
    """`warp` with OpenCV on a NumPy batch (uint8 or float32); OpenCV releases the GIL, so
    tf.data runs several batches at once."""
    import cv2

    images = np.ascontiguousarray(images)
    out = np.empty_like(images)
    height, width = images.shape[1:3]
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP  # the matrix maps output -> input, as ours do
    for i in range(len(images)):
        cv2.warpAffine(images[i], np.asarray(matrices[i, :2], np.float64), (width, height), dst=out[i],
                       flags=flags, borderMode=cv2.BORDER_REPLICATE)
    return out


def augment_batch(images, seed, cfg: AugmentConfig):
    """Augment a batch (B, H, W, 3) of pixels in [0, 255]; returns float32 in [0, 255]."""
    images = tf.convert_to_tensor(images)
    shape = tf.shape(images)
    n = shape[0]
    height, width = images.shape[1], images.shape[2]
    seed = tf.cast(seed, tf.int64)
    if cfg.rotation or cfg.width_shift or cfg.height_shift or cfg.zoom or cfg.horizontal_flip or cfg.vertical_flip:
        m = affine_matrices(cfg, n, height, width, seed)
        if _opencv() is not None and images.dtype in (tf.uint8, tf.float32):
            warped = tf.numpy_function(warp_numpy, [images, m], images.dtype, stateful=False)
            warped.set_shape(images.shape)
            x = tf.cast(warped, tf.float32)
        else:
            x = warp(tf.cast(images, tf.float32), m)
    else:
        x = tf.cast(images, tf.float32)
    if cfg.brightness or cfg.contrast:
        seeds = tf.random.experimental.stateless_split(tf.random.experimental.stateless_fold_in(seed, 7), 2)
        if cfg.contrast:
            f = _uniform(seeds[0], n, 1.0 - cfg.contrast, 1.0 + cfg.contrast)[:, None, None, None]
            mean = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
            x = (x - mean) * f + mean
        if cfg.brightness:
            x = x + _uniform(seeds[1], n, -cfg.brightness, cfg.brightness)[:, None, None, None] * 255.0
        x = tf.clip_by_value(x, 0.0, 255.0)
    return x
