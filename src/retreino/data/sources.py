"""Where the pictures and their labels come from, and how they split into train/validation/test.

Three layouts are understood:

- **folders**: the notebook's `ROOT/{train,validation,test}/<class>/` (a missing validation or
  test folder is carved out of train);
- **split**: one folder of `<class>/` sub-folders, split three ways;
- **csv**: a `filename,label` CSV next to a folder of images (`labels.csv` in or beside ROOT).

Splits are stratified and seeded: the same files and seed give the same split on every machine.
Sorted class names are the label order everywhere.
"""
from __future__ import annotations

import csv
import hashlib
import os
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import safety
from ..errors import DataError
from .images import IMAGE_EXTENSIONS
from .scan import FileInfo, Problem, scan_images

SPLITS = ("train", "validation", "test")
_SPLIT_NAMES = {
    "train": "train", "training": "train",
    "validation": "validation", "val": "validation", "valid": "validation",
    "test": "test", "testing": "test",
}
_CSV_NAMES = ("labels.csv", "Labels.csv", "LABELS.csv")
_HEADER_WORDS = {"filename", "file", "file_name", "path", "filepath", "image", "image_path", "img", "name", "id"}
_IGNORED_FILES = {"thumbs.db", "desktop.ini"}
IMBALANCE_RATIO = 3.0


@dataclass
class Split:
    """One split: file paths and integer labels (indices into `class_names`), in a stable order."""

    name: str
    paths: list[str]
    labels: np.ndarray
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    def counts(self) -> dict[str, int]:
        n = np.bincount(self.labels, minlength=len(self.class_names)) if len(self.labels) else [0] * len(self.class_names)
        return {c: int(k) for c, k in zip(self.class_names, n)}

    def __repr__(self) -> str:
        return f"Split({self.name!r}, {len(self)} images, {self.counts()})"


@dataclass
class Dataset:
    """A labelled image dataset, split and checked; see `load_dataset`."""

    root: str
    source: str  # "folders" | "split" | "csv"
    class_names: list[str]
    train: Split | None
    validation: Split | None
    test: Split | None
    problems: list[Problem] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    files: dict[str, FileInfo] = field(default_factory=dict)  # scan results by path
    origin: dict[str, str] = field(default_factory=dict)  # split name -> where it came from
    membership: dict[str, tuple[str, str]] = field(default_factory=dict)  # path -> (split, class), bad files too

    @property
    def fatal(self) -> list[Problem]:
        return [p for p in self.problems if p.fatal]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def splits(self) -> list[Split]:
        return [s for s in (self.train, self.validation, self.test) if s is not None]

    def relative(self, path: str) -> str:
        try:
            return os.path.relpath(path, self.root)
        except ValueError:
            return path

    def fingerprint(self) -> str:
        """A stable hash of what a run trained on: split, label, relative path and size of every file."""
        h = hashlib.sha256()
        for split in self.splits():
            for path, label in zip(split.paths, split.labels):
                size = self.files[path].size if path in self.files else os.path.getsize(path)
                rel = self.relative(path).replace(os.sep, "/")
                h.update(f"{split.name}\t{self.class_names[label]}\t{rel}\t{size}\n".encode())
        return h.hexdigest()[:16]

    def summary(self) -> dict:
        return {
            "root": self.root,
            "source": self.source,
            "classes": list(self.class_names),
            "splits": {
                s.name: {"total": len(s), "per_class": s.counts(), "origin": self.origin.get(s.name, "")}
                for s in self.splits()
            },
            "skipped": len(self.skipped),
            "problems": dict(Counter(p.kind for p in self.problems)),
            "fingerprint": self.fingerprint(),
        }

    def __repr__(self) -> str:
        parts = ", ".join(f"{s.name}={len(s)}" for s in self.splits())
        return f"Dataset({self.source}, classes={self.class_names}, {parts}, problems={len(self.problems)})"


# ---------------------------------------------------------------------------------------------
# Discovery: which files, which labels, which split.


def _is_candidate(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".") and p.name.lower() not in _IGNORED_FILES


