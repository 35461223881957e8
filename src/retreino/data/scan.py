"""Looking at image files without trusting them: format by content, size, pixels, content hash.

`scan_images` is shared by `load_dataset` (a cheap pass: header plus an end-of-file check, so
loading 2,000 files takes a second or two) and `retreino check-data` (a deep pass that decodes
every pixel). Either way a file that would crash an epoch never reaches the pipeline.
"""
from __future__ import annotations

import hashlib
import io
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

from .images import EXTENSION_FORMATS, MAX_PIXELS, sniff_format

MIN_SIDE = 32  # smaller images are reported as tiny: upscaled to 224 they carry little signal

# Kinds of problem that make a file unusable; every other kind is a warning about a usable file.
BAD_KINDS = ("empty", "unreadable", "not_image", "corrupt", "too_large")


@dataclass
class Problem:
    """Something wrong with the data. `fatal` problems stop training (and fail check-data)."""

    kind: str
    path: str | None
    message: str
    fatal: bool = False
    others: list[str] = field(default_factory=list)  # further files involved (duplicates)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FileInfo:
    """What a scan learned about one file."""

    path: str
    size: int = 0
    format: str | None = None  # by content: jpeg, png, gif, bmp, webp, tiff...
    width: int | None = None
    height: int | None = None
    mode: str | None = None  # PIL mode before conversion: RGB, RGBA, L, CMYK, I;16...
    digest: str | None = None  # content hash, for duplicate detection
    error: Problem | None = None  # why the file cannot be used
    notes: list[Problem] = field(default_factory=list)  # warnings about a usable file

    @property
    def ok(self) -> bool:
        return self.error is None


def _looks_complete(fmt: str | None, data: bytes) -> bool:
    """Cheap test that a file was not cut short: its format's end marker is where it belongs.

    A truncated download almost never ends on the marker; files that do not pass get a full decode.
    """
    tail = data[-64:].rstrip(b"\x00\r\n ")
    if fmt == "jpeg":
        return tail.endswith(b"\xff\xd9")
    if fmt == "png":
        return b"IEND" in tail[-12:]
    if fmt == "gif":
        return tail.endswith(b";")
    return False  # rarer formats: always decode


def _decode_fully(data: bytes, fmt: str | None) -> None:
    """Decode every byte of the image, as training will, and convert it to RGB.

    JPEGs are decoded at 1/8 scale (libjpeg's DCT scaling): every byte of the compressed stream
    is still read and checked, at a fraction of the cost of full-size pixels.
    """
    from PIL import Image, ImageOps

    from .images import to_rgb

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(io.BytesIO(data)) as im:
            if fmt == "jpeg":
                im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
            im.seek(0)
            im.load()
            to_rgb(ImageOps.exif_transpose(im))


def scan_file(path: str, deep: bool = False, digest: bool = True) -> FileInfo:
    """Inspect one file. Never raises: what is wrong goes into `.error` / `.notes`."""
    from PIL import Image

    info = FileInfo(path=str(path))

    def bad(kind: str, message: str) -> FileInfo:
        info.error = Problem(kind, str(path), message)
        return info

    from ..safety import image_file_problem

    refused = image_file_problem(path)  # by stat, before a byte is read: FIFOs, sparse giants
    if refused:
        return bad(*refused)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        return bad("unreadable", f"cannot read the file ({exc.strerror or type(exc).__name__})")
    info.size = len(data)
    if not data:
        return bad("empty", "empty file (0 bytes)")
    if digest:
        info.digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    fmt = sniff_format(data[:16])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EXIF and palette warnings are not the user's problem
            with Image.open(io.BytesIO(data)) as im:
                fmt = fmt or (im.format or "").lower() or None
                info.width, info.height, info.mode = im.width, im.height, im.mode
    except Image.DecompressionBombError as exc:
        import re

        m = re.search(r"\((\d+) pixels\)", str(exc))
        count = f"{int(m.group(1)):,} pixels: " if m else ""
        return bad("too_large", f"{count}too many to decode safely (decompression bomb?)")
    except Exception:
        if fmt is None:
            head = data[:24]
            text = all(32 <= b < 127 or b in (9, 10, 13) for b in head)
            return bad("not_image", "not an image" + (" (a text file)" if text else " (unknown content)"))
        return bad("corrupt", f"{fmt.upper()} header cannot be read")
    info.format = fmt
    if info.width * info.height > MAX_PIXELS:
        return bad("too_large", f"{info.width}x{info.height} is over the {MAX_PIXELS:,}-pixel limit (decompression bomb?)")
    if deep or not _looks_complete(fmt, data):
        try:
            _decode_fully(data, fmt)
        except Exception as exc:  # whatever PIL raises for a broken stream
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if "truncated" in reason:
                reason = "truncated: the file ends before the image does"
            return bad("corrupt", f"corrupt {fmt.upper()}: {reason}")
    ext = Path(path).suffix.lower()
    claimed = EXTENSION_FORMATS.get(ext)
    if claimed != fmt:
        info.notes.append(Problem("extension", str(path), f"named {ext or '(no extension)'} but the content is {fmt.upper()}"))
    if min(info.width, info.height) < MIN_SIDE:
        info.notes.append(Problem("tiny", str(path), f"only {info.width}x{info.height} pixels (< {MIN_SIDE})"))
    return info


def scan_images(paths: Iterable[str | os.PathLike], deep: bool = False, digest: bool = True,
                workers: int | None = None, desc: str = "scanning") -> list[FileInfo]:
    """Scan files in parallel, in order. `deep=True` decodes every pixel (check-data)."""
    paths = [str(p) for p in paths]
    workers = workers or min(8, 2 * (os.cpu_count() or 1))
    bar = progress_bar(len(paths), desc)
    with ThreadPoolExecutor(workers) as pool:
        results = []
        for info in pool.map(lambda p: scan_file(p, deep=deep, digest=digest), paths):
            results.append(info)
            bar.update(1)
    bar.close()
    return results


def progress_bar(total: int, desc: str, unit: str = "img"):
    """A progress bar for long passes only: small folders finish before a bar would help."""
    from ..console import progress

    if total < 200:
        return _NoBar()
    return progress(total=total, desc=desc, unit=unit, leave=False)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass
