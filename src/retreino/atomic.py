"""Atomic file writes (a temporary file beside the target, then renamed over it), and the JSON reader.

A crash (or SIGKILL) mid-write leaves the previous file intact, never a half-written one.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path with the target's suffix; it replaces `target` only on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Keep the full suffix chain (".weights.h5", ".keras"): Keras picks the format from it.
    suffix = "".join(target.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    os.unlink(tmp)  # some writers (Keras, h5py) refuse to overwrite; let them create it
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(target: str | os.PathLike, text: str) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def write_bytes(target: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_json(target: str | os.PathLike, obj, indent: int = 2) -> Path:
    return write_text(target, json.dumps(obj, indent=indent, default=str) + "\n")


_MISSING = object()


def read_json(path: str | os.PathLike, default=_MISSING):
    """The JSON content of `path`, the counterpart of `write_json` and the one JSON reader of retreino.

    A missing file returns `default` (a RetreinoError when none is given); a file that is not
    valid JSON is always a RetreinoError naming it, never a raw JSONDecodeError.
    """
    from .errors import RetreinoError

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if default is _MISSING:
            raise RetreinoError(f"no such file: {path}") from None
        return default
    except OSError as exc:
        raise RetreinoError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return json.loads(text)
    except ValueError as exc:
        raise RetreinoError(f"{path}: not valid JSON ({exc})") from exc
