"""load_dataset on real folders: the notebook layout, one folder split three ways, a labels CSV."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from conftest import CAT_BREEDS, CATS_VS_DOGS
from retreino.data import load_dataset
from retreino.errors import DataError


def kinds(ds):
    return sorted({p.kind for p in ds.problems})


def test_notebook_layout(cats_dogs_subset):
    ds = load_dataset(cats_dogs_subset)
    assert ds.source == "folders"
    assert ds.class_names == ["cats", "dogs"]
    assert (len(ds.train), len(ds.validation), len(ds.test)) == (100, 40, 40)
    assert ds.train.counts() == {"cats": 50, "dogs": 50}
    assert ds.problems == [] and ds.skipped == []
    # Labels follow the sorted class names, and paths sit in their class folder.
    for path, label in zip(ds.test.paths, ds.test.labels):
        assert f"/{ds.class_names[label]}/" in path
    summary = ds.summary()
    assert summary["splits"]["validation"]["per_class"] == {"cats": 20, "dogs": 20}
    assert ds.fingerprint() == load_dataset(cats_dogs_subset).fingerprint()


def test_full_cats_vs_dogs_counts():
    ds = load_dataset(CATS_VS_DOGS)
    assert {s.name: len(s) for s in ds.splits()} == {"train": 1400, "validation": 300, "test": 300}
    assert ds.problems == []


def test_missing_validation_is_carved_from_train(cats_dogs_subset, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(cats_dogs_subset / "train", root / "train")
    shutil.copytree(cats_dogs_subset / "test", root / "test")
    (root / "train" / "stray.jpg").write_bytes((root / "test" / "cats").iterdir().__next__().read_bytes())
    ds = load_dataset(root, val_split=0.2, seed=1)
    assert ds.source == "folders"
    assert [(p.kind, p.path.rsplit("/", 1)[-1]) for p in ds.problems] == [("ignored", "stray.jpg")]
    assert ds.validation.counts() == {"cats": 10, "dogs": 10}
    assert ds.train.counts() == {"cats": 40, "dogs": 40}
    assert len(ds.test) == 40  # the real test folder, untouched
    assert not set(ds.train.paths) & set(ds.validation.paths)
    assert "train/" in ds.origin["validation"]


def test_one_folder_split_is_stratified_and_seeded(cats_dogs_subset, tmp_path):
    root = tmp_path / "flat"
    shutil.copytree(cats_dogs_subset / "train", root)
    a = load_dataset(root, val_split=0.2, test_split=0.1, seed=7)
    assert a.source == "split"
    assert a.train.counts() == {"cats": 35, "dogs": 35}
    assert a.validation.counts() == {"cats": 10, "dogs": 10}
    assert a.test.counts() == {"cats": 5, "dogs": 5}
    everything = a.train.paths + a.validation.paths + a.test.paths
    assert len(set(everything)) == 100
    b = load_dataset(root, val_split=0.2, test_split=0.1, seed=7)
    assert b.validation.paths == a.validation.paths and b.test.paths == a.test.paths
    c = load_dataset(root, val_split=0.2, test_split=0.1, seed=8)
    assert c.validation.paths != a.validation.paths
    none = load_dataset(root, val_split=0.0, test_split=0.0)
    assert none.validation is None and none.test is None and len(none.train) == 100


def test_small_class_and_imbalance_are_reported(cats_dogs_subset, tmp_path):
    root = tmp_path / "flat"
    shutil.copytree(cats_dogs_subset / "train" / "cats", root / "cats")
    (root / "mice").mkdir()
    for f in sorted((cats_dogs_subset / "train" / "dogs").iterdir())[:3]:
        shutil.copy(f, root / "mice" / f.name)
    ds = load_dataset(root, val_split=0.2, test_split=0.1)
    assert ds.class_names == ["cats", "mice"]
    assert ds.test.counts()["mice"] == 0
    msgs = [p.message for p in ds.problems]
    assert any(p.kind == "missing_class" and "mice" in p.message and not p.fatal for p in ds.problems), msgs
    assert any(p.kind == "imbalance" for p in ds.problems), msgs


def test_labels_csv_on_cat_breeds():
    ds = load_dataset(CAT_BREEDS)
    assert ds.source == "csv"
    assert ds.class_names == ["Abyssinian", "American Bobtail", "American Curl", "American Shorthair", "American Wirehair"]
    assert sum(len(s) for s in ds.splits()) == 796
    unlabeled = sorted(p.path.rsplit("/", 1)[-1] for p in ds.problems if p.kind == "unlabeled")
    assert unlabeled == ["Cat1018.png", "Cat1021.jpeg", "Cat1035.png", "Cat1045.jpeg", "Cat1049.jpeg"]
    # Pointing at the image folder finds the CSV beside it: the same dataset.
    same = load_dataset(CAT_BREEDS / "images")
    assert same.class_names == ds.class_names and same.test.paths == ds.test.paths
    # The breeds were split per class: every class is in every split.
    for split in ds.splits():
        assert min(split.counts().values()) > 0


def test_labels_csv_rows_without_images_and_explicit_csv(cats_dogs_subset, tmp_path):
    images = tmp_path / "pics"
    images.mkdir()
    rows = ["file,animal"]
    for cls in ("cats", "dogs"):
        for f in sorted((cats_dogs_subset / "train" / cls).iterdir())[:10]:
            shutil.copy(f, images / f"{cls}_{f.name}")
            rows.append(f"{cls}_{f.name},{cls[:-1]}")
    rows.append("ghost.jpg,cat")
    rows.append("only-one-column")
    csv_path = tmp_path / "my labels.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    ds = load_dataset(images, labels_csv=csv_path, val_split=0.2, test_split=0.0)
    assert ds.class_names == ["cat", "dog"]
    assert len(ds.train) + len(ds.validation) == 20
    assert any(p.kind == "missing_file" and "ghost.jpg" in p.message for p in ds.problems)
    assert any(p.kind == "bad_row" for p in ds.problems)


def test_unusable_roots_fail_with_one_clear_message(tmp_path, cats_dogs_subset):
    with pytest.raises(DataError, match="no such folder"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no classes found"):
        load_dataset(tmp_path / "empty")
    one = tmp_path / "one"
    shutil.copytree(cats_dogs_subset / "test" / "cats", one / "cats")
    with pytest.raises(DataError, match="only one class"):
        load_dataset(one)
    with pytest.raises(DataError, match="val_split"):
        load_dataset(cats_dogs_subset, val_split=0.6, test_split=0.5)
    ds = load_dataset(one, allow_fatal=True)
    assert [p.kind for p in ds.fatal] == ["one_class"]
    assert isinstance(ds.train.labels, np.ndarray)


def test_check_data_on_cat_breeds_decodes_the_webp_in_disguise():
    from retreino.data import make_pipeline, read_image
    from retreino.data.check import check_dataset

    report = check_dataset(CAT_BREEDS)
    assert report.ok and report.dataset.num_classes == 5
    assert len([p for p in report.problems if p.kind == "unlabeled"]) == 5
    webp = str(CAT_BREEDS / "images" / "Cat1035.png")
    assert report.dataset.files[webp].format == "webp"
    assert any(p.kind == "extension" and p.path == webp and "WEBP" in p.message for p in report.problems)
    assert "Cat1035.png  named .png but the content is WEBP" in report.format()
    assert read_image(webp).shape == (450, 800, 3)
    (x,) = [b for b in make_pipeline([webp], label_mode=None, image_size=(224, 224), preprocessing="unit")]
    assert x.shape == (1, 224, 224, 3) and 0.0 <= float(x.numpy().min()) and float(x.numpy().max()) <= 1.0


def test_splits_retreino_makes_keep_identical_files_together(cats_dogs_subset, tmp_path):
    root = tmp_path / "flat"
    shutil.copytree(cats_dogs_subset / "train", root)
    originals = sorted((root / "cats").iterdir())[:6]
    for f in originals:
        shutil.copy(f, root / "cats" / f"copy_{f.name}")
    for seed in range(4):
        ds = load_dataset(root, val_split=0.3, test_split=0.2, seed=seed)
        split_of = {p: s.name for s in ds.splits() for p in s.paths}
        for f in originals:
            assert split_of[str(f)] == split_of[str(root / "cats" / f"copy_{f.name}")]
        assert "leak" not in kinds(ds) and kinds(ds) == ["duplicate"]
        assert sum(len(s) for s in ds.splits()) == 106


def test_a_split_emptied_by_keeping_copies_together_says_why(cats_dogs_subset, tmp_path, capsys):
    """4 photos a class under 10 names each: every copy goes where its first one went (train), so the
    validation split is empty; the problem and `train`'s one-line error say it is the copies, not --val-split."""
    from retreino.cli import main

    root = tmp_path / "copies"
    for cls in ("cats", "dogs"):
        (root / cls).mkdir(parents=True)
        for f in sorted((cats_dogs_subset / "train" / cls).iterdir())[:4]:
            for i in range(10):
                shutil.copy(f, root / cls / f"{i}-{f.name}")
    ds = load_dataset(root, val_split=0.2, test_split=0.0)
    assert ds.validation is None and len(ds.train) == 80
    empty = [p.message for p in ds.problems if p.kind == "empty_split"]
    assert len(empty) == 1 and "identical copies of files in another split" in empty[0], empty
    from conftest import WATER_BOTTLES

    args = ["train", "--model", str(WATER_BOTTLES), "--data", str(root), "--test-split", "0", "--runs-dir",
            str(tmp_path / "runs"), "--dry-run"]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no validation images" in err and "identical copies" in err, err
    assert "--val-split" not in err  # a larger split would be emptied the same way
