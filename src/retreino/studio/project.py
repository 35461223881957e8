"""A studio project: an ordinary data folder of `<class>/` sub-folders, and its hidden `.retreino/` folder.

    PROJECT/
      cats/ dogs/ ...            the images, one sub-folder per class: `retreino train --data PROJECT` works as is
      .retreino/runs/<name>/     the runs the studio started (run directories, see retreino.runs)
      .retreino/thumbs/<class>/  cached thumbnails, rebuilt when the image changes
      .retreino/trash/           deleted classes and images (moved, never erased: a click is not a decision)
      .retreino/jobs/            the log of every job the studio ran
      .retreino/models/<name>/   starting models dropped on the page (studio/models.py), once they opened

Everything the studio keeps is under the hidden folder because the data layer skips hidden folders:
a visible `runs/` would be read as one more class by every command. Every name that comes from a
request (class, image) is checked here, before any path is built from it.
"""
from __future__ import annotations

import io
import os
import re
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..data.images import IMAGE_EXTENSIONS, MAX_PIXELS, sniff_format
from ..errors import RetreinoError

HIDDEN = ".retreino"
THUMB_SIZE = 128  # pixels, square: the grid cell; cached JPEGs of ~4 KB each
# Extension written for each sniffed format: the content decides, never the name the browser sent.
_EXTENSION = {"jpeg": ".jpg", "png": ".png", "gif": ".gif", "bmp": ".bmp", "webp": ".webp", "tiff": ".tif"}
_BAD_NAME = re.compile(r"[\x00-\x1f/\\:*?\"<>|]")
MAX_NAME = 100


class ProjectError(RetreinoError):
    """A request the project refuses: `status` is the HTTP status the studio answers with."""

    def __init__(self, message: str, status: int = 400, code: str = "bad_request"):
        super().__init__(message)
        self.status, self.code = status, code


def check_name(name: str, what: str = "class name") -> str:
    """A class or image name that is one safe path component, or a ProjectError saying why not."""
    name = (name or "").strip()
    if not name:
        raise ProjectError(f"the {what} is empty")
    if len(name) > MAX_NAME:
        raise ProjectError(f"the {what} is longer than {MAX_NAME} characters")
    if name.startswith(".") or _BAD_NAME.search(name):
        raise ProjectError(f"{what} {name!r}: no leading '.', and none of / \\ : * ? \" < > | or control characters")
    return name


@dataclass
class ImagePage:
    total: int
    offset: int
    names: list[str]


