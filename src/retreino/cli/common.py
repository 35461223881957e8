"""Arguments several sub-commands share, so they read the same everywhere."""
from __future__ import annotations


def add_model_args(p, weights: bool = True) -> None:
    """Options that shape how a model is loaded (see retreino.load_model)."""
    if weights:
        p.add_argument("--weights", metavar="PATH", help="weights file for a backbone name (.weights.h5 or legacy H5)")
    p.add_argument("--input-range", metavar="RANGE", help="override the model's input scaling: -1,1 | 0,1 | 0,255 | caffe | torch")
    p.add_argument("--unsafe", action="store_true", help="allow models that embed Python code (Lambda layers); only for files you trust")


def model_kwargs(args) -> dict:
    return dict(
        weights=getattr(args, "weights", None),
        unsafe=getattr(args, "unsafe", False),
        input_range=getattr(args, "input_range", None),
    )
