"""Spreading one big prediction job over many jobs: `predict --shard K/N`, then `retreino merge`.

Shard K of N is every N-th path of the sorted file list, starting at the K-th (1-based): the N
shards are disjoint, together hold every file, differ in size by at most one, and any machine that
sees the same folder computes the same split without talking to the others, so any scheduler
(a Slurm array, a Kubernetes indexed Job, GNU parallel) can run them. `merge` joins the parts' CSV
or JSON-lines outputs into one file with the rows sorted by path, the same rows as an unsharded run.
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Sequence

from .errors import RetreinoError

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(text: str) -> tuple[int, int]:
    """"3/8" -> (3, 8); K counts from 1, as array-job indices in most schedulers' docs do."""
    m = _SHARD.match(str(text))
    if not m:
        raise RetreinoError(f"--shard {text!r}: use K/N, e.g. 1/4 for the first of four parts")
    k, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 1 <= k <= n:
        raise RetreinoError(f"--shard {text!r}: K must be between 1 and N (N at least 1)")
    return k, n


def shard_paths(paths: Sequence, k: int, n: int) -> list:
    """The K-th of N disjoint parts of `paths` (sorted by their text, then every N-th)."""
    return sorted(paths, key=str)[k - 1::n]


def merge_outputs(parts: Sequence[str | Path], out: str | Path) -> int:
    """Join prediction outputs (all CSV with the same columns, or all JSON lines) into `out`,
    rows sorted by path; returns the row count. A path in two parts is an error (wrong shards)."""
    from .atomic import atomic_path

    if not parts:
        raise RetreinoError("merge needs at least one part")
    jsonl = [Path(p).suffix.lower() in (".jsonl", ".json", ".ndjson") for p in parts]
    if len(set(jsonl)) != 1:
        raise RetreinoError("merge: the parts mix CSV and JSON lines")
    header, rows = None, {}
    for part in parts:
        part = Path(part)
        if not part.is_file():
            raise RetreinoError(f"merge: {part}: no such file")
        with open(part, newline="", encoding="utf-8") as fh:
            if jsonl[0]:
                records = [(json.loads(line)["path"], line.rstrip("\n")) for line in fh if line.strip()]
            else:
                reader = csv.reader(fh)
                cols = next(reader, None)
                if cols is None:
                    raise RetreinoError(f"merge: {part} is empty")
                if header is not None and cols != header:
                    raise RetreinoError(f"merge: {part} has other columns than {parts[0]} (other model or --top-k?)")
                header = cols
                records = [(r[0], r) for r in reader if r]
        for path, rec in records:
            if path in rows:
                raise RetreinoError(f"merge: {path} is in two parts; were they made with the same --shard N?")
            rows[path] = rec
    with atomic_path(Path(out)) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        if jsonl[0]:
            fh.writelines(rows[p] + "\n" for p in sorted(rows))
        else:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(rows[p] for p in sorted(rows))
    return len(rows)
