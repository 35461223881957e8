"""The studio's FastAPI application: the page, the project API, jobs and their event stream.

    GET    /                                  the page (static files only, nothing from elsewhere)
    GET    /api/project                       folder, classes with counts, defaults, formats
    POST   /api/classes {name}                create a class; PATCH /api/classes/{c} {name} renames it
    DELETE /api/classes/{c}                   delete (moved to .retreino/trash/)
    POST   /api/classes/merge {sources, into} merge classes
    GET    /api/classes/{c}/images?offset=&limit=   one page of image names (the grid asks for what it shows)
    POST   /api/classes/{c}/images            multipart images (serve's upload limits and checks)
    GET    /api/classes/{c}/images/{name}/thumb     cached thumbnail; DELETE /api/classes/{c}/images/{name}
    GET    /api/models                        starting models dropped on the page (studio/models.py)
    POST   /api/models?name=                  multipart model files: kept once `retreino inspect` opens them
    DELETE /api/models/{name}                 remove a dropped model's folder (never a backbone or --model)
    GET    /api/runs                          every run of the project, with history and status
    POST   /api/train {model, epochs, ...}    `retreino train` job; POST /api/runs/{r}/resume, /evaluate, /export
    POST   /api/jobs/stop                     stop the running job (training keeps every finished epoch)
    GET    /api/events                        server-sent events: the job and its run, twice a second while it changes
    GET    /api/runs/{r}/evaluation           metrics, plots and the misclassified images of the last evaluate
    GET    /api/runs/{r}/gradcam/{c}/{name}   the Grad-CAM overlay of a project image (the run's Keras model), cached
    POST   /api/runs/{r}/label-issues         `retreino check-data PROJECT --model RUN` job; GET: its suspects
    POST   /api/runs/{r}/try                  classify uploaded images with the run's model (serve's predictor)
    GET    /api/runs/{r}/exports/{fmt}.zip    download an export folder

Errors are JSON `{"error": CODE, "detail": MESSAGE}` with a 4xx status, as in `retreino serve`.
"""
from __future__ import annotations

import asyncio
import io
import json
import re
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles

from .. import __version__
from ..atomic import read_json, write_json
from ..config import TrainConfig
from ..errors import DataError, RetreinoError
from ..runs import RunDir, folder_name, read_csv_rows
from ..serve.app import decode_error, install_json_errors, install_page
from ..serve.uploads import UploadError, check_request_pixels, read_uploads
from .jobs import JobRunner, describe_run, list_runs
from .models import add_model, list_models, remove_model, remove_stale_uploads
from .project import Project, ProjectError, check_name

STATIC = Path(__file__).parent / "static"
# As `retreino serve`'s page, plus the camera: a MediaStream shown in <video> and frames drawn to blobs.
PAGE_CSP = ("default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob: mediastream:; style-src 'self'; "
            "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'")
# Same as `retreino export`'s choices (cli/export.FORMATS), kept import-free of TensorFlow.
FORMATS = ("keras", "h5", "tm", "savedmodel", "tflite", "tflite-int8", "onnx", "tfjs")
# Run files the page may fetch: the plots and reports `retreino train` and `evaluate` write.
RUN_FILES = {"learning_curves.png", "confusion_matrix.png", "misclassified.png", "predictions_scatter.png",
             "reliability.png", "metrics.json", "classification_report.txt", "predictions.csv", "report.html"}
EVENT_TICK_S = 0.5
MISCLASSIFIED_SHOWN = 200
LABEL_ISSUES_SHOWN = 200


@dataclass
class StudioSettings:
    """The studio's knobs; `model` is the starting model the Train form proposes."""

    model: str | None = None
    max_file_mb: float = 10.0
    max_files: int = 16  # per upload request: the page sends bigger drops in several requests
    max_model_mb: float = 200.0  # a dropped starting model, per file (a fine-tuned MobileNetV2 .keras is ~30 MB)
    # The Train form proposes `retreino train`'s own defaults (one defaults file: config.TrainConfig).
    default_epochs: int = TrainConfig.epochs
    default_lr: float = TrainConfig.learning_rate
    default_unfreeze: int = TrainConfig.unfreeze
    default_batch_size: int = TrainConfig.batch_size

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_mb * 1_000_000)

    @property
    def max_model_bytes(self) -> int:
        return int(self.max_model_mb * 1_000_000)


