"""Shared fixtures: the real data and models in ../shared, and expensive models loaded once."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
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


SHARED_MISSING = f"the shared data folder is missing: {SHARED} (see README); this test needs its photos or models"


def need_shared() -> None:
    """Fail the calling test with a clear message when ../shared is not there (unit tests run without it)."""
    if not SHARED.is_dir():
        pytest.fail(SHARED_MISSING, pytrace=False)


_LOG_DIR: Path | None = None


def server_log(prefix: str) -> Path:
    """A fresh file for a child process's output, in a folder the session removes at its end (servers the tests
    kill leave nothing behind in /tmp); a failing test puts the log's text in its message."""
    global _LOG_DIR
    if _LOG_DIR is None:
        _LOG_DIR = Path(tempfile.mkdtemp(prefix="retreino-test-logs-"))
    fd, path = tempfile.mkstemp(prefix=prefix, suffix=".log", dir=_LOG_DIR)
    os.close(fd)
    return Path(path)


def pytest_unconfigure(config):
    if _LOG_DIR is not None:
        shutil.rmtree(_LOG_DIR, ignore_errors=True)


def pytest_report_header(config):
    return None if SHARED.is_dir() else f"WARNING: {SHARED_MISSING}"


def pytest_runtest_makereport(item, call):
    # A test that reads ../shared directly fails with a FileNotFoundError or an empty list; say why under it.
    if call.excinfo is not None and not SHARED.is_dir():
        item.add_report_section(call.when, "shared", SHARED_MISSING)


# `make test` runs the suite on 2 pytest-xdist workers with `--dist loadgroup`. A file's tests stay on one
# worker, so its module fixtures are built once; files that share an expensive session fixture share a worker too,
# so that fixture is built once. Without xdist the marks are inert.
SHARED_FIXTURE_GROUPS = {"retrained_exports": "exports", "serve_server": "serve"}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the marks
def pytest_collection_modifyitems(config, items):
    group_of = {}
    for item in items:
        for fixture, group in SHARED_FIXTURE_GROUPS.items():
            if fixture in getattr(item, "fixturenames", ()):
                group_of.setdefault(item.module.__name__, group)
    for item in items:
        item.add_marker(pytest.mark.xdist_group(group_of.get(item.module.__name__, item.module.__name__)))


def cats_vs_dogs_subset(root: Path, copy: bool = False, **per_split: int) -> Path:
    """root/<split>/{cats,dogs}/ holding the first n photos of each class of each split of cats_vs_dogs.

    Hard links by default (cheap; copies across file systems): a symlink out of the data folder is
    refused by load_dataset (see retreino.safety). `copy=True` for tests that alter or move the files.
    """
    for split, n in per_split.items():
        for cls in ("cats", "dogs"):
            dst = root / split / cls
            dst.mkdir(parents=True)
            for f in sorted((CATS_VS_DOGS / split / cls).glob("*.jpg"))[:n]:
                if copy:
                    shutil.copy(f, dst / f.name)
                else:
                    link_or_copy(f, dst / f.name)
    return root


