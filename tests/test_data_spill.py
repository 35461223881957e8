"""The decoded-image cache spills to a file on disk when it is over budget: same batches, bounded memory."""
from __future__ import annotations

import numpy as np

from conftest import real_images
from retreino.data import pipeline


def _batches(ds):
    return [tuple(t.numpy() for t in b) for b in ds]


def test_over_budget_cache_spills_to_a_file_with_identical_batches(monkeypatch):
    paths = real_images("test", "cats", 6) + real_images("test", "dogs", 6)
    labels = [0] * 6 + [1] * 6
    spilled = []
    real_spill = pipeline.spill_array

    def counting_spill(*shape):
        arr = real_spill(*shape)
        spilled.append(arr)
        return arr

    monkeypatch.setattr(pipeline, "spill_array", counting_spill)
    for training in (False, True):
        kw = dict(labels=labels, image_size=(64, 64), batch_size=5, training=training, num_classes=2, seed=3)
        in_memory = _batches(pipeline.make_pipeline(paths, cache_budget_mb=64, **kw))
        n_before = len(spilled)
        on_disk = _batches(pipeline.make_pipeline(paths, cache_budget_mb=0.01, **kw))  # 12*64*64*3 B > 10 kB
        assert len(spilled) == n_before + 1 and isinstance(spilled[-1], pipeline.SpillFile)
        assert len(on_disk) == len(in_memory) == 3
        for a, b in zip(in_memory, on_disk):
            for x, y in zip(a, b):
                np.testing.assert_array_equal(x, y)
    assert spilled[0].shape == (12, 64, 64, 3) and spilled[0][np.arange(12)].any()


def test_spill_file_rows_round_trip_in_any_order():
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 256, size=(7, 5, 4, 3), dtype=np.uint8)
    spill = pipeline.spill_array(7, 5, 4)
    spill[0:3], spill[3:7] = rows[:3], rows[3:]
    order = np.array([6, 0, 3, 3, 1])
    np.testing.assert_array_equal(spill[order], rows[order])
    assert spill[np.int64(2)].shape == (5, 4, 3)
    np.testing.assert_array_equal(spill[np.int64(2)], rows[2])