def create_app(project: Project | str, settings: StudioSettings | None = None) -> FastAPI:
    project = project if isinstance(project, Project) else Project(project)
    settings = settings or StudioSettings()
    runner = JobRunner(project.runs_dir, project.jobs_dir)
    remove_stale_uploads(project.models_dir)
    io_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="studio-io")  # decoding, thumbnails
    model_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="studio-model")  # Try: one model at a time
    predictors: dict[tuple[str, str], tuple[float, object]] = {}  # (run, runtime) -> (best model mtime, Predictor)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        runner.shutdown()
        io_pool.shutdown(wait=False, cancel_futures=True)
        model_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title=f"retreino studio: {project.root.name}", version=__version__, docs_url=None, redoc_url=None,
                  lifespan=lifespan)
    app.state.project, app.state.runner = project, runner
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    async def in_pool(fn, *args, pool=io_pool):
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    # ---- errors: serve's JSON shape --------------------------------------------------------
    @app.exception_handler(UploadError)
    async def _upload_error(request: Request, exc: UploadError):
        return JSONResponse({"error": exc.code, "detail": exc.message}, status_code=exc.status)

    @app.exception_handler(ProjectError)
    async def _project_error(request: Request, exc: ProjectError):
        return JSONResponse({"error": exc.code, "detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(RetreinoError)
    async def _retreino_error(request: Request, exc: RetreinoError):  # a bad setting, a model that cannot load
        return JSONResponse({"error": "refused", "detail": str(exc)}, status_code=400)

    install_json_errors(app)  # the same error shape as `retreino serve`

    async def body(request: Request) -> dict:
        try:
            data = await request.json()
        except ValueError:
            raise ProjectError("the request body must be a JSON object") from None
        if not isinstance(data, dict):
            raise ProjectError("the request body must be a JSON object")
        return data

    def run_dir(name: str) -> RunDir:
        run = RunDir(project.runs_dir / check_name(name, "run name"))
        if not run.is_run:
            raise ProjectError(f"no run {name!r}", 404, "no_such_run")
        return run

    install_page(app, STATIC, PAGE_CSP)

    # ---- project and classes -------------------------------------------------------------------
    @app.get("/api/project")
    async def get_project():
        from ..models.backbones import BACKBONES

        return {
            "name": project.root.name, "root": str(project.root), "classes": project.classes(),
            "defaults": {"model": settings.model, "epochs": settings.default_epochs, "learning_rate": settings.default_lr,
                         "unfreeze": settings.default_unfreeze, "batch_size": settings.default_batch_size},
            "backbones": sorted(BACKBONES), "formats": list(FORMATS), "models": list_models(project.models_dir),
            "limits": {"max_file_mb": settings.max_file_mb, "max_files": settings.max_files,
                       "max_model_mb": settings.max_model_mb},
            "version": __version__,
        }

    @app.get("/api/classes")
    async def get_classes():
        return project.classes()

    @app.post("/api/classes", status_code=201)
    async def create_class(request: Request):
        return {"name": project.create_class((await body(request)).get("name", ""))}

    @app.post("/api/classes/merge")
    async def merge_classes(request: Request):
        data = await body(request)
        sources = data.get("sources") or []
        if not isinstance(sources, list):
            raise ProjectError("sources must be a list of class names")
        moved = project.merge_classes([str(s) for s in sources], str(data.get("into", "")))
        return {"moved": moved, "classes": project.classes()}

    @app.patch("/api/classes/{cls}")
    async def rename_class(cls: str, request: Request):
        return {"name": project.rename_class(cls, (await body(request)).get("name", ""))}

    @app.delete("/api/classes/{cls}")
    async def delete_class(cls: str):
        return {"deleted": cls, "moved_to": project.delete_class(cls)}

    @app.get("/api/classes/{cls}/images")
    async def list_images(cls: str, offset: int = 0, limit: int = 200):
        page = await in_pool(project.images, cls, offset, limit)
        return {"class": cls, "total": page.total, "offset": page.offset, "names": page.names}

    @app.post("/api/classes/{cls}/images")
    async def add_images(cls: str, request: Request):
        project.class_dir(cls)  # 404 before reading a byte of the body
        uploads = await read_uploads(request, settings.max_file_bytes, settings.max_files)
        check_request_pixels(uploads)  # before any decode, as serve does
        checked = await asyncio.gather(*(in_pool(_check_image, u.data) for u in uploads), return_exceptions=True)
        added, refused = [], []
        for upload, result in zip(uploads, checked):
            if isinstance(result, DataError):
                err = decode_error(upload.filename, result)
                refused.append({"filename": upload.filename, "error": err.code, "detail": err.message})
            elif isinstance(result, BaseException):
                raise result
            else:
                try:
                    added.append(project.add_image(cls, upload.filename, upload.data))
                except ProjectError as exc:
                    refused.append({"filename": upload.filename, "error": exc.code, "detail": str(exc)})
        status = 200 if added or not refused else 415 if all(r["error"] == "not_an_image" for r in refused) else 422
        return JSONResponse({"class": cls, "added": added, "refused": refused,
                             "count": len(project.image_names(cls))}, status_code=status)

    @app.get("/api/classes/{cls}/images/{name}/thumb")
    async def thumbnail(cls: str, name: str):
        path = await in_pool(project.thumbnail, cls, name)
        return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/classes/{cls}/images/{name}")
    async def original(cls: str, name: str):
        return FileResponse(project.image_path(cls, name), headers={"Content-Security-Policy": "default-src 'none'"})

    @app.delete("/api/classes/{cls}/images/{name}")
    async def delete_image(cls: str, name: str):
        project.delete_image(cls, name)
        return {"deleted": name, "count": len(project.image_names(cls))}

    @app.post("/api/check")
    async def check_data():
        """`retreino check-data PROJECT` (the same function), with each problem tied to the images it concerns."""
        return await in_pool(_check_data, project)

    @app.get("/api/check")
    async def last_check():
        return read_json(project.hidden / "check.json", default={"problems": [], "verdict": None})

    # ---- starting models dropped on the page --------------------------------------------------------
    @app.get("/api/models")
    async def get_models():
        return {"models": list_models(project.models_dir)}

    @app.post("/api/models", status_code=201)
    async def upload_model(request: Request, name: str | None = None):
        uploads = await read_uploads(request, settings.max_model_bytes, settings.max_files)
        files: dict[str, bytes] = {}
        for u in uploads:
            if u.filename in files:
                raise ProjectError(f"{u.filename} was sent twice")
            files[u.filename] = u.data
        # A child process opens it (seconds: it imports TensorFlow); the pool keeps the event loop free meanwhile.
        return {"model": await in_pool(add_model, project.models_dir, files, name)}

    @app.delete("/api/models/{name}")
    async def delete_model(name: str):
        job = runner.current
        folder = project.models_dir / check_name(name, "model name")
        if job is not None and any(folder in (Path(a), *Path(a).parents) for a in job.argv):
            raise ProjectError(f"the running {job.kind} job uses model {name}: stop it or wait for it to finish", 409, "busy")
        remove_model(project.models_dir, name)
        return {"deleted": name, "models": list_models(project.models_dir)}

    # ---- runs and jobs ---------------------------------------------------------------------------
    @app.get("/api/runs")
    async def get_runs():
        return {"runs": list_runs(project.runs_dir, runner.running_run()), "job": _job(runner)}

    @app.post("/api/train", status_code=202)
    async def start_train(request: Request):
        data = await body(request)
        args, name = train_args(project, data, settings)
        job = runner.start("train", name, args)
        return {"job": job.to_dict()}

    @app.post("/api/runs/{name}/resume", status_code=202)
    async def resume(name: str):
        run = run_dir(name)
        state = run.read_state()
        if state is not None and state.finished:
            raise ProjectError(f"run {name} has finished: nothing to resume", 409, "finished")
        return {"job": runner.start("resume", run.path.name, ["train", "--resume", str(run.path)]).to_dict()}

    @app.post("/api/runs/{name}/evaluate", status_code=202)
    async def evaluate(name: str):
        run = run_dir(name)
        if not run.best_keras.is_file():
            raise ProjectError(f"run {name} has no model yet: train it first", 409, "no_model")
        return {"job": runner.start("evaluate", run.path.name, ["evaluate", "--run", str(run.path)]).to_dict()}

    @app.post("/api/runs/{name}/export", status_code=202)
    async def export(name: str, request: Request):
        run = run_dir(name)
        fmt = str((await body(request)).get("format", "")).lower()
        if fmt not in FORMATS:
            raise ProjectError(f"unknown export format {fmt!r}: use {' | '.join(FORMATS)}")
        if not run.best_keras.is_file():
            raise ProjectError(f"run {name} has no model yet: train it first", 409, "no_model")
        # With its batch-1 timing: runtime "auto" (Try, serve, predict) picks only an export measured faster than Keras.
        args = ["export", str(run.path), "--format", fmt, "--parity-images", "20"]
        return {"job": runner.start("export", run.path.name, args, format=fmt).to_dict()}

    @app.post("/api/jobs/stop")
    async def stop_job():
        return {"job": runner.stop().to_dict()}

    @app.get("/api/jobs/{job_id}/log")
    async def job_log(job_id: str):
        job = next((j for j in runner.jobs if j.id == job_id), None)
        if job is None:
            raise ProjectError(f"no job {job_id!r}", 404, "no_job")
        return Response(job.log_tail(), media_type="text/plain; charset=utf-8")

    @app.get("/api/events")
    async def events(request: Request):
        """Server-sent events: `update` ({job, run, log}) whenever the job or its run changes."""

        async def stream():
            last, beat = None, time.monotonic()
            while not await request.is_disconnected():
                runner.reap()
                snapshot = _snapshot(project, runner)
                text = json.dumps(snapshot, sort_keys=True, default=str)
                if text != last:
                    last, beat = text, time.monotonic()
                    yield f"event: update\ndata: {text}\n\n"
                elif time.monotonic() - beat > 15:  # a comment line keeps proxies and browsers from timing out
                    beat = time.monotonic()
                    yield ": keep-alive\n\n"
                await asyncio.sleep(EVENT_TICK_S)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/api/runs/{name}/files/{filename}")
    async def run_file(name: str, filename: str):
        run = run_dir(name)
        if filename not in RUN_FILES or not run.file(filename).is_file():
            raise ProjectError(f"run {name} has no {filename}", 404, "no_such_file")
        return FileResponse(run.file(filename), headers={"Cache-Control": "no-cache"})

    @app.get("/api/runs/{name}/evaluation")
    async def evaluation(name: str):
        run = run_dir(name)
        if not run.file("metrics.json").is_file():
            raise ProjectError(f"run {name} has not been evaluated yet", 404, "not_evaluated")
        return await in_pool(_evaluation, project, run)

    @app.get("/api/runs/{name}/gradcam/{cls}/{image}")
    async def gradcam(name: str, cls: str, image: str):
        run = run_dir(name)
        if not run.best_keras.is_file():
            raise ProjectError(f"run {name} has no model yet: train it first", 409, "no_model")
        path = await in_pool(_gradcam, project, run, cls, image, predictors, pool=model_pool)
        return FileResponse(path, media_type="image/png", headers={"Cache-Control": "no-cache"})

    @app.post("/api/runs/{name}/label-issues", status_code=202)
    async def find_label_issues(name: str):
        run = run_dir(name)
        if not run.best_keras.is_file():
            raise ProjectError(f"run {name} has no model yet: train it first", 409, "no_model")
        counts = [c["count"] for c in project.classes() if c["count"]]
        if len(counts) < 2:
            raise ProjectError("finding wrong labels needs at least two classes with images", 409, "too_few_classes")
        out = run.path / "label_issues"
        out.mkdir(exist_ok=True)
        # The out-of-fold head needs every class in every fold: a tiny class lowers the folds, never below 2.
        folds = max(2, min(5, min(counts)))
        args = ["check-data", str(project.root), "--model", str(run.path), "--out", str(out), "--folds", str(folds)]
        return {"job": runner.start("label-issues", run.path.name, args).to_dict()}

    @app.get("/api/runs/{name}/label-issues")
    async def label_issues(name: str):
        return await in_pool(_label_issues, project, run_dir(name))

    @app.post("/api/runs/{name}/try")
    async def try_images(name: str, request: Request):
        run = run_dir(name)
        if not run.best_keras.is_file():
            raise ProjectError(f"run {name} has no model yet: train it first", 409, "no_model")
        uploads = await read_uploads(request, settings.max_file_bytes, settings.max_files)
        check_request_pixels(uploads)
        predictor = await in_pool(_predictor, run, predictors, "auto", pool=model_pool)
        out = []
        for u in uploads:
            out.append(await in_pool(_predict_one, predictor, u.filename, u.data, pool=model_pool))
        return {"run": run.path.name, "runtime": str(getattr(predictor, "runtime", "keras")), "predictions": out}

    @app.get("/api/runs/{name}/exports")
    async def exports(name: str):
        return {"exports": _exports(run_dir(name))}

    @app.get("/api/runs/{name}/exports/{fmt}.zip")
    async def download(name: str, fmt: str):
        run = run_dir(name)
        folder = run.path / "exports" / check_name(fmt, "format")
        if fmt not in FORMATS or not folder.is_dir():
            raise ProjectError(f"run {name} has no {fmt} export", 404, "no_such_export")
        data = await in_pool(_zip_folder, folder)
        return Response(data, media_type="application/zip",
                        headers={"Content-Disposition": f'attachment; filename="{folder_name(name)}-{fmt}.zip"'})

    return app


# ---- helpers (plain functions: the endpoints above stay a table of what the API does) -----------


def _check_data(project: Project) -> dict:
    """check-data's report, each problem with the `class/name` keys of the images it concerns (for the grid)."""
    from ..data.check import check_dataset

    if len([c for c in project.classes() if c["count"]]) < 1:
        raise ProjectError("no images to check yet", 409, "empty")
    report = check_dataset(str(project.root)).to_dict()
    problems = []
    for p in report["problems"]:
        images = []
        for rel in [p.get("path")] + list(p.get("others") or []):
            parts = Path(rel).parts if rel else ()
            if len(parts) == 2:  # <class>/<file>
                images.append("/".join(parts))
        problems.append({"kind": p["kind"], "message": p["message"], "fatal": p.get("fatal", False), "images": images})
    out = {"verdict": report["verdict"], "ok": report["ok"], "problems": problems, "checked": time.time()}
    write_json(project.hidden / "check.json", out)
    return out


def _check_image(data: bytes) -> None:
    """Decode the whole image once, as training will (DataError if it cannot be: corrupt, bomb, not an image)."""
    from ..data.images import open_image

    open_image(data)


def train_args(project: Project, data: dict, settings: StudioSettings) -> tuple[list[str], str]:
    """`retreino train` arguments for the form's values, checked here so a bad value never starts a job."""
    from ..models.backbones import BACKBONES

    model = str(data.get("model") or settings.model or "").strip()
    if not model:
        raise ProjectError("choose a starting model: a Teachable Machine export, an .h5/.keras/model.json file or a backbone name")
    if model not in BACKBONES and not Path(model).expanduser().exists():
        raise ProjectError(f"starting model {model!r}: no such file or folder, and not a backbone name "
                           f"({', '.join(sorted(BACKBONES))})")
    classes = [c for c in project.classes() if c["count"] > 0]
    if len(classes) < 2:
        raise ProjectError("training needs at least two classes with images", 409, "too_few_classes")
    fields = {"epochs": ("--epochs", int), "learning_rate": ("--lr", float), "unfreeze": ("--unfreeze", int),
              "batch_size": ("--batch-size", int), "patience": ("--patience", int)}
    values = {}
    for key, (flag, typ) in fields.items():
        if data.get(key) in (None, ""):
            continue
        try:
            values[key] = typ(data[key])
        except (TypeError, ValueError):
            raise ProjectError(f"{key} must be a number, got {data[key]!r}") from None
    fieldnames = {"patience": "early_stopping_patience"}  # the form's name -> TrainConfig's
    # TrainConfig checks every value (a SettingError, a RetreinoError, for a bad one) before a job starts.
    TrainConfig(model=model, data=str(project.root), **{fieldnames.get(k, k): v for k, v in values.items()})
    name = folder_name(str(data.get("name") or time.strftime("run-%Y%m%d-%H%M%S")))
    base, n = name, 1
    while (project.runs_dir / name).exists():
        n += 1
        name = f"{base}-{n}"
    args = ["train", "--model", str(Path(model).expanduser()) if model not in BACKBONES else model,
            "--data", str(project.root), "--runs-dir", str(project.runs_dir), "--name", name]
    for key, (flag, _) in fields.items():
        if key in values:
            args += [flag, str(values[key])]
    return args, name


def _job(runner: JobRunner) -> dict | None:
    runner.poll()
    return runner.jobs[-1].to_dict() if runner.jobs else None


def _snapshot(project: Project, runner: JobRunner) -> dict:
    job = runner.jobs[-1] if runner.jobs else None
    runner.poll()
    run = None
    if job is not None and (project.runs_dir / job.run).is_dir() and RunDir(project.runs_dir / job.run).is_run:
        try:
            run = describe_run(RunDir(project.runs_dir / job.run), running=job.running)
        except RetreinoError:  # a file caught mid-replace on a platform without atomic rename: next tick
            run = None
    log = _without_warnings(job.log_tail(8192).splitlines())[-12:] if job is not None else []
    return {"job": job.to_dict() if job else None, "run": run, "log": log}


def _without_warnings(lines: list[str]) -> list[str]:
    """The job's own lines: Python warnings (a path, "SomethingWarning: ...", then "  warnings.warn(") are noise on the page."""
    return [ln for ln in lines if not re.search(r"\w+Warning: |^\s+warnings\.warn\(|^\s*warnings\.warn\(msg\)", ln)]


def _project_image(project: Project, path: str) -> tuple[str, str] | None:
    """(class, name) of a path inside the project's `<class>/<file>` layout (a thumbnail the page can show), else None."""
    try:
        rel = (project.root / path).resolve().relative_to(project.root)
    except (ValueError, OSError):
        return None
    return (rel.parts[0], rel.parts[1]) if len(rel.parts) == 2 else None


def _evaluation(project: Project, run: RunDir) -> dict:
    metrics = run.read_json("metrics.json")
    wrong, right = [], []
    for row in read_csv_rows(run.file("predictions.csv")):
        where = None if row.get("error") else _project_image(project, row["path"])
        if where is None:
            continue
        item = {"class": where[0], "name": where[1], "true": row["true"], "predicted": row["predicted"],
                "confidence": float(row.get("confidence") or 0)}
        (right if row.get("true") == row.get("predicted") else wrong).append(item)
    wrong.sort(key=lambda w: -w["confidence"])  # the most confident mistakes first: likeliest label errors
    right.sort(key=lambda w: w["confidence"])  # the least sure right answers first: the nearest to a mistake
    files = [f for f in ("confusion_matrix.png", "misclassified.png", "reliability.png", "predictions_scatter.png",
                         "learning_curves.png") if run.file(f).is_file()]
    keep = ("n", "accuracy", "loss", "roc_auc", "per_class", "confusion_matrix", "class_names", "calibration")
    return {"run": run.path.name, "metrics": {k: metrics[k] for k in keep if k in metrics}, "files": files,
            "misclassified": wrong[:MISCLASSIFIED_SHOWN], "misclassified_total": len(wrong),
            "correct": right[:MISCLASSIFIED_SHOWN], "correct_total": len(right)}


def _predictor(run: RunDir, cache: dict, runtime: str = "auto"):
    """serve's Predictor for the run's best model, loaded once per model file and runtime (in the model thread).

    Try asks for runtime auto (an export once one passed its parity check), Grad-CAM for keras (gradients)."""
    from ..inference import open_predictor

    stamp = run.best_keras.stat().st_mtime
    key = (run.path.name, runtime)
    hit = cache.get(key)
    if hit is None or hit[0] != stamp:
        for other in [k for k in cache if k[0] != run.path.name or k == key]:
            del cache[other]  # one run's models in memory at a time
        cache[key] = (stamp, open_predictor(str(run.path), runtime=runtime))
    return cache[key][1]


def _gradcam(project: Project, run: RunDir, cls: str, name: str, cache: dict) -> Path:
    """The Grad-CAM overlay of the predicted class over a project image, as `predict --explain` draws it.

    Cached under RUN/gradcam/<class>/; remade when the image or the run's model is newer."""
    from ..gradcam import explain_pixels
    from ..prediction import read_image_or_error

    image = project.image_path(cls, name)
    target = run.path / "gradcam" / cls / f"{name}.png"
    newest = max(run.best_keras.stat().st_mtime_ns, image.stat().st_mtime_ns)
    if target.is_file() and target.stat().st_mtime_ns >= newest:
        return target
    predictor = _predictor(run, cache, "keras")
    pixels, error = read_image_or_error(image, predictor.info.input_size, predictor.resize_mode, predictor.interpolation)
    if pixels is None:
        raise ProjectError(f"{name}: {error}", 422, "corrupt_image")
    explained = explain_pixels(predictor.loaded, pixels[None], resize_mode=predictor.resize_mode)[0]
    target.parent.mkdir(parents=True, exist_ok=True)
    return explained.save(target, image=image)


def _label_issues(project: Project, run: RunDir) -> dict:
    """check-data --model's label_issues.csv for the run, each suspect tied to its project image."""
    csv_path = run.path / "label_issues" / "label_issues.csv"
    if not csv_path.is_file():
        raise ProjectError(f"run {run.path.name} has no label check yet", 404, "not_computed")
    issues = []
    for row in read_csv_rows(csv_path):
        where = _project_image(project, row.get("path") or "")
        if where is not None:
            issues.append({"class": where[0], "name": where[1], "given": row.get("given"), "likely": row.get("likely"),
                           "confidence": float(row.get("confidence") or 0), "rank": int(row.get("rank") or 0)})
    return {"run": run.path.name, "issues": issues[:LABEL_ISSUES_SHOWN], "total": len(issues),
            "computed": csv_path.stat().st_mtime}


def _predict_one(predictor, filename: str, data: bytes) -> dict:
    from ..serve.answers import answer, batch_function, decode_upload

    try:
        pixels = decode_upload(predictor, data, predictor.resize_mode)
    except DataError as exc:
        err = decode_error(filename, exc)
        return {"filename": filename, "error": err.code, "detail": err.message}
    row = batch_function(predictor)(pixels[None])[0]
    return answer(filename, row, list(predictor.class_names), predictor, True)


def _exports(run: RunDir) -> list[dict]:
    out = []
    root = run.path / "exports"
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if not folder.is_dir() or folder.name not in FORMATS:
            continue
        record = {}
        if (folder / "retreino.json").is_file():
            try:
                record = json.loads((folder / "retreino.json").read_text())
            except ValueError:
                record = {}
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        size = sum((folder / f).stat().st_size for f in files)
        parity = (record.get("export") or {}).get("parity") or {}
        out.append({"format": folder.name, "files": files, "bytes": size, "parity": parity, "passed": parity.get("passed"),
                    "latency_ms": (record.get("export") or {}).get("latency_ms"),
                    "keras_latency_ms": (record.get("export") or {}).get("keras_latency_ms")})
    return out


def _zip_folder(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.is_symlink():
                zf.write(path, Path(folder.name) / path.relative_to(folder))
    return buf.getvalue()
