"""make_pipeline / decode_all on real photos: the same pixels as read_image, order, labels, augmentation."""
from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import real_images
from retreino.config import AugmentConfig
from retreino.data import decode_all, load_dataset, make_pipeline, read_image
from retreino.errors import DataError
from retreino.preprocessing import scale_pixels_np


@pytest.fixture(scope="module")
def subset(cats_dogs_subset):
    return load_dataset(cats_dogs_subset)


def batches(ds):
    return [tuple(np.asarray(t) for t in (b if isinstance(b, tuple) else (b,))) for b in ds]


@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("resize_mode,mode", [("stretch", "tf"), ("crop", "unit"), ("pad", "caffe")])
def test_pixels_match_read_image(cache, resize_mode, mode):
    paths = [str(p) for p in real_images("test", "dogs", 5)]
    ds = make_pipeline(paths, image_size=(160, 128), preprocessing=mode, batch_size=2,
                       label_mode=None, resize_mode=resize_mode, cache=cache)
    got = np.concatenate([b[0] for b in batches(ds)])
    want = scale_pixels_np(np.stack([read_image(p, (160, 128), resize_mode) for p in paths]), mode)
    assert got.shape == (5, 160, 128, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_decode_all_and_order(subset):
    images = decode_all(subset.test.paths[:6], (96, 96))
    assert images.shape == (6, 96, 96, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[3], read_image(subset.test.paths[3], (96, 96)))
    # Evaluation order: batch i holds paths[i*B:(i+1)*B] and their labels.
    out = batches(make_pipeline(subset.test, image_size=(96, 96), batch_size=16, label_mode="int", preprocessing="raw"))
    assert [len(b[0]) for b in out] == [16, 16, 8]
    np.testing.assert_array_equal(np.concatenate([b[1] for b in out]), subset.test.labels)
    np.testing.assert_array_equal(out[0][0][:6].astype(np.uint8), images)


def test_label_modes(subset):
    kw = dict(image_size=(64, 64), batch_size=8)
    x, y = next(iter(make_pipeline(subset.validation, **kw)))
    assert x.shape == (8, 64, 64, 3) and y.shape == (8, 2) and y.dtype.name == "float32"
    assert np.allclose(np.sum(y, axis=1), 1.0)
    x, y = next(iter(make_pipeline(subset.validation, label_mode="binary", **kw)))
    assert y.shape == (8, 1) and set(np.unique(y)) <= {0.0, 1.0}
    x, y = next(iter(make_pipeline(subset.validation, label_mode="int", **kw)))
    assert y.dtype.name == "int32"
    with pytest.raises(DataError, match="needs labels"):
        make_pipeline(subset.validation.paths, **kw)
    with pytest.raises(DataError, match="exactly 2 classes"):
        make_pipeline(subset.validation.paths, np.arange(40) % 3, label_mode="binary", **kw)
    with pytest.raises(DataError, match="resize mode"):
        make_pipeline(subset.validation, resize_mode="squash", **kw)


@pytest.mark.parametrize("cache", [True, False])
def test_training_shuffles_every_epoch_reproducibly(subset, cache):
    n = len(subset.train)
    index = np.arange(n)  # label = position, so the order is visible

    def epochs(k):
        ds = make_pipeline(subset.train.paths, index, num_classes=n, label_mode="int", image_size=(32, 32),
                           batch_size=25, training=True, cache=cache, seed=3)
        return [np.concatenate([b[1] for b in batches(ds)]) for _ in range(k)]

    first, second = epochs(2)
    assert sorted(first) == list(range(n)) and sorted(second) == list(range(n))
    assert list(first) != list(second) and list(first) != list(range(n))
    assert list(epochs(1)[0]) == list(first)  # same seed, same order


def test_flip_only_augmentation_mirrors_exactly(subset):
    paths = subset.test.paths[:16]
    plain = decode_all(paths, (64, 64)).astype(np.float32)
    cfg = AugmentConfig(rotation=0, width_shift=0, height_shift=0, horizontal_flip=True)
    ds = make_pipeline(paths, np.arange(16), num_classes=16, label_mode="int", image_size=(64, 64),
                       batch_size=16, training=True, augment=cfg, preprocessing="raw", seed=0)
    x, idx = batches(ds)[0]
    flipped = 0
    for img, i in zip(x, idx):
        if np.allclose(img, plain[i], atol=1e-3):
            continue
        np.testing.assert_allclose(img, plain[i][:, ::-1], atol=1e-3)
        flipped += 1
    assert 0 < flipped < 16


def test_augmentation_matches_image_data_generator_transform():
    """One combined warp == Keras 2 ImageDataGenerator.apply_transform for the same parameters."""
    from tf_keras.preprocessing.image import ImageDataGenerator

    from retreino.data.augment import compose_affine, warp, warp_numpy

    x = read_image(real_images("train", "cats", 1)[0], (120, 120)).astype(np.float32)
    idg = ImageDataGenerator(fill_mode="nearest")
    for theta, tx, ty, zx, zy, flip in [(15.0, 20.0, -30.0, 1.0, 1.0, False), (-20.0, 7.5, 3.0, 1.1, 0.9, True)]:
        want = idg.apply_transform(x, {"theta": theta, "tx": tx, "ty": ty, "zx": zx, "zy": zy, "flip_horizontal": flip})
        m = compose_affine([math.radians(theta)], [tx], [ty], [zx], [zy], [float(flip)], [0.0], 120, 120)
        got = np.asarray(warp(x[None], m))[0]  # TensorFlow kernel, float
        np.testing.assert_allclose(got, want, atol=0.05)
        fast = warp_numpy(x[None].astype(np.uint8), np.asarray(m))[0]  # OpenCV, uint8 like the cache
        assert np.abs(fast - want).max() <= 1.5 and np.abs(fast - want).mean() < 0.5


@pytest.mark.parametrize("backend", ["opencv", "tf"])
def test_both_warp_backends_give_the_same_augmentation(subset, backend, monkeypatch):
    monkeypatch.setenv("RETREINO_AUGMENT_BACKEND", backend)
    kw = dict(image_size=(64, 64), batch_size=8, training=True, augment=AugmentConfig(), seed=5, preprocessing="raw")
    x, _ = next(iter(make_pipeline(subset.validation, **kw)))
    monkeypatch.setenv("RETREINO_AUGMENT_BACKEND", "tf" if backend == "opencv" else "opencv")
    other, _ = next(iter(make_pipeline(subset.validation, **kw)))
    assert np.abs(np.asarray(x) - np.asarray(other)).mean() < 0.5


def test_notebook_augmentation_yields_valid_batches(subset):
    cfg = AugmentConfig(zoom=0.1, brightness=0.2, contrast=0.2)
    ds = make_pipeline(subset.train, image_size=(96, 96), batch_size=32, training=True, augment=cfg, seed=1)
    out = batches(ds)
    assert sum(len(b[0]) for b in out) == 100
    x = np.concatenate([b[0] for b in out])
    assert x.dtype == np.float32 and x.shape[1:] == (96, 96, 3)
    assert -1.0 <= x.min() and x.max() <= 1.0 and np.isfinite(x).all()
    plain = make_pipeline(subset.train, image_size=(96, 96), batch_size=32, training=True, augment=None, seed=1)
    # Same seed, same shuffle: only augmentation tells them apart.
    y0 = batches(plain)[0]
    assert np.array_equal(y0[1], out[0][1]) and not np.allclose(y0[0], out[0][0])


def test_a_split_is_decoded_once_for_all_the_pipelines_that_share_a_memo(tmp_path):
    """The probe, fine-tuning and calibration each build a pipeline of the training split: with one
    `decoded` memo (TrainingData's) the images are decoded once, so memory holds one copy. Proof that
    the second pipeline did not read the files: it still has every image after they were overwritten."""
    import shutil

    from PIL import Image

    for cls in ("cats", "dogs"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for p in real_images("train", cls, 4):
            shutil.copy(p, tmp_path / "data" / cls / p.name)
    split = load_dataset(tmp_path / "data", val_split=0.25, test_split=0.0).train
    memo: dict = {}
    kw = dict(image_size=(64, 64), batch_size=4, decoded=memo, label_mode="int")
    first = np.concatenate([b[0] for b in batches(make_pipeline(split, **kw))])
    for path in split.paths:  # every file now a flat grey picture
        Image.new("RGB", (64, 64), (128, 128, 128)).save(path, format="JPEG")
    again = np.concatenate([b[0] for b in batches(make_pipeline(split, **kw))])
    assert len(memo) == 1 and first.std() > 0.1
    np.testing.assert_array_equal(again, first)
    fresh = np.concatenate([b[0] for b in batches(make_pipeline(split, **{**kw, "decoded": {}}))])
    assert fresh.std() < 0.05  # without the memo the files are read again
