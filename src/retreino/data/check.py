"""`retreino check-data`: every file decoded, every problem named, one verdict.

The report is built from the same `load_dataset` that training uses (with `deep=True`), so what
check-data calls fine is exactly what training will read, split the same way.
"""
from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import dataclass

from .scan import BAD_KINDS, Problem, scan_images
from .sources import SPLITS, Dataset, load_dataset

# Display order and short titles of problem kinds: fatal first, then files that will be
# skipped, then warnings about data that will be used.
KIND_TITLES = {
    "no_images": "no images", "one_class": "one class", "missing_class": "missing class",
    "empty": "empty file", "unreadable": "unreadable", "not_image": "not an image", "corrupt": "corrupt",
    "too_large": "too large",
    "leak": "leakage", "conflicting_label": "conflicting label", "duplicate": "duplicate",
    "extension": "wrong extension", "tiny": "tiny", "imbalance": "imbalance",
    "unlabeled": "unlabeled", "missing_file": "missing file", "bad_row": "bad CSV row",
    "empty_class": "empty class", "empty_split": "empty split", "ignored": "ignored",
    "outside_data": "outside the data folder", "not_regular": "not a regular file",
    "suspect_label": "suspect label",
}
_ORDER = {k: i for i, k in enumerate(KIND_TITLES)}


@dataclass
class CheckReport:
    dataset: Dataset
    problems: list[Problem]
    strict: bool = False

    @property
    def fatal(self) -> list[Problem]:
        return [p for p in self.problems if p.fatal]

    @property
    def ok(self) -> bool:
        return not self.fatal

    def rel(self, path: str | None) -> str:
        return self.dataset.relative(path) if path else ""

    def rows(self) -> list[dict]:
        """One row per split and class: counts, formats, smallest and largest image."""
        ds = self.dataset
        cells: dict[tuple[str, str], dict] = defaultdict(lambda: {"images": 0, "bad": 0, "formats": Counter(), "sizes": []})
        for path, (split, cls) in ds.membership.items():
            info = ds.files.get(path)
            cell = cells[(split, cls)]
            if info is None or not info.ok:
                cell["bad"] += 1
                continue
            cell["images"] += 1
            cell["formats"][info.format] += 1
            cell["sizes"].append((info.width * info.height, info.width, info.height))
        out = []
        for split in SPLITS:
            for cls in sorted({c for s, c in cells if s == split}):
                cell = cells[(split, cls)]
                sizes = sorted(cell["sizes"])
                out.append({
                    "split": split, "class": cls, "images": cell["images"], "bad": cell["bad"],
                    "formats": dict(cell["formats"].most_common()),
                    "smallest": f"{sizes[0][1]}x{sizes[0][2]}" if sizes else "",
                    "largest": f"{sizes[-1][1]}x{sizes[-1][2]}" if sizes else "",
                })
        return out

    def verdict(self) -> str:
        ds = self.dataset
        used = sum(len(s) for s in ds.splits())
        what = f"{used:,} images in {ds.num_classes} classes"
        bad = len(ds.skipped)
        warnings = [p for p in self.problems if not p.fatal and p.kind not in BAD_KINDS]
        if self.fatal:
            p = self.fatal[0]
            first = f"{self.rel(p.path)}: {p.message}" if p.path and not p.others and p.kind != "one_class" else p.message
            more = f" (+{len(self.fatal) - 1} more)" if len(self.fatal) > 1 else ""
            return f"NOT READY: {len(self.fatal)} fatal problem(s): {first}{more}"
        parts = []
        if bad:
            parts.append(f"{bad} unreadable file(s) will be skipped")
        if warnings:
            parts.append(f"{len(warnings)} warning(s)")
        if parts:
            return f"READY with warnings: {what}; " + ", ".join(parts) + "."
        return f"READY: {what}, no problems found."

    def to_dict(self) -> dict:
        ds = self.dataset
        return {
            "root": ds.root,
            "source": ds.source,
            "classes": ds.class_names,
            "splits": {s.name: {"images": len(s), "per_class": s.counts(), "origin": ds.origin.get(s.name, "")} for s in ds.splits()},
            "table": self.rows(),
            "problems": [dict(p.to_dict(), path=self.rel(p.path), others=[self.rel(o) for o in p.others]) for p in self.problems],
            "skipped": [self.rel(p) for p in ds.skipped],
            "fatal": len(self.fatal),
            "ok": self.ok,
            "verdict": self.verdict(),
            "fingerprint": ds.fingerprint() if ds.train is not None else None,
        }

    def format(self, limit: int = 20) -> str:
        """The human report: a table per split and class, problems grouped by kind, a verdict."""
        from ..console import table

        ds = self.dataset
        lines = [f"{ds.root}  ({_describe_source(ds)})", ""]
        rows = self.rows()
        if rows:
            body, last = [], None
            for r in rows:
                fmts = ", ".join(f"{k} {v}" if len(r["formats"]) > 1 else k for k, v in r["formats"].items())
                body.append([r["split"] if r["split"] != last else "", r["class"], f"{r['images']:,}",
                             r["bad"] or "", fmts, r["smallest"], r["largest"]])
                last = r["split"]
            lines.append(table(body, headers=["split", "class", "images", "bad", "formats", "smallest", "largest"],
                               align="llrrlrr"))
            lines.append("")
        if self.problems:
            lines.append(f"problems ({len(self.problems)}):")
            groups: dict[str, list[Problem]] = defaultdict(list)
            for p in self.problems:
                groups[p.kind].append(p)
            for kind in sorted(groups, key=lambda k: (not any(p.fatal for p in groups[k]), _ORDER.get(k, 99))):
                items = groups[kind]
                tag = "FATAL" if any(p.fatal for p in items) else ("skipped" if kind in BAD_KINDS else "warning")
                lines.append(f"  {KIND_TITLES.get(kind, kind)} ({len(items)}, {tag})")
                shown = items[:limit]
                width = max((len(self.rel(p.path)) for p in shown if p.path and not p.others), default=0)
                for p in shown:
                    if p.path and not p.others and kind not in ("missing_class", "imbalance"):
                        lines.append(f"    {self.rel(p.path).ljust(min(width, 60))}  {p.message}")
                    else:
                        lines.append(f"    {p.message}")
                if len(items) > limit:
                    lines.append(f"    ... and {len(items) - limit} more (--json lists them all)")
            lines.append("")
        lines.append(self.verdict())
        return "\n".join(lines)


