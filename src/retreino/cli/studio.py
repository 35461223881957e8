"""retreino studio [PROJECT_DIR]: a local web app to make classes, add images, train, evaluate, try and export."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "studio",
        help="a local web app over a data folder: classes, images, webcam, train, evaluate, try, export",
        description="Open a project folder (<class>/ sub-folders; created when missing) in a web page on this machine. "
                    "Runs go to PROJECT_DIR/.retreino/runs/; every job is the matching retreino command.",
    )
    p.add_argument("project", nargs="?", default=".", metavar="PROJECT_DIR", help="the data folder (default: .)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8100, help="port (default 8100; 0 picks a free one)")
    p.add_argument("--model", metavar="MODEL", help="the starting model the Train form proposes "
                   "(Teachable Machine export, .h5, .keras, model.json, or a backbone name)")
    p.add_argument("--max-file-mb", type=float, default=10.0, metavar="MB", help="largest accepted image (default 10)")
    p.add_argument("--max-model-mb", type=float, default=200.0, metavar="MB",
                   help="largest accepted file of a starting model dropped on the page (default 200)")
    p.add_argument("--access-log", action="store_true", help="one log line per request")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..config import validate_serve
    from ..errors import RetreinoError

    validate_serve({"port": args.port, "max_file_mb": args.max_file_mb}, names={"port": "--port", "max_file_mb": "--max-file-mb"})
    if not args.max_model_mb > 0:
        raise RetreinoError(f"--max-model-mb must be above 0, got {args.max_model_mb}")
    project = Path(args.project).expanduser()
    if project.exists() and not project.is_dir():
        raise RetreinoError(f"{project}: not a folder (PROJECT_DIR is a folder of <class>/ sub-folders)")
    try:
        from ..studio import StudioSettings, studio
    except ModuleNotFoundError as exc:
        raise RetreinoError(f"the studio needs the serve extra ({exc.name} is missing): pip install 'retreino[serve]'") from exc
    studio(str(project), host=args.host, port=args.port,
           settings=StudioSettings(model=args.model, max_file_mb=args.max_file_mb, max_model_mb=args.max_model_mb), access_log=args.access_log)
    return 0