def _files_under(folder: Path) -> list[Path]:
    """Every candidate file below a folder (recursively, like flow_from_directory), sorted."""
    out = []
    # Loop-safe and depth-limited; regular files only (a FIFO is never opened).
    for dirpath, filenames in safety.walk_files(folder):
        out.extend(Path(dirpath) / f for f in filenames)
    return sorted(p for p in out if _is_candidate(p))


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _class_folders(folder: Path) -> dict[str, list[Path]]:
    return {d.name: _files_under(d) for d in _subdirs(folder)}


def _find_csv(root: Path) -> Path | None:
    for name in _CSV_NAMES:
        if (root / name).is_file():
            return root / name
    return None


def _read_csv(path: Path, problems: list[Problem]) -> list[tuple[str, str]]:
    """(filename, label) rows of a labels CSV; a header row is recognised and dropped."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the labels CSV ({exc})") from exc
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    rows = [r for r in csv.reader(text.splitlines(), dialect) if any(c.strip() for c in r)]
    if rows:
        first = rows[0][0].strip()
        if first.lower() in _HEADER_WORDS or Path(first).suffix.lower() not in IMAGE_EXTENSIONS | {".jfif"}:
            rows = rows[1:]
    out = []
    for n, r in enumerate(rows, start=2):
        if len(r) < 2 or not r[0].strip() or not r[1].strip():
            problems.append(Problem("bad_row", str(path), f"line {n}: expected filename,label, got {','.join(r)!r}"))
            continue
        out.append((r[0].strip(), r[1].strip()))
    return out


def _csv_source(root: Path, csv_path: Path, problems: list[Problem]) -> dict[str, list[Path]]:
    rows = _read_csv(csv_path, problems)
    if not rows:
        raise DataError(f"{csv_path}: no filename,label rows")
    # Images live in the CSV's folder, in ROOT, or in an `images/` folder beside the CSV:
    # take the candidate where most listed files exist.
    candidates = [csv_path.parent, root] + _subdirs(csv_path.parent) + (_subdirs(root) if root != csv_path.parent else [])
    seen, unique = set(), []
    for c in candidates:
        if c.resolve() not in seen:
            seen.add(c.resolve())
            unique.append(c)
    base = max(unique, key=lambda d: sum((d / f).is_file() for f, _ in rows[:200]))
    by_class: dict[str, list[Path]] = defaultdict(list)
    labelled: dict[str, str] = {}
    for name, label in rows:
        escape = safety.csv_escape(name)
        if escape:  # never read, whatever --follow-links says
            problems.append(Problem("outside_data", str(csv_path), f"row {name!r} ({label}) is {escape} "
                                    "outside the data folder; not used"))
            continue
        p = base / name
        key = str(p.resolve())
        if key in labelled:
            if labelled[key] != label:
                problems.append(Problem("conflicting_label", str(p), f"listed as {labelled[key]!r} and as {label!r}; keeping {labelled[key]!r}"))
            continue
        if not p.is_file():
            problems.append(Problem("missing_file", str(p), f"label row {name!r} ({label}) has no image"))
            continue
        labelled[key] = label
        by_class[label].append(p)
    for f in _files_under(base):
        if str(f.resolve()) not in labelled and f.resolve() != csv_path.resolve() and f.suffix.lower() != ".csv":
            problems.append(Problem("unlabeled", str(f), "image has no row in the labels CSV; not used"))
    return {c: sorted(v) for c, v in by_class.items()}


def _stratified(by_class: dict[str, list[Path]], val_split: float, test_split: float, seed: int):
    """Split each class on its own, seeded by (seed, class name) so classes do not disturb each other."""
    parts = {"train": {}, "validation": {}, "test": {}}
    for cls, files in sorted(by_class.items()):
        files = sorted(files)
        n = len(files)
        rng = np.random.default_rng([seed, zlib.crc32(cls.encode())])
        order = rng.permutation(n)
        n_test = int(round(n * test_split))
        n_val = int(round(n * val_split))
        while n_test + n_val >= n and (n_test or n_val):  # keep at least one training image
            if n_val >= n_test and n_val:
                n_val -= 1
            else:
                n_test -= 1
        pick = lambda idx: sorted(files[i] for i in idx)  # noqa: E731
        parts["test"][cls] = pick(order[:n_test])
        parts["validation"][cls] = pick(order[n_test:n_test + n_val])
        parts["train"][cls] = pick(order[n_test + n_val:])
    return parts


def _discover(root: Path, labels_csv, val_split: float, test_split: float, seed: int, problems: list[Problem]):
    """-> (source, {split: {class: [paths]}}, origin) before any file is opened."""
    for name, frac in (("val_split", val_split), ("test_split", test_split)):
        if not 0.0 <= frac < 1.0:
            raise DataError(f"{name} must be in [0, 1), got {frac}")
    if val_split + test_split >= 1.0:
        raise DataError(f"val_split + test_split must leave images to train on (got {val_split} + {test_split})")
    if labels_csv is None and root.is_file() and root.suffix.lower() == ".csv":
        root, labels_csv = root.parent, root
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    if labels_csv is not None:
        labels_csv = Path(labels_csv)
        if not labels_csv.is_file():
            raise DataError(f"{labels_csv}: no such labels CSV")

    subdirs = _subdirs(root)
    split_dirs = {_SPLIT_NAMES[d.name.lower()]: d for d in subdirs if d.name.lower() in _SPLIT_NAMES}
    csv_path = labels_csv or _find_csv(root)
    if csv_path is None and not split_dirs and not any(_files_under(d) for d in subdirs):
        csv_path = _find_csv(root.parent)  # ROOT is the image folder, the CSV sits beside it
    origin = {}

    if csv_path is not None:
        by_class = _csv_source(root, csv_path, problems)
        parts = _stratified(by_class, val_split, test_split, seed)
        origin = {"train": "labels CSV", "validation": f"{val_split:.0%} of the labels CSV", "test": f"{test_split:.0%} of the labels CSV"}
        return "csv", parts, origin, root

    if split_dirs:
        if "train" not in split_dirs:
            raise DataError(f"{root}: found {', '.join(sorted(d.name for d in split_dirs.values()))} but no train/ folder")
        for d in subdirs:
            if d.name.lower() not in _SPLIT_NAMES:
                problems.append(Problem("ignored", str(d), f"folder {d.name}/ is not train/validation/test; not used"))
        parts = {name: _class_folders(d) for name, d in split_dirs.items()}
        origin = {name: f"{d.name}/" for name, d in split_dirs.items()}
        missing = [s for s in ("validation", "test") if s not in parts]
        if missing:
            carve = _stratified(parts["train"], val_split if "validation" in missing else 0.0,
                                test_split if "test" in missing else 0.0, seed)
            parts["train"] = carve["train"]
            for s in missing:
                parts[s] = carve[s]
                frac = val_split if s == "validation" else test_split
                origin[s] = f"{frac:.0%} of train/ (seed {seed})"
        for f in root.iterdir():
            if _is_candidate(f):
                problems.append(Problem("ignored", str(f), "file outside train/validation/test; not used"))
        for d in split_dirs.values():
            for f in d.iterdir():
                if _is_candidate(f):
                    problems.append(Problem("ignored", str(f), f"file outside a class folder of {d.name}/; not used"))
        return "folders", parts, origin, root

    by_class = _class_folders(root)
    by_class = {c: v for c, v in by_class.items() if v} or by_class
    if not by_class:
        raise DataError(
            f"{root}: no classes found. Expected train/<class>/ folders, <class>/ sub-folders, "
            f"or a labels.csv (filename,label) beside the images"
        )
    for f in root.iterdir():
        if _is_candidate(f):
            problems.append(Problem("ignored", str(f), "file outside the class folders; not used"))
    parts = _stratified(by_class, val_split, test_split, seed)
    origin = {"train": f"{1 - val_split - test_split:.0%} of each class",
              "validation": f"{val_split:.0%} of each class (seed {seed})",
              "test": f"{test_split:.0%} of each class (seed {seed})"}
    return "split", parts, origin, root


# ---------------------------------------------------------------------------------------------


def _keep_duplicates_together(parts, infos: dict[str, FileInfo], carved: set[str]) -> dict[str, int]:
    """Identical files that a random split scattered go to one split (train first), so that a
    split retreino made never leaks test images into training. Folders the user split are left
    as they are (and their leakage is reported). Returns how many files left each split."""
    moved: dict[str, int] = defaultdict(int)
    where: dict[str, list[tuple[str, str, Path]]] = defaultdict(list)
    for name in carved:
        for cls, files in parts.get(name, {}).items():
            for p in files:
                d = infos[str(p)].digest
                if d:
                    where[d].append((name, cls, p))
    for hits in where.values():
        names = {n for n, _, _ in hits}
        if len(names) < 2:
            continue
        target = min(names, key=SPLITS.index)
        for name, cls, p in hits:
            if name != target:
                parts[name][cls].remove(p)
                parts[target].setdefault(cls, []).append(p)
                parts[target][cls].sort()
                moved[name] += 1
    return moved


def _list_paths(paths: list[str], root: str, limit: int = 10) -> str:
    rel = [os.path.relpath(p, root) for p in paths[:limit]]
    more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
    return ", ".join(rel) + more


def dataset_problems(ds: Dataset, infos: dict[str, FileInfo]) -> list[Problem]:
    """Problems that need the whole dataset: missing classes, imbalance, duplicates, leakage."""
    problems: list[Problem] = []
    classes = ds.class_names
    if not classes or ds.train is None or len(ds.train) == 0:
        problems.append(Problem("no_images", ds.root, "no usable training images", fatal=True))
        return problems
    if len(classes) < 2:
        problems.append(Problem("one_class", ds.root, f"only one class ({classes[0]}): a classifier needs at least two", fatal=True))
    for split in ds.splits():
        counts = split.counts()
        for cls, n in counts.items():
            if n == 0:
                fatal = split.name == "train"
                what = "cannot be learned" if fatal else "is not measured there"
                problems.append(Problem("missing_class", None, f"class {cls!r} has no images in {split.name} ({cls} {what})", fatal=fatal))
        nonzero = [n for n in counts.values() if n]
        if split.name == "train" and len(nonzero) >= 2 and max(nonzero) / min(nonzero) > IMBALANCE_RATIO:
            big = max(counts, key=counts.get)
            small = min((c for c in counts if counts[c]), key=counts.get)
            problems.append(Problem(
                "imbalance", None,
                f"{split.name}: {big} has {counts[big]} images, {small} only {counts[small]} "
                f"({counts[big] / counts[small]:.1f}x; consider --class-weight balanced)"))
    # Exact duplicates by content hash.
    where: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    for split in ds.splits():
        for path, label in zip(split.paths, split.labels):
            d = infos[path].digest if path in infos else None
            if d:
                where[d].append((split.name, classes[label], path))
    for d, hits in where.items():
        if len(hits) < 2:
            continue
        splits_hit = sorted({s for s, _, _ in hits}, key=SPLITS.index)
        labels_hit = sorted({c for _, c, _ in hits})
        paths = [p for _, _, p in hits]
        rel = ", ".join(ds.relative(p) for p in paths)
        if len(splits_hit) > 1:
            kind, msg = "leak", f"the same image is in {' and '.join(splits_hit)}: {rel}"
        else:
            kind, msg = "duplicate", f"{len(hits)} identical files in {splits_hit[0]}: {rel}"
        if len(labels_hit) > 1:
            msg += f" (labelled {' and '.join(labels_hit)})"
        problems.append(Problem(kind, paths[0], msg, others=paths[1:]))
    return problems


def load_dataset(root, *, val_split: float = 0.2, test_split: float = 0.1, seed: int = 42,
                 labels_csv=None, strict: bool = False, deep: bool = False, warn: bool = True,
                 allow_fatal: bool = False, follow_links: bool = False) -> Dataset:
    """Find the images and labels under `root`, split them, and set aside files that cannot be read.

    Every file gets a cheap check (header, pixel count, end-of-file marker, content hash; a full
    decode when the cheap check is in doubt), so the pipeline never meets a bad file mid-epoch.
    Bad files are skipped with one warning listing them; `strict=True` raises `DataError` instead.
    `deep=True` decodes every file (what `retreino check-data` does). Fatal problems (no images,
    one class, a class without training images) raise `DataError` unless `allow_fatal=True`.
    Files that resolve outside the data folder (symlinks) are refused unless `follow_links=True`;
    labels-CSV rows with absolute or `..` paths always are.

    >>> ds = load_dataset(DATA)        # train/ validation/ test/ with one sub-folder per class
    >>> ds.class_names, ds.source, len(ds.train), len(ds.test)
    (['cats', 'dogs'], 'folders', 16, 8)
    """
    root = Path(root).expanduser()
    problems: list[Problem] = []
    source, parts, origin, root = _discover(root, labels_csv, val_split, test_split, seed, problems)
    roots = [root] + ([Path(labels_csv).parent] if labels_csv else [])
    if source == "csv" and not labels_csv and _find_csv(root) is None and _find_csv(root.parent):
        roots.append(root.parent)  # the CSV sits beside the image folder
    safety.keep_inside(parts, roots, follow_links, problems)
    special: list[str] = []
    for _ in safety.walk_files(root, skipped=special):
        pass
    problems.extend(Problem("not_regular", p, "not a regular file (a FIFO, socket or device); never opened")
                    for p in special)

    all_paths = sorted({str(p) for split in parts.values() for files in split.values() for p in files})
    infos = {i.path: i for i in scan_images(all_paths, deep=deep, desc="checking images")}
    # Splits drawn from one pool of files (all three, or train and what was carved from it).
    if source == "folders":
        carved = {"train"} | {s for s in ("validation", "test") if not origin.get(s, "").endswith("/")}
    else:
        carved = set(SPLITS)
    moved = _keep_duplicates_together(parts, infos, carved)
    bad = [infos[p] for p in all_paths if not infos[p].ok]
    for info in infos.values():
        problems.extend([info.error] if info.error else [])
        problems.extend(info.notes)

    classes = sorted({c for split in parts.values() for c, files in split.items() if any(infos[str(p)].ok for p in files)})
    for c in sorted({c for split in parts.values() for c in split} - set(classes)):
        problems.append(Problem("empty_class", None, f"class {c!r} has no readable images; not used"))
    index = {c: i for i, c in enumerate(classes)}

    splits: dict[str, Split | None] = {}
    for name in SPLITS:
        if name not in parts:
            splits[name] = None
            continue
        paths, labels = [], []
        for c in classes:
            for p in parts[name].get(c, []):
                if infos[str(p)].ok:
                    paths.append(str(p))
                    labels.append(index[c])
        splits[name] = Split(name, paths, np.asarray(labels, dtype=np.int64), classes) if paths or name == "train" else None
        wanted = origin.get(name, "").endswith("/") or {"validation": val_split, "test": test_split}.get(name, 0) > 0
        if not paths and name != "train" and wanted:
            why = (f": its {moved[name]:,} files were identical copies of files in another split, and copies stay "
                   "together so that no image is in two splits") if moved.get(name) else ""
            problems.append(Problem("empty_split", None, f"the {name} split has no usable images{why}; it is left out"))

    ds = Dataset(str(root), source, classes, splits["train"], splits["validation"], splits["test"],
                 files=infos, skipped=[i.path for i in bad], origin=origin,
                 membership={str(p): (name, c) for name, split in parts.items() for c, files in split.items() for p in files})
    ds.problems = _dedupe(problems) + dataset_problems(ds, infos)

    if bad:
        listing = _list_paths(ds.skipped, ds.root)
        if strict:
            raise DataError(f"{len(bad)} unreadable image file(s) (strict mode): {listing}")
        if warn:
            from ..console import warn as say

            say(f"skipping {len(bad)} unreadable image file(s): {listing} (run `retreino check-data {root}` for details)")
    fatal = ds.fatal
    if fatal and not allow_fatal:
        more = f" (and {len(fatal) - 1} more fatal problem(s))" if len(fatal) > 1 else ""
        raise DataError(f"{root}: {fatal[0].message}{more}; run `retreino check-data {root}` for the full report")
    return ds


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen, out = set(), []
    for p in problems:
        key = (p.kind, p.path, p.message)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out