def link_or_copy(src: Path, dst: Path) -> Path:
    """A hard link to a shared photo (a copy across file systems): never a symlink out of a data folder."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy(src, dst)
    return dst


def real_images(split: str = "test", cls: str = "cats", n: int = 8) -> list[Path]:
    return sorted((CATS_VS_DOGS / split / cls).glob("*.jpg"))[:n]


@pytest.fixture(scope="session")
def water_bottles():
    """The real Teachable Machine export, loaded once per session (treat as read-only)."""
    need_shared()
    from retreino import load_model

    return load_model(WATER_BOTTLES)


@pytest.fixture(scope="module")
def cats_dogs(water_bottles):
    """The real TM model relabelled cats/dogs: its numbers are arbitrary, but real and checkable.

    Module-scoped: a test module may change its `info` without reaching the next module.
    """
    import dataclasses

    from retreino.models.info import LoadedModel

    return LoadedModel(water_bottles.model, dataclasses.replace(water_bottles.info, class_names=["cats", "dogs"]))


@pytest.fixture(scope="session")
def cats_dogs_subset(tmp_path_factory) -> Path:
    """A small notebook-layout copy of cats_vs_dogs: train 50+50, validation 20+20, test 20+20."""
    need_shared()
    return cats_vs_dogs_subset(tmp_path_factory.mktemp("cats_dogs_subset"), copy=True, train=50, validation=20, test=20)


def held_out_images(n: int = 50) -> list[Path]:
    """n held-out cats then n held-out dogs: the parity set of export tests."""
    return real_images("test", "cats", n) + real_images("test", "dogs", n)


@pytest.fixture(scope="session")
def retrained_run(tmp_path_factory) -> Path:
    """A run folder with a "retrained" model: the TM feature extractor + a new Dense(2, softmax) head.

    The head starts from a fixed seed and is fitted for a few epochs on features of 100 training
    images, so its margins look like a real fine-tune's rather than a coin toss's.
    """
    need_shared()
    import keras
    import numpy as np

    from retreino import load_model, save_model
    from retreino.data.images import read_image
    from retreino.models import LoadedModel

    base = load_model(WATER_BOTTLES)
    features = base.model.layers[0]
    inputs = keras.Input((224, 224, 3), name="image")
    head = keras.layers.Dense(2, activation="softmax", name="head",
                              kernel_initializer=keras.initializers.GlorotUniform(seed=7))
    model = keras.Model(inputs, head(features(inputs)), name="retrained")
    train = real_images("train", "cats", 50) + real_images("train", "dogs", 50)
    x = np.stack([read_image(p, (224, 224)) for p in train]).astype("float32") / 127.5 - 1
    f = np.asarray(features.predict(x, verbose=0))
    y = np.repeat([0, 1], 50)
    keras.utils.set_random_seed(7)
    head_only = keras.Sequential([keras.Input((f.shape[1],)), head])
    head_only.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    head_only.fit(f, y, epochs=20, batch_size=32, verbose=0)
    info = base.info
    info.class_names, info.format = ["cats", "dogs"], "keras"
    run = tmp_path_factory.mktemp("run")
    save_model(LoadedModel(model, info), run / "fine_tuned_model.keras")
    return run


@pytest.fixture(scope="session")
def unknown_model(retrained_run, tmp_path_factory) -> Path:
    """A run folder: retrained_run's model with a temperature and a kNN unknown detector (unknown.npz).

    Fitted on 40 train / 20 validation photos, the way `ood.fit_after_training` does at the end of a
    real run, without training anything: cats and dogs are accepted, flowers answered `unknown`.
    """
    import numpy as np

    from retreino import load_model, ood, save_model
    from retreino.calibration import fit_temperature
    from retreino.inference import Predictor
    from retreino.preprocessing import scale_pixels_np

    run = tmp_path_factory.mktemp("unknown_run")
    shutil.copy(retrained_run / "fine_tuned_model.keras", run / "fine_tuned_model.keras")
    loaded = load_model(run / "fine_tuned_model.keras")
    pred = Predictor(loaded, runtime="keras")
    both = ood.with_features(loaded.model)

    def outputs(paths):
        x = scale_pixels_np(np.stack([pred.load_pixels(p) for p in paths]), loaded.info.preprocessing)
        return ood.split_outputs(np.asarray(both(x)), 2)

    train = real_images("train", "cats", 20) + real_images("train", "dogs", 20)
    val = real_images("validation", "cats", 10) + real_images("validation", "dogs", 10)
    _, train_f = outputs(train)
    val_p, val_f = outputs(val)
    det = ood.fit_detector(train_f, np.repeat([0, 1], 20), val_f, 2, method="knn", accept=0.95, k=3)
    det.save(run)
    loaded.info.temperature = fit_temperature(val_p, np.repeat([0, 1], 10))
    loaded.info.unknown = det.metadata()
    save_model(loaded, run / "fine_tuned_model.keras")
    return run


@pytest.fixture(scope="session")
def retrained_exports(retrained_run) -> dict:
    """Every export format of `retrained_run` in run/exports/<format>/, checked on 100 real images."""
    from retreino import load_model
    from retreino.export import FORMATS, export_models

    loaded = load_model(retrained_run)
    calibration = real_images("train", "cats", 100)[50:] + real_images("train", "dogs", 100)[50:]
    results = export_models(loaded, FORMATS, images=held_out_images(), calibration=calibration)
    return {r.format: r for r in results}


@pytest.fixture(scope="session")
def serve_server():
    """One real `retreino serve` subprocess on 127.0.0.1 shared by tests/test_serve*.py."""
    from test_serve import SERVER_ARGS, start_server

    server = start_server(*SERVER_ARGS)
    try:
        yield server
    finally:
        server.stop()


# ---- headless Chromium (Debian's package), for every browser test ---------------------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@contextmanager
def chromium(extra_args=()):
    """One headless Chromium, closed on the way out (Playwright's sync API allows one running instance per thread)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS + list(extra_args))
        try:
            yield b
        finally:
            b.close()
