"""predict --shard K/N and retreino merge: disjoint, complete, deterministic, equal to one run."""
from __future__ import annotations

import csv
import os

import pytest

from conftest import CATS_VS_DOGS, WATER_BOTTLES
from retreino.cli import main
from retreino.errors import RetreinoError
from retreino.sharding import parse_shard, shard_paths


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("shard_images")
    for cls in ("cats", "dogs"):
        (root / cls).mkdir()
        for f in sorted((CATS_VS_DOGS / "test" / cls).glob("*.jpg"))[:7]:
            os.symlink(f, root / cls / f.name)
    return root


def test_shards_are_disjoint_complete_and_deterministic():
    paths = [f"img{i:03d}.jpg" for i in range(17)][::-1]
    parts = [shard_paths(paths, k, 5) for k in range(1, 6)]
    assert sorted(p for part in parts for p in part) == sorted(paths)
    assert len({p for part in parts for p in part}) == len(paths)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert shard_paths(list(reversed(paths)), 2, 5) == parts[1]  # the input order does not matter
    assert parse_shard("3/8") == (3, 8)
    for bad in ("0/4", "5/4", "1/0", "2", "a/b"):
        with pytest.raises(RetreinoError):
            parse_shard(bad)


@pytest.mark.slow
def test_sharded_predict_merged_equals_unsharded(folder, tmp_path, capsys):
    whole = tmp_path / "whole.csv"
    assert main(["predict", str(WATER_BOTTLES), str(folder), "--out", str(whole)]) == 0
    parts = []
    for k in (1, 2, 3):
        part = tmp_path / f"part-{k}.csv"
        assert main(["predict", str(WATER_BOTTLES), str(folder), "--shard", f"{k}/3", "--out", str(part)]) == 0
        parts.append(part)
    part_paths = [{r[0] for r in _rows(p)[1:]} for p in parts]
    assert [len(s) for s in part_paths] == [5, 5, 4]
    assert not (part_paths[0] & part_paths[1] or part_paths[0] & part_paths[2] or part_paths[1] & part_paths[2])
    merged = tmp_path / "merged.csv"
    assert main(["merge", *map(str, parts), "--out", str(merged)]) == 0
    want = _rows(whole)
    assert _rows(merged) == [want[0]] + sorted(want[1:], key=lambda r: r[0])
    assert len(want) == 15
    # The same part twice is refused with one line, not silently duplicated.
    assert main(["merge", str(parts[0]), str(parts[0]), "--out", str(tmp_path / "bad.csv")]) == 2
    assert "in two parts" in capsys.readouterr().err