def _describe_source(ds: Dataset) -> str:
    if ds.source == "folders":
        return "notebook layout: " + ", ".join(
            o if o.endswith("/") else f"{s.name} = {o}" for s in ds.splits() for o in [ds.origin.get(s.name, "")])
    if ds.source == "csv":
        return "labels CSV, split " + "/".join(f"{len(s)}" for s in ds.splits()) + " by class"
    return "class folders, split " + "/".join(f"{len(s)}" for s in ds.splits()) + " by class"


def check_dataset(root, *, labels_csv=None, val_split: float = 0.2, test_split: float = 0.1, seed: int = 42,
                  strict: bool = False, follow_links: bool = False) -> CheckReport:
    """Decode every file under `root` and collect every problem (see `retreino check-data`)."""
    ds = load_dataset(root, val_split=val_split, test_split=test_split, seed=seed, labels_csv=labels_csv,
                      deep=True, warn=False, allow_fatal=True, follow_links=follow_links)
    problems = list(ds.problems)
    # Files outside the dataset (no label row, stray files) are looked at too: the user may
    # want to label them, so say whether they would be readable.
    strays = [p.path for p in problems if p.kind in ("unlabeled", "ignored") and p.path and os.path.isfile(p.path)]
    for info in scan_images(strays, deep=True, digest=False, desc="checking unlabeled"):
        ds.files[info.path] = info
        problems.extend(info.notes + ([info.error] if info.error else []))
    if strict:  # files training would skip become fatal, as `train --strict` would refuse them
        skipped = set(ds.skipped)
        for p in problems:
            if p.kind in BAD_KINDS and p.path in skipped:
                p.fatal = True
    problems.sort(key=lambda p: (not p.fatal, _ORDER.get(p.kind, 99), p.path or ""))
    return CheckReport(ds, problems, strict)
