"""retreino predict and the prediction API, on the real Teachable Machine model and real photos."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import CATS_VS_DOGS, ROOT, WATER_BOTTLES, real_images
from retreino.cli import main
from retreino.errors import DataError, RetreinoError
from retreino.prediction import (
    Prediction,
    find_images,
    parse_names,
    predict,
    predict_folder,
    show_predictions,
)


@pytest.fixture(scope="module")
def saved_model(cats_dogs, tmp_path_factory) -> Path:
    from retreino import save_model

    path = tmp_path_factory.mktemp("model") / "model.keras"
    save_model(cats_dogs, path)
    return path


@pytest.fixture(scope="module")
def messy_folder(tmp_path_factory) -> Path:
    """Class folders of real photos plus the things real folders hold: a truncated JPEG, a text
    file, an RGBA PNG, and a photo in a folder that is not a class."""
    root = tmp_path_factory.mktemp("messy")
    for cls in ("cats", "dogs"):
        (root / cls).mkdir()
        for f in real_images("test", cls, 4):
            shutil.copy(f, root / cls / f.name)
    data = real_images("test", "dogs", 5)[4].read_bytes()
    (root / "dogs" / "truncated.jpg").write_bytes(data[:200])
    (root / "cats" / "notes.txt").write_text("not an image")
    im = Image.open(real_images("test", "cats", 5)[4]).convert("RGBA")
    im.putalpha(128)
    im.save(root / "cats" / "alpha.png")
    (root / "unsorted").mkdir()
    shutil.copy(real_images("validation", "cats", 1)[0], root / "unsorted" / "mystery.jpg")
    return root


def test_predict_one_image_prints_class_and_confidence(cats_dogs):
    img = real_images("test", "cats", 1)[0]
    p = predict(cats_dogs, img, names="cats=Gato,dogs=Cachorro")
    assert isinstance(p, Prediction)
    assert p.class_name in ("Gato", "Cachorro")
    assert re.fullmatch(r"(Gato|Cachorro)  +\d{1,3}\.\d%", str(p))
    assert abs(sum(p.probabilities.values()) - 1.0) < 1e-5
    assert p.confidence == max(p.probabilities.values())
    # The same numbers as the shared forward path.
    from retreino.inference import Predictor

    ref = Predictor(cats_dogs).predict_images([img])[0]
    np.testing.assert_allclose([p.probabilities["Gato"], p.probabilities["Cachorro"]], ref, atol=1e-5)


def test_top_k_lists_classes_most_likely_first(cats_dogs):
    p = predict(cats_dogs, real_images("test", "dogs", 1)[0], top_k=5)
    assert len(p.top) == 2  # k is capped by the number of classes
    assert p.top[0][1] >= p.top[1][1]
    lines = str(p).splitlines()
    assert len(lines) == 2 and lines[0].split()[0] == p.class_name


def test_predict_accepts_pixels_and_pil_images(cats_dogs):
    path = real_images("test", "cats", 1)[0]
    by_path = predict(cats_dogs, path)
    im = Image.open(path).convert("RGB")
    by_pil = predict(cats_dogs, im)
    by_array = predict(cats_dogs, np.asarray(im))
    assert by_pil.class_name == by_path.class_name == by_array.class_name
    assert abs(by_pil.confidence - by_path.confidence) < 1e-5


def test_parse_names_forms_and_mistakes():
    assert parse_names("cats=Gato,dogs=Cachorro", ["cats", "dogs"]) == ["Gato", "Cachorro"]
    assert parse_names("dogs=Cachorro", ["cats", "dogs"]) == ["cats", "Cachorro"]
    assert parse_names("Gato, Cachorro", ["cats", "dogs"]) == ["Gato", "Cachorro"]
    with pytest.raises(RetreinoError, match="unknown class"):
        parse_names("horses=Cavalo", ["cats", "dogs"])
    with pytest.raises(RetreinoError, match="3 name"):
        parse_names("a,b,c", ["cats", "dogs"])


def test_find_images_folder_glob_and_missing(messy_folder):
    files = find_images(messy_folder)
    names = {f.name for f in files}
    assert "notes.txt" not in names and "truncated.jpg" in names and "alpha.png" in names
    assert files == sorted(files, key=lambda p: (str(p.parent), p.name))
    assert {f.name for f in find_images(str(messy_folder / "*" / "*.jpg"))} == {f.name for f in files if f.suffix == ".jpg"}
    with pytest.raises(DataError, match="no such file"):
        find_images(messy_folder / "nope")
    with pytest.raises(DataError, match="matches no files"):
        find_images(str(messy_folder / "*.gif"))


def test_predict_folder_rows_csv_errors_and_grid(cats_dogs, messy_folder, tmp_path):
    out = tmp_path / "preds.csv"
    grid = tmp_path / "grid.png"
    rows = predict_folder(cats_dogs, messy_folder, out=out, grid=grid, batch_size=3, progress=False)
    assert len(rows) == 11  # 8 photos + alpha.png + truncated.jpg + unsorted/mystery.jpg
    bad = [r for r in rows if r["error"]]
    assert [Path(r["path"]).name for r in bad] == ["truncated.jpg"]
    assert bad[0]["predicted"] is None
    good = [r for r in rows if not r["error"]]
    for r in good:
        assert r["predicted"] in ("cats", "dogs")
        assert abs(sum(r["probabilities"].values()) - 1) < 1e-5
    truth = {Path(r["path"]).name: r["true"] for r in rows}
    assert truth["mystery.jpg"] is None and truth["alpha.png"] == "cats"
    assert all(r["correct"] == (r["true"] == r["predicted"]) for r in good if r["true"])

    # Batching and threads do not change the numbers: same as one image at a time.
    from retreino.inference import Predictor

    ref = Predictor(cats_dogs).predict_images([r["path"] for r in good], batch_size=1)
    got = np.array([[r["probabilities"]["cats"], r["probabilities"]["dogs"]] for r in good])
    np.testing.assert_allclose(got, ref, atol=1e-5)

    with open(out, newline="") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == ["path", "true", "predicted", "confidence", "prob_cats", "prob_dogs", "error"]
    assert len(table) == 11
    row = next(t for t in table if t["path"].endswith("truncated.jpg"))
    assert row["error"] and row["predicted"] == ""
    with Image.open(grid) as im:
        assert im.width > 600 and im.height > 300


def test_show_predictions_returns_figure(cats_dogs, messy_folder, tmp_path):
    rows = predict_folder(cats_dogs, messy_folder / "cats", progress=False)
    fig = show_predictions(rows, tmp_path / "g.png", max_images=4)
    assert len([ax for ax in fig.axes if ax.images]) == 4
    assert (tmp_path / "g.png").stat().st_size > 10_000


def test_cli_single_image(saved_model, capsys):
    img = real_images("test", "cats", 1)[0]
    assert main(["predict", str(saved_model), str(img), "--names", "cats=Gato,dogs=Cachorro"]) == 0
    out = capsys.readouterr().out.strip()
    assert re.fullmatch(r"(Gato|Cachorro)  +\d{1,3}\.\d%", out)
    assert main(["predict", str(saved_model), str(img), "--top-k", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [t["class"] for t in data["top"]] in (["cats", "dogs"], ["dogs", "cats"])


def test_cli_folder_to_jsonl_and_glob_to_csv(saved_model, messy_folder, tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    assert main(["predict", str(saved_model), str(messy_folder), "--out", str(out), "--top-k", "2",
                 "--grid", str(tmp_path / "grid.png"), "--batch-size", "4"]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 11 and sum(1 for line in lines if line["error"]) == 1
    assert all(len(line["top"]) == 2 for line in lines if not line["error"])
    err = capsys.readouterr().err
    assert "11 image(s)" in err and "unreadable 1" in err
    assert (tmp_path / "grid.png").exists()

    csv_out = tmp_path / "p.csv"
    assert main(["predict", str(saved_model), str(messy_folder / "dogs" / "*.jpg"), "--out", str(csv_out)]) == 0
    with open(csv_out, newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 5


def test_cli_errors_are_one_line(saved_model, tmp_path, capsys):
    assert main(["predict", str(saved_model), str(tmp_path / "missing.jpg")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("retreino predict: error:") and "no such file" in err and "\n" not in err
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    assert main(["predict", str(saved_model), str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a readable image" in err and "\n" not in err
    assert main(["predict", str(saved_model), str(real_images()[0]), "--names", "horse=Cavalo"]) == 2
    assert "unknown class" in capsys.readouterr().err


def test_5000_images_peak_memory_under_1_5_gb(tmp_path):
    """A real `retreino predict` subprocess on 5,000 files (links to real photos) with the real model."""
    # The smallest real photos keep the run short; memory is what is measured, not speed.
    sources = sorted((CATS_VS_DOGS / "test").glob("*/*.jpg"), key=lambda p: p.stat().st_size)[:100]
    folder = tmp_path / "many"
    for cls in ("cats", "dogs"):
        (folder / cls).mkdir(parents=True)
    for i in range(5000):
        src = sources[i % len(sources)]
        os.symlink(src.resolve(), folder / src.parent.name / f"{i:05d}.jpg")
    out = tmp_path / "preds.csv"
    env = dict(os.environ, RETREINO_QUIET="1")
    cmd = [sys.executable, "-m", "retreino", "predict", str(WATER_BOTTLES), str(folder), "--out", str(out),
           "--names", "5 Galoon=cats,500ML=dogs"]  # the default batch size, as users run it
    # Measured from a small fresh parent: Linux folds the parent's high-water RSS into a vfork'ed
    # child's ru_maxrss at exec, so launched from this (multi-GB) test session the figure would be
    # the session's own peak, not the prediction's.
    launcher = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
                "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")
    proc = subprocess.run([sys.executable, "-c", launcher, *cmd], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    peak_mb = int(proc.stdout.strip().splitlines()[-1]) / 1024
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 5000 and not any(r["error"] for r in rows)
    assert {r["true"] for r in rows} == {"cats", "dogs"}
    print(f"peak RSS {peak_mb:.0f} MB for 5,000 images")
    assert peak_mb < 1536, f"peak RSS {peak_mb:.0f} MB"