class Project:
    """The folder the studio works on; every file operation of the studio's API goes through here."""

    def __init__(self, root: str | os.PathLike):
        root = Path(root).expanduser().resolve()
        if root.exists() and not root.is_dir():
            raise RetreinoError(f"{root}: not a folder")
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.hidden = root / HIDDEN
        self.runs_dir = self.hidden / "runs"
        self.thumbs = self.hidden / "thumbs"
        self.trash = self.hidden / "trash"
        self.jobs_dir = self.hidden / "jobs"
        self.models_dir = self.hidden / "models"
        for d in (self.runs_dir, self.thumbs, self.trash, self.jobs_dir, self.models_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._listing: dict[str, tuple[int, list[str]]] = {}  # class -> (folder mtime_ns, sorted names)

    # -- classes --------------------------------------------------------------------------------
    def class_names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def classes(self) -> list[dict]:
        """[{name, count}] in the order training sees them (sorted names)."""
        return [{"name": c, "count": len(self.image_names(c))} for c in self.class_names()]

    def class_dir(self, name: str, must_exist: bool = True) -> Path:
        folder = self.root / check_name(name)
        if must_exist and not folder.is_dir():
            raise ProjectError(f"no class {name!r}", 404, "no_such_class")
        return folder

    def create_class(self, name: str) -> str:
        folder = self.class_dir(name, must_exist=False)
        if folder.exists():
            raise ProjectError(f"class {folder.name!r} already exists", 409, "class_exists")
        folder.mkdir()
        return folder.name

    def rename_class(self, old: str, new: str) -> str:
        src, dst = self.class_dir(old), self.class_dir(new, must_exist=False)
        if dst.exists():
            raise ProjectError(f"class {dst.name!r} already exists: merge into it instead", 409, "class_exists")
        src.rename(dst)
        if (self.thumbs / src.name).is_dir():
            (self.thumbs / src.name).rename(self.thumbs / dst.name)
        return dst.name

    def delete_class(self, name: str) -> str:
        """Moves the folder to .retreino/trash/ (recoverable by hand); returns where it went."""
        src = self.class_dir(name)
        dst = self.trash / f"{src.name}.{time.strftime('%Y%m%d-%H%M%S')}"
        n = 1
        while dst.exists():
            n += 1
            dst = self.trash / f"{src.name}.{time.strftime('%Y%m%d-%H%M%S')}-{n}"
        shutil.move(str(src), dst)
        shutil.rmtree(self.thumbs / src.name, ignore_errors=True)
        self._listing.pop(src.name, None)
        return str(dst.relative_to(self.root))

    def merge_classes(self, sources: list[str], into: str) -> int:
        """Moves every image of `sources` into class `into` (created if needed); returns how many moved."""
        target = self.class_dir(into, must_exist=False)
        folders = [self.class_dir(s) for s in sources if s != target.name]
        if not folders:
            raise ProjectError("nothing to merge: name at least one other class")
        target.mkdir(exist_ok=True)
        moved = 0
        for folder in folders:
            for path in sorted(folder.iterdir()):
                if path.is_file():
                    path.rename(self._free_name(target, path.stem, path.suffix))
                    moved += 1
            shutil.rmtree(folder) if not any(folder.iterdir()) else shutil.move(str(folder), self.trash / folder.name)
            shutil.rmtree(self.thumbs / folder.name, ignore_errors=True)
            self._listing.pop(folder.name, None)
        return moved

    # -- images ---------------------------------------------------------------------------------
    def image_names(self, cls: str) -> list[str]:
        """The image files of a class, sorted; re-listed only when the folder changed (10,000 names: ~20 ms)."""
        folder = self.class_dir(cls)
        stamp = folder.stat().st_mtime_ns
        cached = self._listing.get(folder.name)
        if cached and cached[0] == stamp:
            return cached[1]
        with os.scandir(folder) as it:
            names = sorted(e.name for e in it if not e.name.startswith(".") and e.is_file()
                           and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS)
        self._listing[folder.name] = (stamp, names)
        return names

    def images(self, cls: str, offset: int = 0, limit: int = 200) -> ImagePage:
        names = self.image_names(cls)
        offset = max(0, offset)
        return ImagePage(len(names), offset, names[offset: offset + max(0, min(limit, 1000))])

    def image_path(self, cls: str, name: str) -> Path:
        path = self.class_dir(cls) / check_name(name, "image name")
        if not path.is_file():
            raise ProjectError(f"no image {name!r} in {cls!r}", 404, "no_such_image")
        return path

    def add_image(self, cls: str, filename: str, data: bytes) -> str:
        """Saves uploaded bytes (already decoded once by the caller) under a free, clean name; returns it."""
        folder = self.class_dir(cls)
        fmt = sniff_format(data[:16])
        ext = _EXTENSION.get(fmt or "")
        if ext is None:
            raise ProjectError(f"{filename}: not an image (expected JPEG, PNG, GIF, BMP, WEBP or TIFF)", 415, "not_an_image")
        stem = Path(filename or "image").stem
        stem = _BAD_NAME.sub("_", stem).lstrip(".")[:80] or "image"
        path = self._free_name(folder, stem, ext)
        tmp = folder / f".{path.name}.part"  # hidden while half-written: a training scan never sees it
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return path.name

    def delete_image(self, cls: str, name: str) -> None:
        path = self.image_path(cls, name)
        dst_dir = self.trash / path.parent.name
        dst_dir.mkdir(exist_ok=True)
        path.rename(self._free_name(dst_dir, path.stem, path.suffix))
        (self.thumbs / path.parent.name / f"{path.name}.jpg").unlink(missing_ok=True)

    @staticmethod
    def _free_name(folder: Path, stem: str, ext: str) -> Path:
        path, n = folder / f"{stem}{ext}", 1
        while path.exists():
            n += 1
            path = folder / f"{stem}-{n}{ext}"
        return path

    # -- thumbnails -----------------------------------------------------------------------------
    def thumbnail(self, cls: str, name: str) -> Path:
        """A THUMB_SIZE square JPEG of the image, cached; rebuilt when the image is newer than it."""
        src = self.image_path(cls, name)
        thumb = self.thumbs / src.parent.name / f"{src.name}.jpg"
        try:
            if thumb.stat().st_mtime_ns >= src.stat().st_mtime_ns:
                return thumb
        except FileNotFoundError:
            pass
        thumb.parent.mkdir(parents=True, exist_ok=True)
        data = make_thumbnail(src)
        tmp = thumb.with_name(f".{thumb.name}.{os.getpid()}.part")
        tmp.write_bytes(data)
        os.replace(tmp, thumb)
        return thumb


def make_thumbnail(path: Path, size: int = THUMB_SIZE) -> bytes:
    """JPEG bytes of a centre-cropped square; a ProjectError (422) for a file that is not a usable image.

    JPEGs are decoded at a reduced scale (PIL's draft mode, libjpeg's DCT scaling): a thumbnail of a
    12 Mpx photo costs a few milliseconds instead of a full decode.
    """
    from PIL import Image, ImageOps

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise ProjectError(f"{path.name}: {im.width}x{im.height} pixels is over the limit", 422, "too_many_pixels")
                im.draft("RGB", (size * 2, size * 2))
                im = ImageOps.exif_transpose(im).convert("RGB")
                im = ImageOps.fit(im, (size, size), Image.BILINEAR)
                buf = io.BytesIO()
                im.save(buf, "JPEG", quality=80)
                return buf.getvalue()
    except ProjectError:
        raise
    except Exception as exc:  # UnidentifiedImageError, OSError (truncated), DecompressionBomb...
        raise ProjectError(f"{path.name}: not a readable image ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})",
                           422, "corrupt_image") from exc

