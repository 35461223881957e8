"""retreino inspect PATH: what a model is, what it expects and what it predicts."""
from __future__ import annotations

import json

from .common import add_model_args, model_kwargs


def register(sub) -> None:
    p = sub.add_parser("inspect", help="describe a model: format, input, classes, layers, head")
    p.add_argument("model", help="model file or folder (Teachable Machine export, .h5, .keras) or backbone name")
    add_model_args(p)
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.set_defaults(func=run)


def run(args) -> int:
    from .. import load_model
    from ..models.summary import summarize

    summary = summarize(load_model(args.model, **model_kwargs(args)))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        from ..models.summary import format_summary

        print(format_summary(summary))
    return 0
