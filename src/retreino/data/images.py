"""Reading one image file into RGB pixels, whatever its format, mode or orientation.

The single decoder behind training, evaluation, prediction and the web service, so that a
photo looks the same to the model everywhere.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np

from ..errors import DataError

# Pillow refuses images above 2x this as decompression bombs; we refuse anything above it.
MAX_PIXELS = int(os.environ.get("RETREINO_MAX_PIXELS", 89_478_485))
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
RESIZE_MODES = ("stretch", "crop", "pad")
INTERPOLATIONS = ("bilinear", "lanczos", "bicubic", "nearest")


def open_image(source):
    """Open a path, bytes or file object as a PIL image in RGB, EXIF orientation applied."""
    from PIL import Image, ImageOps

    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    name = source if isinstance(source, (str, Path)) else "image"
    if isinstance(source, (str, Path)):
        from ..safety import check_image_file

        check_image_file(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(source)
            if im.width * im.height > MAX_PIXELS:
                raise DataError(f"{name}: {im.width}x{im.height} pixels exceeds the {MAX_PIXELS:,} pixel limit (decompression bomb?)")
            im.seek(0)  # first frame of GIF/WEBP animations
            im = ImageOps.exif_transpose(im)
            return to_rgb(im)
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{name}: too many pixels (decompression bomb): {exc}") from exc
    except FileNotFoundError as exc:
        raise DataError(f"{name}: no such file") from exc
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ValueError...
        raise DataError(f"{name}: not a readable image ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from exc


def to_rgb(im):
    """Any PIL mode to 8-bit RGB: alpha composited on white, 16-bit scaled, CMYK converted."""
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        im = Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return im


def resize(im, size: tuple[int, int], mode: str = "stretch", interpolation: str = "bilinear"):
    """Resize a PIL image to (height, width): stretch (the notebook's), center-crop (Teachable
    Machine's `ImageOps.fit`), or pad, with a PIL resampling filter named by `interpolation`."""
    from PIL import Image, ImageOps

    h, w = size
    if interpolation not in INTERPOLATIONS:
        raise DataError(f"unknown interpolation {interpolation!r}: use one of {', '.join(INTERPOLATIONS)}")
    method = getattr(Image.Resampling, interpolation.upper())
    if mode == "stretch":
        return im.resize((w, h), method)
    if mode == "crop":
        return ImageOps.fit(im, (w, h), method)
    if mode == "pad":
        return ImageOps.pad(im, (w, h), method, color=(0, 0, 0))
    raise DataError(f"unknown resize mode {mode!r}: use one of {', '.join(RESIZE_MODES)}")


def read_image(source, size: tuple[int, int] | None = None, mode: str = "stretch",
               interpolation: str = "bilinear") -> np.ndarray:
    """Pixels as uint8 (H, W, 3); resized to `size` (height, width) when given.

    >>> read_image("cat.jpg", (224, 224)).shape  # doctest: +SKIP
    (224, 224, 3)
    """
    im = open_image(source)
    if size is not None:
        im = resize(im, size, mode, interpolation)
    return np.asarray(im, dtype=np.uint8)


# Magic numbers of the formats we decode: the content decides the format, never the extension.
_SIGNATURES = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
)
# What each extension claims to be.
EXTENSION_FORMATS = {
    ".jpg": "jpeg", ".jpeg": "jpeg", ".jpe": "jpeg", ".jfif": "jpeg", ".png": "png", ".gif": "gif",
    ".bmp": "bmp", ".webp": "webp", ".tif": "tiff", ".tiff": "tiff",
}


def sniff_format(head: bytes) -> str | None:
    """The image format the first bytes of a file announce ("jpeg", "png", ...), or None."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    for magic, name in _SIGNATURES:
        if head.startswith(magic):
            return name
    return None

