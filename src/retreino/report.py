"""`report.html`: one self-contained page per run directory (images embedded, no external assets).

Built from whatever the run directory holds, so it can be written right after training (config,
dataset, learning curves) and rewritten after `retreino evaluate --run` (metrics, confusion matrix,
misclassified examples). The page opens from disk in any browser, offline, and can be mailed.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .atomic import write_text

REPORT_NAME = "report.html"

CSS = """
:root { --fg:#1f2328; --muted:#656d76; --line:#d0d7de; --bg:#f6f8fa; --accent:#0072B2; --good:#1a7f37; --bad:#cf222e; }
* { box-sizing: border-box; }
body { font: 15px/1.5 -apple-system, BlinkMacSystemFont, "Segoe UI", Helvetica, Arial, sans-serif; color: var(--fg);
       margin: 0; background: white; }
header { background: var(--bg); border-bottom: 1px solid var(--line); padding: 20px 32px; }
header h1 { margin: 0 0 4px; font-size: 24px; }
header .sub { color: var(--muted); }
nav { margin-top: 8px; }
nav a { margin-right: 14px; color: var(--accent); text-decoration: none; font-size: 14px; }
main { padding: 8px 32px 40px; max-width: 1280px; }
section { margin-top: 28px; }
h2 { font-size: 19px; border-bottom: 1px solid var(--line); padding-bottom: 6px; }
h3 { font-size: 15px; margin: 18px 0 6px; }
table { border-collapse: collapse; margin: 6px 0 10px; font-variant-numeric: tabular-nums; max-width: 100%; }
th, td { border: 1px solid var(--line); padding: 5px 12px; text-align: left; vertical-align: top; }
/* Long absolute paths and fingerprints wrap inside their cell instead of widening the page. */
td, code, .sub, figcaption, p { overflow-wrap: anywhere; }
td:first-child { overflow-wrap: break-word; }  /* a setting's name keeps its width; its value wraps */
.grid2 table { width: 100%; }
.table-wrap { max-width: 100%; overflow-x: auto; }
th { background: var(--bg); font-weight: 600; }
td.num, table#metrics td:nth-child(2) { text-align: right; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 10px 0 14px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px 18px; min-width: 150px; background: white; }
.card .v { font-size: 24px; font-weight: 600; }
.card .k { color: var(--muted); font-size: 13px; }
figure { margin: 10px 0 18px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; }
pre { background: var(--bg); border: 1px solid var(--line); border-radius: 6px; padding: 12px; overflow-x: auto; font-size: 13px; }
.muted { color: var(--muted); }
.grid2 { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(420px, 100%), 1fr)); gap: 18px;
         align-items: start; }
.grid2 > * { min-width: 0; }  /* a grid item may shrink below its content: its tables wrap, never overlap */
details summary { cursor: pointer; color: var(--accent); }
footer { color: var(--muted); font-size: 12px; padding: 16px 32px; border-top: 1px solid var(--line); }
"""


def write_report(run_dir: str | os.PathLike) -> Path:
    """Build `report.html` in a run directory from the files it holds; returns its path.

    Works right after training (config, dataset summary, learning curves) and after
    `retreino evaluate --run` (test metrics, classification report, confusion matrix,
    misclassified examples). Images are embedded as data URIs: the file stands alone.

    >>> write_report("runs/cats")  # doctest: +SKIP
    PosixPath('runs/cats/report.html')
    """
    run = Path(run_dir)
    if not run.is_dir():
        from .errors import RetreinoError

        raise RetreinoError(f"no such run directory: {run}")
    page = build_report_html(run)
    return write_text(run / REPORT_NAME, page)


# --------------------------------------------------------------------------- reading the run

def _read_json(path: Path) -> dict | None:
    """The file's JSON, or None when it is missing or broken: a report shows what it can."""
    from .atomic import read_json
    from .errors import RetreinoError

    try:
        return read_json(path, default=None)
    except RetreinoError:
        return None


def _read_csv(path: Path) -> list[dict]:
    from .runs import read_csv_rows

    try:
        return read_csv_rows(path)
    except OSError:
        return []


def _img(path: Path, alt: str, caption: str = "") -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    cap = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{_e(alt)}">{cap}</figure>'


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None or v == "":
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if pct:
            return f"{v:.1%}"
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.2e}"
        return f"{v:.4g}"
    return str(v)


