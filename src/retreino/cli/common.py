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


RUNTIME_HELP = ("forward pass engine: auto (default: the export given, or the fastest export of the model that "
                "passed its parity check, else keras), keras, onnx, tflite, tflite-int8, savedmodel")
MODEL_HELP = ("model file or folder (.keras, .h5, Teachable Machine export, run directory), "
              "or an export: exports/onnx, exports/tflite, exports/tflite-int8, model.onnx, model.tflite")


def add_runtime_arg(p) -> None:
    """--runtime, with the one default every command shares (retreino.inference.DEFAULT_RUNTIME)."""
    from ..inference.exports import DEFAULT_RUNTIME

    p.add_argument("--runtime", default=DEFAULT_RUNTIME, metavar="NAME", help=RUNTIME_HELP)


def open_model(args, model=None):
    """The Predictor for args.model (or `model`), saying so on a terminal first: loading can take seconds."""
    from ..console import status
    from ..inference import open_predictor

    model = args.model if model is None else model
    status(f"loading {model} (runtime {args.runtime}) ...")
    return open_predictor(model, runtime=args.runtime, resize_mode=getattr(args, "resize", None), **model_kwargs(args))
