"""Shared fixtures: the real data and models in ../shared, and expensive models loaded once."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("RETREINO_QUIET", "1")  # no progress bars in test logs
os.environ.setdefault("RETREINO_OFFLINE", "1")  # tests never download weights

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
TM = SHARED / "models" / "teachable_machine"
WATER_BOTTLES = TM / "water_bottles"
SHINCHAN = TM / "shinchan_lightbulb"
IMAGENET_MOBILENET_V2 = SHARED / "models" / "imagenet" / "mobilenet_v2_1.0_224_no_top.weights.h5"
CATS_VS_DOGS = SHARED / "datasets" / "cats_vs_dogs"
CAT_BREEDS = SHARED / "datasets" / "cat_breeds"


def pytest_configure(config):
    if not SHARED.is_dir():
        raise pytest.UsageError(f"the shared data folder is missing: {SHARED} (see README)")


def real_images(split: str = "test", cls: str = "cats", n: int = 8) -> list[Path]:
    return sorted((CATS_VS_DOGS / split / cls).glob("*.jpg"))[:n]


@pytest.fixture(scope="session")
def water_bottles():
    """The real Teachable Machine export, loaded once per session (treat as read-only)."""
    from retreino import load_model

    return load_model(WATER_BOTTLES)


@pytest.fixture(scope="session")
def cats_dogs_subset(tmp_path_factory) -> Path:
    """A small notebook-layout copy of cats_vs_dogs: train 50+50, validation 20+20, test 20+20."""
    root = tmp_path_factory.mktemp("cats_dogs_subset")
    for split, n in (("train", 50), ("validation", 20), ("test", 20)):
        for cls in ("cats", "dogs"):
            dst = root / split / cls
            dst.mkdir(parents=True)
            for f in sorted((CATS_VS_DOGS / split / cls).glob("*.jpg"))[:n]:
                shutil.copy(f, dst / f.name)
    return root


@pytest.fixture(scope="session")
def serve_server():
    """One real `retreino serve` subprocess on 127.0.0.1 shared by tests/test_serve*.py."""
    from test_serve import SERVER_ARGS, start_server

    server = start_server(*SERVER_ARGS)
    try:
        yield server
    finally:
        server.stop()