def _table(rows: Sequence[Sequence[Any]], headers: Sequence[str] | None = None, table_id: str | None = None,
           pct_cols: Iterable[int] = ()) -> str:
    pct_cols = set(pct_cols)
    out = ['<div class="table-wrap">' + (f'<table id="{table_id}">' if table_id else "<table>")]
    if headers:
        out.append("<thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in headers) + "</tr></thead>")
    out.append("<tbody>")
    for r in rows:
        cells = []
        for i, v in enumerate(r):
            cls = ' class="num"' if isinstance(v, (int, float)) and not isinstance(v, bool) else ""
            cells.append(f"<td{cls}>{_e(_fmt(v, pct=i in pct_cols))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _num(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------- sections

def _summary_cards(metrics: dict | None, history: list[dict]) -> str:
    cards: list[tuple[str, str]] = []
    if metrics:
        split = metrics.get("split", "test")
        cards.append((f"{split} accuracy", _fmt(metrics.get("accuracy"), pct=True)))
        if metrics.get("loss") is not None:
            cards.append((f"{split} loss", _fmt(metrics.get("loss"))))
        macro = (metrics.get("per_class_avg") or {}).get("macro avg") or {}
        if macro.get("f1-score") is not None:
            cards.append(("macro F1", _fmt(macro["f1-score"], pct=True)))
        if metrics.get("roc_auc") is not None:
            cards.append(("ROC-AUC", _fmt(metrics["roc_auc"])))
        for k, v in (metrics.get("top_k_accuracy") or {}).items():
            cards.append((f"top-{k} accuracy", _fmt(v, pct=True)))
        cards.append(("images evaluated", _fmt(metrics.get("n"))))
    vals = [_num(r.get("val_accuracy")) for r in history]
    vals = [v for v in vals if v is not None]
    if vals:
        cards.append(("best val accuracy", _fmt(max(vals), pct=True)))
    if history:
        cards.append(("epochs", _fmt(len(history))))
        secs = [_num(r.get("seconds")) for r in history]
        total = sum(s for s in secs if s)
        if total:
            cards.append(("training time", _duration(total)))
    if not cards:
        return ""
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="v">{_e(v)}</div><div class="k">{_e(k)}</div></div>' for k, v in cards
    ) + "</div>"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    m, s = divmod(seconds, 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def _metrics_section(metrics: dict | None, history: list[dict], class_report: str | None) -> str:
    parts = ['<section id="metrics-section"><h2>Metrics</h2>']
    if metrics:
        split = metrics.get("split", "test")
        rows: list[list[Any]] = [["accuracy", _fmt(metrics.get("accuracy"), pct=True)]]
        if metrics.get("loss") is not None:
            rows.append(["loss (cross-entropy)", _fmt(metrics.get("loss"))])
        for k, v in (metrics.get("top_k_accuracy") or {}).items():
            rows.append([f"top-{k} accuracy", _fmt(v, pct=True)])
        if metrics.get("roc_auc") is not None:
            rows.append(["ROC-AUC", _fmt(metrics.get("roc_auc"))])
        rows.append(["images", _fmt(metrics.get("n"))])
        if metrics.get("errors"):
            rows.append(["unreadable images (skipped)", _fmt(metrics.get("errors"))])
        where = metrics.get("data") or f"{split} split"
        model = f" by <code>{_e(metrics['model'])}</code>" if metrics.get("model") else ""
        parts.append(f"<p class=\"muted\">Measured on the {_e(where)}{model}.</p>")
        parts.append(_table([[k, v] for k, v in rows], ["metric", "value"], table_id="metrics"))
        per_class = metrics.get("per_class") or {}
        if per_class:
            crow = [[name, m.get("precision"), m.get("recall"), m.get("f1-score"), int(m.get("support", 0))]
                    for name, m in per_class.items()]
            for name, m in (metrics.get("per_class_avg") or {}).items():
                crow.append([name, m.get("precision"), m.get("recall"), m.get("f1-score"), int(m.get("support", 0))])
            parts.append("<h3>Per class</h3>")
            parts.append(_table(crow, ["class", "precision", "recall", "F1", "support"], table_id="per-class",
                                pct_cols=(1, 2, 3)))
        if class_report:
            parts.append(f"<details><summary>classification report (text)</summary><pre>{_e(class_report)}</pre></details>")
    else:
        # No evaluation yet: the same table, from the training history, so the page always has one.
        rows = []
        if history:
            va = [(_num(r.get("val_accuracy")), i) for i, r in enumerate(history)]
            va = [(v, i) for v, i in va if v is not None]
            last = history[-1]
            if va:
                v, i = max(va, key=lambda t: (t[0], -t[1]))
                rows.append(["best validation accuracy", _fmt(v, pct=True), f"epoch {i + 1}"])
                rows.append(["validation loss at best", _fmt(_num(history[i].get("val_loss"))), f"epoch {i + 1}"])
            rows.append(["final training accuracy", _fmt(_num(last.get("accuracy")), pct=True), f"epoch {len(history)}"])
            rows.append(["final training loss", _fmt(_num(last.get("loss"))), f"epoch {len(history)}"])
        parts.append('<p class="muted">Not evaluated on the test split yet: run '
                     '<code>retreino evaluate --run RUN_DIR</code> to add test metrics.</p>')
        parts.append(_table(rows, ["metric", "value", "when"], table_id="metrics"))
    parts.append("</section>")
    return "".join(parts)


def _calibration_section(run: Path, metrics: dict | None) -> str:
    """Temperature scaling (ECE before/after, reliability diagram) and `evaluate --ood` rejection."""
    cal, ood = (metrics or {}).get("calibration"), (metrics or {}).get("ood")
    if not cal and not ood:
        return ""
    parts = ['<section id="calibration-section"><h2>Confidence and unknown</h2>']
    if cal:
        parts.append(_table([["temperature", _fmt(cal.get("temperature"))],
                             ["expected calibration error, raw", _fmt(cal.get("ece_before"))],
                             ["expected calibration error, temperature-scaled", _fmt(cal.get("ece_after"))]],
                            ["calibration", "value"]))
        if (run / "reliability.png").is_file():
            parts.append(_img(run / "reliability.png", "reliability diagram",
                              "Accuracy against confidence per bin: on the diagonal, a 90% answer is right 90% of the time."))
    if ood:
        rows = [[m, _fmt(r.get("auroc")), _fmt(r.get("ood_rejected"), pct=True), _fmt(r.get("in_rejected"), pct=True),
                 _fmt(r.get("accuracy_kept"), pct=True)] for m, r in (ood.get("methods") or {}).items()]
        parts.append(f"<p>Other images: <code>{_e(ood.get('folder'))}</code> ({_e(ood.get('n_ood'))} images); the model "
                     f"answers with <b>{_e(ood.get('method'))}</b>.</p>")
        parts.append(_table(rows, ["score", "AUROC", "other images answered unknown", "test images answered unknown",
                                   "accuracy on the accepted test images"]))
    parts.append("</section>")
    return "\n".join(parts)


def _dataset_section(cfg: dict | None) -> str:
    data = (cfg or {}).get("data") or {}
    counts: Mapping[str, Mapping[str, int]] = data.get("counts") or {}
    if not data:
        return ""
    parts = ['<section id="dataset"><h2>Dataset</h2>']
    kv = [["root", data.get("root")], ["source", data.get("source")], ["classes", ", ".join(data.get("class_names") or [])],
          ["fingerprint", data.get("fingerprint")]]
    parts.append(_table([r for r in kv if r[1]]))
    if counts:
        classes = list(data.get("class_names") or sorted({c for s in counts.values() for c in s}))
        splits = list(counts)
        rows = []
        for c in classes:
            rows.append([c] + [int(counts[s].get(c, 0)) for s in splits] + [sum(int(counts[s].get(c, 0)) for s in splits)])
        rows.append(["total"] + [sum(int(v) for v in counts[s].values()) for s in splits]
                    + [sum(int(v) for s in splits for v in counts[s].values())])
        parts.append(_table(rows, ["class"] + splits + ["all"], table_id="dataset-counts"))
    parts.append("</section>")
    return "".join(parts)


def _config_section(cfg: dict | None) -> str:
    if not cfg:
        return ""
    parts = ['<section id="config"><h2>Configuration</h2><div class="grid2">']
    settings = cfg.get("config") or {}
    if settings:
        rows = []
        for k, v in settings.items():
            if isinstance(v, dict):
                v = ", ".join(f"{kk}={vv}" for kk, vv in v.items())
            rows.append([k, v])
        parts.append("<div><h3>Training settings</h3>" + _table(rows, ["setting", "value"], table_id="settings") + "</div>")
    side = []
    model = dict(cfg.get("model") or {})
    if model:
        if model.get("preprocessing"):  # the contract in words, not the mode's code name ("tf")
            from .preprocessing import input_contract

            model.pop("input_size", None)
            contract = input_contract(model.pop("preprocessing"), (cfg.get("model") or {}).get("input_size"),
                                      settings.get("resize") or model.get("resize_mode"))
            model = {"input": contract, **model}
        rows = [[k, ", ".join(map(str, v)) if isinstance(v, list) else v] for k, v in model.items()
                if v not in (None, [], "")]
        side.append("<h3>Model</h3>" + _table(rows))
    versions = cfg.get("versions") or {}
    if versions:
        side.append("<h3>Versions</h3>" + _table([[k, v] for k, v in versions.items()], ["package", "version"]))
    parts.append("<div>" + "".join(side) + "</div>")
    parts.append("</div></section>")
    return "".join(parts)


def _history_table(history: list[dict]) -> str:
    if not history:
        return ""
    cols = [c for c in ("epoch", "phase", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds") if c in history[0]]
    rows = []
    for r in history:
        row = []
        for c in cols:
            v = r.get(c)
            n = _num(v) if c != "phase" else None
            row.append(int(n) if c == "epoch" and n is not None else (n if n is not None else v))
        rows.append(row)
    return ("<details><summary>history table</summary>"
            + _table(rows, cols, table_id="history") + "</details>")


def build_report_html(run: Path) -> str:
    """The report page as a string (write_report writes it atomically)."""
    from . import runs  # the run directory's file names have one owner

    cfg = _read_json(run / runs.CONFIG)
    metrics = _read_json(run / runs.METRICS)
    history = _read_csv(run / runs.HISTORY)
    class_report = None
    if (run / "classification_report.txt").is_file():
        class_report = (run / "classification_report.txt").read_text(encoding="utf-8")

    curves = run / runs.CURVES
    if history and not curves.is_file():
        from .plots import plot_learning_curves

        plot_learning_curves(run / runs.HISTORY, curves)

    settings = (cfg or {}).get("config") or {}
    name = settings.get("name") or run.resolve().name
    model_src = settings.get("model") or ((cfg or {}).get("model") or {}).get("source") or ""
    classes = ((cfg or {}).get("data") or {}).get("class_names") or (metrics or {}).get("class_names") or []
    sub = " | ".join(x for x in (f"model: {model_src}" if model_src else "",
                                 f"classes: {', '.join(classes)}" if classes else "") if x)

    sections = []
    nav = [("metrics-section", "Metrics")]
    sections.append(_summary_cards(metrics, history))
    sections.append(_metrics_section(metrics, history, class_report))
    sections.append(_calibration_section(run, metrics))

    figs = []
    for fname, alt, cap in (
        ("confusion_matrix.png", "confusion matrix", "Counts and share of each true class (row percentages)."),
        ("predictions_scatter.png", "true vs predicted scatter", "Each point is one image; red crosses are errors."),
    ):
        if (run / fname).is_file():
            figs.append(_img(run / fname, alt, cap))
    if figs:
        sections.append('<section id="evaluation"><h2>Confusion matrix</h2><div class="grid2">' + "".join(figs) + "</div></section>")
        nav.append(("evaluation", "Confusion matrix"))
    if (run / "misclassified.png").is_file():
        sections.append('<section id="misclassified"><h2>Misclassified examples</h2>'
                        + _img(run / "misclassified.png", "misclassified examples",
                               "The most confident errors first: true class, predicted class and confidence.")
                        + "</section>")
        nav.append(("misclassified", "Misclassified"))
    if curves.is_file() or history:
        body = '<section id="training"><h2>Learning curves</h2>'
        if curves.is_file():
            body += _img(curves, "learning curves", "Train vs validation per epoch; the shaded band is the head-only warm-up.")
        body += _history_table(history) + "</section>"
        sections.append(body)
        nav.append(("training", "Learning curves"))
    ds = _dataset_section(cfg)
    if ds:
        sections.append(ds)
        nav.append(("dataset", "Dataset"))
    cs = _config_section(cfg)
    if cs:
        sections.append(cs)
        nav.append(("config", "Configuration"))

    from . import __version__

    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    nav_html = "".join(f'<a href="#{a}">{_e(t)}</a>' for a, t in nav)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>retreino report: {_e(name)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{_e(name)}</h1><div class=\"sub\">{_e(sub)}</div><nav>{nav_html}</nav></header>"
        f"<main>{''.join(sections)}</main>"
        f"<footer>Written by retreino {_e(__version__)} on {_e(when)} from <code>{_e(run)}</code>.</footer>"
        "</body></html>\n"
    )
