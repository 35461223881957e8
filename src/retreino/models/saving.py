"""Saving models with their metadata embedded, so a reloaded file never guesses labels or scaling.

`.keras` archives get a `retreino.json` member; H5 files a `retreino` root attribute. A
`labels.txt` (Teachable Machine format) is written beside every model for other tools.
"""
from __future__ import annotations

import contextlib
import json
import zipfile
from pathlib import Path

from ..atomic import atomic_path, write_text
from ..errors import RetreinoError
from ..safety import check_metadata
from .info import LoadedModel, ModelInfo, labels_text

META_MEMBER = "retreino.json"
META_ATTR = "retreino"
MAX_META_BYTES = 1 << 20


def save_model(loaded: LoadedModel, path: str | Path, write_labels: bool = True) -> Path:
    """Save as `.keras` or `.h5` (by suffix), atomically, metadata included.

    >>> path = save_model(load_model(MODEL), RUNS / "copy.keras")
    >>> load_model(path).class_names, (RUNS / "labels.txt").read_text().splitlines()
    (['5 Galoon', '500ML'], ['0 5 Galoon', '1 500ML'])
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".keras", ".h5", ".hdf5"):
        raise RetreinoError(f"save_model writes .keras or .h5 files, not {path.name}")
    meta = json.dumps(loaded.info.to_dict())
    with atomic_path(path) as tmp, _quiet_h5_warning():
        loaded.model.save(tmp)
        if suffix == ".keras":
            with zipfile.ZipFile(tmp, "a") as zf:
                zf.writestr(META_MEMBER, meta)
        else:
            import h5py

            with h5py.File(tmp, "a") as f:
                f.attrs[META_ATTR] = meta
    if write_labels and loaded.info.class_names:
        write_text(path.parent / "labels.txt", labels_text(loaded.info.class_names))
    return path


@contextlib.contextmanager
def _quiet_h5_warning():
    """Keras logs "HDF5 is legacy" on every H5 save; writing H5 is deliberate here (compatibility)."""
    from .._env import quiet_loggers

    with quiet_loggers("absl"):
        yield


def read_metadata(path: str | Path) -> ModelInfo | None:
    """The metadata retreino embedded in a model file, or None for files from elsewhere."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".keras":
            with zipfile.ZipFile(path) as zf:
                if META_MEMBER not in zf.namelist():
                    return None
                if zf.getinfo(META_MEMBER).file_size > MAX_META_BYTES:
                    raise RetreinoError(f"{path}: its {META_MEMBER} declares over {MAX_META_BYTES:,} bytes")
                return ModelInfo.from_dict(check_metadata(json.loads(zf.read(META_MEMBER)), path))
        import h5py

        with h5py.File(path, "r") as f:
            raw = f.attrs.get(META_ATTR)
            if raw is None:
                return None
            return ModelInfo.from_dict(check_metadata(json.loads(raw if isinstance(raw, str) else raw.decode()), path))
    except (OSError, zipfile.BadZipFile, json.JSONDecodeError, KeyError, UnicodeDecodeError, RecursionError):
        return None
