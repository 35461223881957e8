"""Every cache of inference, in one place: models read from paths, and the Predictors made from them.

Calling `predict("runs/cats", image)` in a loop must not reload the model (or retrace its graph)
every time. Both caches are small LRUs: a path is keyed by its resolved name and the newest
modification time of its files, so a model retrained in place is read again; a Predictor is keyed
by its model's identity and settings, and holds that model, so it never outlives the entry.
"""
from __future__ import annotations

import collections
import os
from pathlib import Path
from typing import Any, Callable, Hashable

MODELS_MAX = 3
PREDICTORS_MAX = 4  # each holds its model: cv folds must not pile up in memory


class LRU:
    """A bounded mapping that forgets the least recently used entry first."""

    def __init__(self, size: int):
        self.size = size
        self._items: collections.OrderedDict[Hashable, Any] = collections.OrderedDict()

    def get_or_make(self, key: Hashable, make: Callable[[], Any]) -> Any:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = make()
        self._items[key] = value
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()


MODELS = LRU(MODELS_MAX)  # LoadedModels read from a path
PREDICTORS = LRU(PREDICTORS_MAX)  # Predictors, for in-memory models and for paths alike


def path_key(path: str | os.PathLike) -> tuple[str, int]:
    """(resolved path, newest mtime of it and its direct children): changes when the model is rewritten."""
    p = Path(path)
    files = [p] + (list(p.iterdir()) if p.is_dir() else [])
    return str(p.resolve()), max((f.stat().st_mtime_ns for f in files if f.exists()), default=0)


def clear() -> None:
    """Forget every cached model and Predictor (tests; a long-lived process freeing memory)."""
    MODELS.clear()
    PREDICTORS.clear()
