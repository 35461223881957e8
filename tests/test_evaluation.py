"""retreino evaluate: metrics recomputed with scikit-learn from predictions.csv must match the reported ones."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
    top_k_accuracy_score,
)

from conftest import SHINCHAN, real_images
from retreino.cli import main
from retreino.errors import DataError, RetreinoError
from retreino.evaluation import EvaluationResult, compute_metrics, evaluate, map_classes


@pytest.fixture(scope="module")
def evaluated(cats_dogs, cats_dogs_subset, tmp_path_factory) -> EvaluationResult:
    out = tmp_path_factory.mktemp("eval")
    return evaluate(cats_dogs, cats_dogs_subset, out=out, progress=False)


def read_predictions(path: Path):
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    classes = [c[len("prob_"):] for c in rows[0] if c.startswith("prob_")]
    y = np.array([classes.index(r["true"]) for r in rows])
    pred = np.array([classes.index(r["predicted"]) for r in rows])
    probs = np.array([[float(r[f"prob_{c}"]) for c in classes] for r in rows])
    return rows, classes, y, pred, probs


# float32 probabilities sum to 1 within 1e-7, which scikit-learn's strict check reports.
@pytest.mark.filterwarnings("ignore:The y_prob values do not sum to one")
def test_metrics_match_sklearn_recomputed_from_predictions_csv(evaluated):
    out = evaluated.out
    rows, classes, y, pred, probs = read_predictions(out / "predictions.csv")
    metrics = json.loads((out / "metrics.json").read_text())
    assert classes == ["cats", "dogs"] and len(rows) == 40 == metrics["n"]
    assert metrics["split"] == "test"
    # The test split of the subset: 20 + 20, true classes from the folders.
    assert np.bincount(y).tolist() == [20, 20]
    assert np.array_equal(pred, probs.argmax(1))
    assert all(abs(float(r["confidence"]) - p.max()) < 1e-6 for r, p in zip(rows, probs))

    assert metrics["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-9)
    assert metrics["loss"] == pytest.approx(log_loss(y, probs, labels=[0, 1]), abs=1e-4)
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(y, probs[:, 1]), abs=1e-4)
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=[0, 1], zero_division=0)
    for i, c in enumerate(classes):
        got = metrics["per_class"][c]
        assert got["precision"] == pytest.approx(p[i], abs=1e-9)
        assert got["recall"] == pytest.approx(r[i], abs=1e-9)
        assert got["f1-score"] == pytest.approx(f[i], abs=1e-9)
        assert got["support"] == s[i]
    assert metrics["confusion_matrix"] == confusion_matrix(y, pred, labels=[0, 1]).tolist()
    # Text and JSON classification reports agree with scikit-learn's.
    text = (out / "classification_report.txt").read_text()
    assert text == classification_report(y, pred, labels=[0, 1], target_names=classes, digits=4, zero_division=0)
    as_json = json.loads((out / "classification_report.json").read_text())
    assert as_json["macro avg"]["f1-score"] == pytest.approx(f.mean(), abs=1e-9)
    assert "top_k_accuracy" not in metrics  # only for more than 2 classes


def test_output_images_are_real_pngs(evaluated):
    for name in ("confusion_matrix.png", "predictions_scatter.png", "misclassified.png"):
        with Image.open(evaluated.out / name) as im:
            assert im.format == "PNG" and im.width >= 500 and im.height >= 400, name
            # Not a blank canvas: a real plot has many colours.
            assert len(im.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 50, name
    assert (evaluated.out / "report.html").is_file()


def test_figures_for_notebooks(evaluated, tmp_path):
    fig = evaluated.plot_confusion_matrix(tmp_path / "cm.png")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cats", "dogs"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["cats", "dogs"]
    cells = [t.get_text() for t in ax.texts]
    assert str(evaluated.confusion_matrix[0, 0]) in cells[0]
    assert (tmp_path / "cm.png").stat().st_size > 10_000
    fig = evaluated.plot_scatter()
    n_points = sum(len(c.get_offsets()) for c in fig.axes[0].collections)
    assert n_points == evaluated.metrics["n"]
    wrong = evaluated.misclassified()
    conf = evaluated.confidence[wrong]
    assert list(conf) == sorted(conf, reverse=True)
    assert "accuracy" in evaluated.summary() and "precision" in evaluated.classification_report


def _a_font_draws(char: str) -> bool:
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    from retreino.plots import font_families

    return any(ord(char) in FT2Font(font_manager.findfont(family, fallback_to_default=False)).get_charmap()
               for family in font_families())


def test_names_no_installed_font_can_draw_are_said_once_in_one_line(tmp_path, capsys, monkeypatch):
    import warnings

    from retreino import plots

    monkeypatch.setattr(plots, "_glyphs_reported", set())
    names = ["노마스크", "마스크"]  # a real Teachable Machine project's Korean class names
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name in ("a.png", "b.png"):
            plots.save_figure(plots.confusion_matrix_figure(np.array([[3, 1], [0, 4]]), names), tmp_path / name)
    assert not [w for w in caught if "missing from font" in str(w.message)]  # no per-glyph warning spam
    assert Image.open(tmp_path / "b.png").size[0] > 400
    lines = capsys.readouterr().err.strip().splitlines()
    if _a_font_draws("노"):  # a CJK font is installed: it is in the house style's fallback list, and draws them
        assert lines == []
    else:  # one line, for the first figure only, naming the characters and what to install
        assert len(lines) == 1 and lines[0].startswith("warning: no installed font can draw 노 마 스 크 ")
        assert "fonts-noto-cjk" in lines[0]


def test_three_classes_top_k_and_name_mapping(tmp_path):
    """A 3-class real model on real photos: top-k accuracy appears and matches scikit-learn."""
    data = tmp_path / "data"
    for folder, split, cls in (("cats", "test", "cats"), ("dogs", "test", "dogs"), ("other", "validation", "cats")):
        (data / folder).mkdir(parents=True)
        for f in real_images(split, cls, 5):
            shutil.copy(f, data / folder / f.name)
    out = tmp_path / "out"
    r = evaluate(SHINCHAN, data, out=out, names="cats=Shinchan,dogs=Lightbulb,other=Nothing", progress=False)
    rows, classes, y, pred, probs = read_predictions(out / "predictions.csv")
    assert classes == ["Shinchan", "Lightbulb", "Nothing"] and len(rows) == 15
    assert r.metrics["split"] == "all"
    assert r.metrics["top_k_accuracy"]["2"] == pytest.approx(top_k_accuracy_score(y, probs, k=2, labels=[0, 1, 2]), abs=1e-6)
    assert r.metrics["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert "roc_auc" not in r.metrics
    assert r.confusion_matrix.shape == (3, 3) and r.confusion_matrix.sum() == 15


def test_compute_metrics_edge_cases():
    m = compute_metrics([0, 0], np.array([[0.9, 0.1], [0.3, 0.7]]), ["a", "b"])
    assert m["roc_auc"] is None  # undefined with one class present, not a crash
    assert m["per_class"]["b"]["support"] == 0
    with pytest.raises(DataError):
        compute_metrics([], np.zeros((0, 2)), ["a", "b"])


def test_map_classes():
    assert map_classes(["cats", "dogs"], ["dogs", "cats"]) == [1, 0]
    assert map_classes(["Cats"], ["cats", "dogs"]) == [0]
    assert map_classes(["cats"], ["Gato", "Cachorro"], {"cats": "Gato"}) == [0]
    with pytest.raises(RetreinoError, match="--names"):
        map_classes(["horses"], ["cats", "dogs"])


@pytest.fixture(scope="module")
def run_dir(cats_dogs, cats_dogs_subset, tmp_path_factory) -> Path:
    """A run directory as training writes it (config.json, best model, history.csv)."""
    from retreino import save_model
    from retreino.config import TrainConfig

    run = tmp_path_factory.mktemp("runs") / "cats"
    run.mkdir()
    save_model(cats_dogs, run / "fine_tuned_model.keras")
    cfg = TrainConfig(model=str(cats_dogs.info.source), data=str(cats_dogs_subset), epochs=2, name="cats")
    (run / "config.json").write_text(json.dumps({
        "config": cfg.to_dict(), "versions": {"retreino": "test"},
        "data": {"root": str(cats_dogs_subset), "source": "folders", "class_names": ["cats", "dogs"],
                 "counts": {"train": {"cats": 50, "dogs": 50}, "validation": {"cats": 20, "dogs": 20},
                            "test": {"cats": 20, "dogs": 20}}},
        "model": cats_dogs.info.to_dict(),
    }))
    (run / "history.csv").write_text(
        "epoch,phase,loss,accuracy,val_loss,val_accuracy,lr,seconds\n"
        "1,warmup,0.9,0.55,0.8,0.6,0.001,3.1\n2,finetune,0.6,0.7,0.7,0.65,1e-05,4.2\n"
    )
    return run


def test_cli_evaluate_run_writes_into_run_and_matches_api(run_dir, evaluated, capsys):
    assert main(["evaluate", "--run", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "precision" in out and "report.html" in out
    for f in ("metrics.json", "predictions.csv", "confusion_matrix.png", "predictions_scatter.png",
              "misclassified.png", "classification_report.txt", "report.html", "learning_curves.png"):
        assert (run_dir / f).is_file(), f
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # The run's test split is the seeded one from its config: the same 40 images as above.
    assert metrics["n"] == 40 and metrics["split"] == "test"
    # One calibration line: this model has no temperature, so ECE is the same before and after.
    cal = metrics["calibration"]
    assert cal["temperature"] is None and cal["ece_before"] == cal["ece_after"]
    assert (f"calibration  T 1 (none fitted)   ECE {cal['ece_before']:.4f} -> {cal['ece_after']:.4f}   "
            f"NLL {cal['nll_before']:.4f} -> {cal['nll_after']:.4f}") in out.splitlines()
    assert "unknown (" not in out  # no --ood, no unknown line
    assert metrics["accuracy"] == pytest.approx(evaluated.metrics["accuracy"])
    page = (run_dir / "report.html").read_text()
    assert 'id="metrics"' in page and "Confusion matrix" in page and "Misclassified" in page


def test_cli_evaluate_mistakes_are_one_line_errors(run_dir, cats_dogs_subset, tmp_path, capsys):
    model = str(run_dir / "fine_tuned_model.keras")
    assert main(["evaluate", model]) == 2
    assert "--data" in capsys.readouterr().err
    other = tmp_path / "horses"
    (other / "horses").mkdir(parents=True)
    shutil.copy(real_images()[0], other / "horses" / "h.jpg")
    assert main(["evaluate", model, "--data", str(other), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("retreino evaluate: error:") and "horses" in err and "\n" not in err
    assert main(["evaluate", "--run", str(tmp_path / "nope")]) == 2
    assert "no such run directory" in capsys.readouterr().err


def test_labels_csv_dataset(cats_dogs, tmp_path):
    """Images in one folder, labels in labels.csv (not folder names): every labelled image is scored."""
    images = tmp_path / "data" / "images"
    images.mkdir(parents=True)
    lines = ["filename,label"]
    for cls in ("cats", "dogs"):
        for f in real_images("validation", cls, 3):
            shutil.copy(f, images / f.name)
            lines.append(f"{f.name},{cls}")
    shutil.copy(real_images("test", "cats", 1)[0], images / "unlabelled.jpg")  # no row: not scored
    (tmp_path / "data" / "labels.csv").write_text("\n".join(lines) + "\n")
    r = evaluate(cats_dogs, images, out=tmp_path / "out", progress=False)
    assert r.metrics["n"] == 6 and r.metrics["split"] == "all"
    rows, classes, y, pred, probs = read_predictions(tmp_path / "out" / "predictions.csv")
    assert sorted(Path(x["path"]).name for x in rows) == sorted(line.split(",")[0] for line in lines[1:])
    assert np.bincount(y).tolist() == [3, 3]
    assert r.metrics["accuracy"] == pytest.approx(accuracy_score(y, pred))
