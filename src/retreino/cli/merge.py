"""retreino merge: join the outputs of `predict --shard K/N` jobs into one file."""
from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser("merge", help="join the CSV/JSON-lines outputs of sharded predict jobs",
                       description="Join the outputs of `retreino predict ... --shard K/N --out part-K.csv` "
                                   "into one file, rows sorted by path (the rows of an unsharded run).")
    p.add_argument("parts", nargs="+", metavar="PART", help="the parts' output files (all .csv or all .jsonl)")
    p.add_argument("--out", required=True, metavar="FILE", help="the merged file")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..sharding import merge_outputs

    n = merge_outputs(args.parts, args.out)
    print(f"wrote {n} row(s) from {len(args.parts)} part(s) to {args.out}", file=sys.stderr)
    return 0
