"""retreino serve MODEL: a web page and REST API for predictions."""
from __future__ import annotations

from .common import MODEL_HELP, add_model_args, add_runtime_arg, model_kwargs


def register(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a model: a web page to drop images on and a REST API (POST /predict)",
        description="Serve a model over HTTP: a page at / for people, POST /predict for scripts, OpenAPI docs at /docs.",
    )
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 for the network)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    add_runtime_arg(p)
    p.add_argument("--names", metavar="MAP", help="display names: cats=Gato,dogs=Cachorro (or Gato,Cachorro in class order)")
    p.add_argument("--resize", choices=("stretch", "crop", "pad"),
                   help="how images are fitted to the model's input (default: the model's, as in training; else stretch)")
    p.add_argument("--unknown", default="on", choices=("on", "off"),
                   help="answer 'unknown' for images unlike the training data (default on, when the model has a detector)")
    p.add_argument("--in-browser", action="store_true",
                   help="serve a static page that runs the model in the browser (TF.js; no upload, no server-side model)")
    g = p.add_argument_group("limits and batching")
    g.add_argument("--max-file-mb", type=float, default=10.0, metavar="MB", help="largest accepted file (default 10)")
    g.add_argument("--max-files", type=int, default=16, metavar="N", help="most files in one request (default 16)")
    g.add_argument("--max-batch", type=int, default=32, metavar="N", help="most images in one model call (default 32)")
    g.add_argument("--batch-wait-ms", type=float, default=5.0, metavar="MS", help="how long a lone request waits for company (default 5)")
    g.add_argument("--no-batching", action="store_true", help="one model call per image (same as --max-batch 1)")
    g.add_argument("--quiet", action="store_true", help="no access log line per request")
    add_model_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..config import validate_serve
    from ..errors import RetreinoError

    flags = {"port": "--port", "max_file_mb": "--max-file-mb", "max_files": "--max-files", "max_batch": "--max-batch",
             "batch_wait_ms": "--batch-wait-ms", "resize_mode": "--resize"}
    validate_serve({field: getattr(args, flag[2:].replace("-", "_")) for field, flag in flags.items()
                    if field != "resize_mode"}, names=flags)  # before FastAPI and TensorFlow load
    try:
        from ..serve import ServeSettings, serve
    except ModuleNotFoundError as exc:  # fastapi/uvicorn are an extra
        raise RetreinoError(f"serving needs the serve extra ({exc.name} is missing): pip install 'retreino[serve]'") from exc

    if args.in_browser:  # serve/browser.py: a static tfjs export folder, nothing predicted here
        from ..serve.browser import serve_in_browser

        serve_in_browser(args.model, host=args.host, port=args.port, access_log=not args.quiet, **model_kwargs(args))
        return 0
    settings = ServeSettings(
        max_file_mb=args.max_file_mb,
        max_files=args.max_files,
        max_batch=1 if args.no_batching else args.max_batch,
        batch_wait_ms=args.batch_wait_ms,
        resize_mode=args.resize,
        unknown=args.unknown == "on",
    )
    serve(
        args.model,
        host=args.host,
        port=args.port,
        runtime=args.runtime,
        settings=settings,
        names=args.names,
        access_log=not args.quiet,
        **model_kwargs(args),
    )
    return 0
