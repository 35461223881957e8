"""report.html: one self-contained page per run, checked in a real headless Chromium."""
from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import real_images
from retreino.config import TrainConfig
from retreino.evaluation import EvaluationResult, compute_metrics, format_classification_report
from retreino.plots import plot_learning_curves, read_history
from retreino.report import write_report

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]



@contextlib.contextmanager
def report_page(page_path: Path, width: int = 1280, height: int = 900):
    """The report open in a real headless Chromium at width x height, loaded; closed afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(page_path.resolve().as_uri())
            page.wait_for_load_state("load")
            yield page
        finally:
            browser.close()


HISTORY = (
    "epoch,phase,loss,accuracy,val_loss,val_accuracy,lr,seconds\n"
    "1,warmup,0.71,0.58,0.62,0.66,0.001,12.5\n"
    "2,warmup,0.52,0.74,0.48,0.78,0.001,11.9\n"
    "1,finetune,0.41,0.82,0.39,0.84,1e-05,20.3\n"
    "2,finetune,0.33,0.87,0.35,0.86,1e-05,19.8\n"
    "3,finetune,0.29,0.89,0.36,0.85,5e-06,20.1\n"
)


def make_run(root: Path) -> Path:
    """A run directory as training leaves it: config.json and history.csv (no evaluation yet)."""
    run = root / "runs" / "cats"
    run.mkdir(parents=True)
    cfg = TrainConfig(model="mobilenet_v2", data="data/cats_vs_dogs", name="cats")
    (run / "config.json").write_text(json.dumps({
        "config": cfg.to_dict(), "versions": {"retreino": "0.1.0", "keras": "3.x"},
        "data": {"root": "data/cats_vs_dogs", "source": "folders", "class_names": ["cats", "dogs"],
                 "fingerprint": "0123abcd", "counts": {"train": {"cats": 700, "dogs": 700},
                                                       "validation": {"cats": 150, "dogs": 150},
                                                       "test": {"cats": 150, "dogs": 150}}},
        "model": {"format": "keras", "input_size": [224, 224], "preprocessing": "tf", "head": "softmax",
                  "class_names": ["cats", "dogs"]},
    }))
    (run / "history.csv").write_text(HISTORY)
    return run


def add_evaluation(run: Path) -> EvaluationResult:
    """Evaluation outputs for real photos with fixed probabilities (the report is under test, not a model)."""
    paths = [str(p) for p in real_images("test", "cats", 12) + real_images("test", "dogs", 12)]
    y = np.array([0] * 12 + [1] * 12)
    rng = np.random.default_rng(0)
    p_dog = np.clip(y * 0.35 + rng.uniform(0, 0.65, size=24), 0.01, 0.99)  # a few errors each way
    probs = np.stack([1 - p_dog, p_dog], axis=1)
    names = ["cats", "dogs"]
    metrics = compute_metrics(y, probs, names) | {"split": "test", "data": "test split of data/cats_vs_dogs"}
    result = EvaluationResult(metrics, format_classification_report(y, probs, names), names, paths, y, probs)
    result.save(run)
    return result


def test_learning_curves_from_csv_and_rows(tmp_path):
    csv_path = tmp_path / "history.csv"
    csv_path.write_text(HISTORY)
    rows = read_history(csv_path)
    assert rows[0]["phase"] == "warmup" and rows[2]["val_accuracy"] == pytest.approx(0.84)
    out = plot_learning_curves(csv_path, tmp_path / "curves.png")
    assert out == tmp_path / "curves.png" and out.stat().st_size > 20_000
    fig = plot_learning_curves(rows)  # no path: the Figure, for notebooks
    acc, loss = fig.axes[:2]
    assert acc.get_title() == "Accuracy" and loss.get_title() == "Loss"
    labels = acc.get_legend_handles_labels()[1]
    assert {"train", "validation", "warm-up (head only)"} <= set(labels)
    assert "best (epoch 4)" in labels  # the running epoch count across phases
    assert len(acc.lines[0].get_xdata()) == 5
    # A run with no epochs yet still draws (an empty placeholder), never raises.
    assert plot_learning_curves([], tmp_path / "empty.png").exists()


def test_report_before_evaluation(tmp_path):
    run = make_run(tmp_path)
    page_path = write_report(run)
    page = page_path.read_text()
    assert page_path == run / "report.html"
    assert (run / "learning_curves.png").exists()  # drawn from history.csv when training did not
    assert 'id="metrics"' in page and "best validation accuracy" in page and "86.0%" in page
    assert "Not evaluated on the test split yet" in page
    assert "Confusion matrix</h2>" not in page
    assert "700" in page and "mobilenet_v2" in page  # dataset counts and config


def test_report_is_self_contained_and_renders_in_chromium(tmp_path):
    run = make_run(tmp_path)
    result = add_evaluation(run)
    page_path = write_report(run)
    html_text = page_path.read_text()
    # Self-contained: every image is a data URI, nothing is fetched from anywhere.
    srcs = re.findall(r'<img[^>]+src="([^"]+)"', html_text)
    assert len(srcs) == 4 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r'(src|href)="(https?:|//)', html_text)

    with report_page(page_path) as page:
        images = page.eval_on_selector_all(
            "img", "els => els.map(e => ({alt: e.alt, ok: e.complete && e.naturalWidth > 0, w: e.naturalWidth}))")
        assert len(images) == 4
        assert all(i["ok"] for i in images), images
        assert {i["alt"] for i in images} == {"confusion matrix", "true vs predicted scatter",
                                             "misclassified examples", "learning curves"}
        table = page.locator("table#metrics")
        assert table.is_visible()
        cells = table.locator("td").all_inner_texts()
        assert "accuracy" in cells and f"{result.metrics['accuracy']:.1%}" in cells
        assert f"{result.metrics['loss']:.4g}" in cells
        per_class = page.locator("table#per-class tbody tr").all_inner_texts()
        assert per_class[0].split("\t")[0] == "cats" and len(per_class) == 4  # 2 classes + 2 averages
        assert page.title() == "retreino report: cats"
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert (tmp_path / "report.png").stat().st_size > 50_000


def test_report_on_missing_run_is_an_error(tmp_path):
    from retreino.errors import RetreinoError

    with pytest.raises(RetreinoError, match="no such run directory"):
        write_report(tmp_path / "nope")
