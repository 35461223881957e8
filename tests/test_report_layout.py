"""report.html holds its layout at 1280 px with long absolute paths and many classes (real Chromium).

Bounding boxes from the browser: the page is never wider than the window, no table, figure, card,
heading or paragraph overlaps another, and each table stays inside its column.
"""
from __future__ import annotations

import json
from pathlib import Path

from retreino.config import TrainConfig
from retreino.report import write_report
from test_report import HISTORY, report_page

CLASSES = [f"American Wirehair variant {i:02d} ({'long name ' * (i % 3)})".strip() for i in range(40)]
DEEP = ("/home/someone/projects/a-rather-long-folder-name-for-photos/"
        + "/".join(f"level_{i}_of_nesting" for i in range(8)))

# Every pair of these that is visible must not intersect unless one holds the other.
OVERLAP_JS = """() => {
  const sel = 'header h1, header .sub, nav a, h2, h3, p, table, figure, .card, pre, summary';
  const els = [...document.querySelectorAll(sel)].filter(e => {
    const r = e.getBoundingClientRect(); return r.width > 0 && r.height > 0; });
  const boxes = els.map(e => { const r = e.getBoundingClientRect();
    return {e, l: r.left + scrollX, t: r.top + scrollY, r: r.right + scrollX, b: r.bottom + scrollY}; });
  const name = e => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') + (e.className ? '.' + e.className : '');
  const hits = [];
  for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
    const a = boxes[i], b = boxes[j];
    if (a.e.contains(b.e) || b.e.contains(a.e)) continue;
    const w = Math.min(a.r, b.r) - Math.max(a.l, b.l), h = Math.min(a.b, b.b) - Math.max(a.t, b.t);
    if (w > 1 && h > 1)
      hits.push(name(a.e) + ' overlaps ' + name(b.e) + ' (' + Math.round(w) + 'x' + Math.round(h) + ')');
  }
  const escapes = [];
  for (const t of document.querySelectorAll('table')) {
    const r = t.getBoundingClientRect(), p = t.closest('.table-wrap, div, section').getBoundingClientRect();
    if (r.width > 0 && r.right > p.right + 1 && t.closest('.table-wrap') === null) escapes.push(name(t));
  }
  return {hits, escapes, scrollWidth: document.documentElement.scrollWidth, innerWidth: innerWidth};
}"""


def make_wide_run(root: Path) -> Path:
    run = root / DEEP.lstrip("/") / "runs" / "breeds"
    run.mkdir(parents=True)
    data = f"{DEEP}/datasets/cat_breeds_with_a_very_long_dataset_folder_name"
    cfg = TrainConfig(model=f"{DEEP}/models/teachable_machine/keras_model.h5", data=data, name="breeds",
                      resize="crop")
    counts = {s: {c: 10 + i for i, c in enumerate(CLASSES)} for s in ("train", "validation", "test")}
    (run / "config.json").write_text(json.dumps({
        "config": cfg.to_dict(),
        "versions": {"retreino": "0.1.0", "keras": "3.15.1", "tensorflow": "2.21.0", "numpy": "1.26.4"},
        "data": {"root": data, "source": "folders", "class_names": CLASSES,
                 "fingerprint": "0123456789abcdef" * 4, "counts": counts},
        "model": {"format": "teachable-machine", "source": f"{DEEP}/models/teachable_machine/keras_model.h5",
                  "input_size": [224, 224], "preprocessing": "tf", "head": "softmax", "class_names": CLASSES,
                  "keras_version": "3.15.1"},
    }))
    (run / "history.csv").write_text(HISTORY)
    per_class = {c: {"precision": 0.9, "recall": 0.8, "f1-score": 0.85, "support": 10} for c in CLASSES}
    (run / "metrics.json").write_text(json.dumps({
        "n": 400, "accuracy": 0.8, "loss": 0.5, "class_names": CLASSES, "per_class": per_class,
        "per_class_avg": {"macro avg": {"precision": 0.9, "recall": 0.8, "f1-score": 0.85, "support": 400}},
        "top_k_accuracy": {"2": 0.9, "3": 0.95, "5": 0.99}, "split": "test",
        "data": f"test split of {data}", "model": f"{run}/fine_tuned_model.keras", "runtime": "keras",
    }))
    return run


def test_report_layout_holds_at_1280px_with_long_paths_and_many_classes(tmp_path):
    run = make_wide_run(tmp_path)
    page_path = write_report(run)
    text = page_path.read_text()
    assert "pixels scaled to [-1, 1], center-cropped to 224x224" in text  # the contract in words
    assert "<td>preprocessing</td>" not in text
    with report_page(page_path, 1280, 900) as page:
        page.evaluate("() => document.querySelectorAll('details').forEach(d => d.open = true)")
        layout = page.evaluate(OVERLAP_JS)
        page.screenshot(path=str(tmp_path / "wide.png"), full_page=True)
    assert layout["scrollWidth"] <= layout["innerWidth"], layout
    assert layout["hits"] == [], layout["hits"][:10]
    assert layout["escapes"] == [], layout["escapes"]
