"""check-data --model finds real mislabelled photos: a copy of cats_vs_dogs with a seeded 5% moved to the other class."""
from __future__ import annotations

import csv
import random
import shutil
from pathlib import Path

import pytest

from conftest import CAT_BREEDS, CATS_VS_DOGS, WATER_BOTTLES, need_shared

PER_CLASS = 60
MOVED_FRACTION = 0.05


def _mislabelled_copy(root: Path) -> tuple[Path, set[str]]:
    """root/data/{cats,dogs}: PER_CLASS real photos of each class, 5% of them (seeded) in the wrong folder."""
    data = root / "data"
    files = []
    for cls in ("cats", "dogs"):
        (data / cls).mkdir(parents=True)
        for f in sorted((CATS_VS_DOGS / "train" / cls).glob("*.jpg"))[:PER_CLASS]:
            files.append(Path(shutil.copy(f, data / cls / f.name)))
    moved = set()
    for f in random.Random(19).sample(files, round(MOVED_FRACTION * len(files))):
        other = "dogs" if f.parent.name == "cats" else "cats"
        dst = data / other / f.name
        f.rename(dst)
        moved.add(str(dst.resolve()))
    return data, moved


def _listing(data: Path) -> dict[str, bytes]:
    return {str(p.relative_to(data)): p.read_bytes() for p in sorted(data.rglob("*")) if p.is_file()}


@pytest.mark.slow
def _check_data_with_model(data: Path, tmp_path: Path, capsys) -> tuple[dict[str, bytes], Path, Path]:
    """`check-data DATA --model water_bottles --out OUT --write-fixes PLAN` -> (the files before, OUT, PLAN)."""
    from retreino.cli import main

    before = _listing(data)
    out, plan = tmp_path / "out", tmp_path / "plan.csv"
    out.mkdir()
    main(["check-data", str(data), "--model", str(WATER_BOTTLES), "--out", str(out), "--write-fixes", str(plan)])
    capsys.readouterr()
    return before, out, plan


def test_check_data_model_names_the_moved_photos(tmp_path, capsys):
    need_shared()
    data, moved = _mislabelled_copy(tmp_path)
    before, out, plan = _check_data_with_model(data, tmp_path, capsys)

    assert _listing(data) == before, "check-data moved or altered a user's file"
    assert (out / "label_issues.png").stat().st_size > 0
    with open(out / "label_issues.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    suspects = {str((data / r["path"]).resolve()) for r in rows}  # paths relative to DIR (absolute ones win in /)
    found = suspects & moved
    recall, precision = len(found) / len(moved), len(found) / max(len(suspects), 1)
    print(f"moved={len(moved)} suspects={len(suspects)} found={len(found)} recall={recall:.2f} precision={precision:.2f}")
    assert recall >= 0.8, f"found {len(found)} of {len(moved)} moved photos among {len(suspects)} suspects"
    assert precision >= 0.6, f"only {len(found)} of {len(suspects)} suspects were moved photos"

    with open(plan, newline="", encoding="utf-8") as fh:
        moves = {str(Path(r["source"]).resolve()): r for r in csv.DictReader(fh) if r["action"] == "move"}
    for f in found:
        assert f in moves, f"no move row for {f}"
        assert Path(moves[f]["destination"]).parent.name != Path(f).parent.name


def test_model_options_without_model_are_refused_at_the_door(tmp_path, capsys):
    from retreino.cli import main

    (tmp_path / "a").mkdir()
    assert main(["check-data", str(tmp_path), "--write-fixes", str(tmp_path / "plan.csv")]) == 2
    assert "--write-fixes need(s) --model" in capsys.readouterr().err
    assert main(["check-data", str(tmp_path), "--model", str(WATER_BOTTLES), "--folds", "1"]) == 2
    assert "--folds must be at least 2" in capsys.readouterr().err
    assert not (tmp_path / "plan.csv").exists()


@pytest.mark.slow
def test_labels_csv_gets_a_relabel_plan_and_no_file_moves(tmp_path, capsys):
    """A labels-CSV dataset (real cat breed photos): the plan relabels CSV rows; images and CSV stay as they were."""
    need_shared()
    with open(CAT_BREEDS / "labels.csv", newline="", encoding="utf-8") as fh:
        header, *rows = list(csv.reader(fh))
    by_breed: dict[str, list[list[str]]] = {}
    for name, breed in rows:
        if (CAT_BREEDS / "images" / name).is_file() and len(by_breed.setdefault(breed, [])) < 12:
            by_breed[breed].append([name, breed])
    keep = [r for v in by_breed.values() for r in v]
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    for name, _ in keep:
        shutil.copy(CAT_BREEDS / "images" / name, data / "images" / name)
    # Relabel three Abyssinians, the breed these features tell apart best, so the plan has rows to check.
    for r in [r for r in keep if r[1] == "Abyssinian"][:3]:
        r[1] = "American Wirehair"
    with open(data / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([header, *keep])
    before, out, plan = _check_data_with_model(data, tmp_path, capsys)

    assert _listing(data) == before, "check-data moved or altered a user's file or its labels CSV"
    with open(plan, newline="", encoding="utf-8") as fh:
        plan_rows = list(csv.DictReader(fh))
    assert plan_rows, "no suspect among 60 photos with 3 relabelled"
    labels = dict(keep)
    for r in plan_rows:
        assert r["action"] == "relabel", r
        assert r["source"] in labels, f"{r['source']} is no filename of the labels CSV"
        assert r["given"] == labels[r["source"]] and r["destination"] == r["likely"] != r["given"]
