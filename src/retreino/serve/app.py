"""The FastAPI application: a page for people, a small JSON API for scripts.

    GET  /          drop images, see each one's class, confidence and a bar per class
    POST /predict   multipart files (or one raw image body) -> class + probabilities per file
    GET  /health    liveness and micro-batching counters
    GET  /model     classes, input size, model file, runtime, limits
    GET  /docs      OpenAPI (Swagger UI, served locally when fastapi-offline is installed)

Every refusal is JSON `{"error": CODE, "detail": MESSAGE}` with a 4xx status, and nothing a
client sends can take the server down: decoding runs in a thread pool, the model in the
micro-batcher's thread, and every failure is turned into an answer.
"""
from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import DataError
from .answers import answer, batch_function, decode_upload
from .batcher import MicroBatcher
from .uploads import UploadError, check_request_pixels, read_uploads

STATIC = Path(__file__).parent / "static"

# The page may load nothing from elsewhere: this header makes the browser enforce it.
PAGE_CSP = "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'"


@dataclass
class ServeSettings:
    """Every knob of the service; the CLI flags map one to one."""

    max_file_mb: float = 10.0
    max_files: int = 16
    max_batch: int = 32  # 1 = no micro-batching
    batch_wait_ms: float = 5.0
    max_queue: int = 512  # images waiting for the model before new requests get 503
    decode_threads: int = max(2, min(8, os.cpu_count() or 2))
    resize_mode: str | None = None  # None: the model's own (ModelInfo.resize)
    unknown: bool = True  # answer "unknown" below the model's detector threshold (when it has one)

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_mb * 1_000_000)


# ---- response schemas (they make /docs say what comes back) -------------------------------


class Prediction(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    filename: str
    class_name: str = Field(alias="class", description="the most likely class")
    index: int = Field(description="its index in the model's class list")
    confidence: float = Field(description="its probability, 0 to 1")
    probabilities: dict[str, float] = Field(description="every class, in the model's order")
    unknown: bool | None = Field(None, description="true when the image is unlike the training data: class is 'unknown'")
    would_say: str | None = Field(None, description="with unknown: the class the model would have answered")
    unknown_score: float | None = Field(None, description="higher = more like the training images")
    unknown_threshold: float | None = Field(None, description="below this score the answer is 'unknown'")


class PredictResponse(BaseModel):
    model: str
    predictions: list[Prediction]
    time_ms: float = Field(description="server time for the whole request")


class ErrorBody(BaseModel):
    error: str = Field(description="stable code, e.g. file_too_large, not_an_image")
    detail: str = Field(description="what is wrong, for people")


class Limits(BaseModel):
    max_file_mb: float
    max_files: int
    max_queue: int


class Batching(BaseModel):
    max_batch: int = Field(description="1 means micro-batching is off")
    batch_wait_ms: float


class ModelResponse(BaseModel):
    name: str
    classes: list[str]
    input_size: list[int] = Field(description="[height, width] the images are resized to")
    model_file: str
    format: str
    preprocessing: str
    head: str
    runtime: str
    limits: Limits
    batching: Batching
    explain: bool = Field(False, description="POST /explain answers (Grad-CAM needs the Keras model)")


class BatchCounters(BaseModel):
    batches: int = Field(description="model calls so far")
    images: int = Field(description="images predicted so far")
    mean_batch_size: float
    largest_batch: int
    failed_batches: int
    model_busy_s: float = Field(description="seconds spent inside the model")


class HealthResponse(BaseModel):
    status: str
    version: str
    uptime_s: float
    requests: int
    batching: BatchCounters


_PREDICT_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                "required": ["files"],
            }
        },
        "image/*": {"schema": {"type": "string", "format": "binary"}},
    },
}

_ERRORS = {
    400: {"model": ErrorBody, "description": "no files, too many files, malformed multipart"},
    413: {"model": ErrorBody, "description": "file over the size limit, or too many pixels (decompression bomb)"},
    415: {"model": ErrorBody, "description": "not an image, or not a multipart/image request"},
    422: {"model": ErrorBody, "description": "an image that cannot be decoded (corrupt or truncated)"},
    501: {"model": ErrorBody, "description": "/explain on a server that runs an export alone (no gradients)"},
    503: {"model": ErrorBody, "description": "too many images waiting: retry shortly"},
}


def model_name(source: str) -> str:
    """A short display name: the folder for Teachable Machine exports (all named keras_model.h5)."""
    p = Path(source)
    folder = p if p.is_dir() else p.parent
    if folder.parent.name == "exports" and folder.parent.parent.name:  # runs/cats/exports/onnx -> "cats (onnx)"
        return f"{folder.parent.parent.name} ({folder.name})"
    if p.is_dir():
        return p.name
    if p.stem in ("keras_model", "model", "saved_model") and p.parent.name:
        return p.parent.name
    return p.stem or str(source)


def decode_error(filename: str, exc: DataError) -> UploadError:
    """Map the decoder's DataError to a status a client can act on."""
    from PIL import Image, UnidentifiedImageError

    message = str(exc)
    if message.startswith("image: "):  # read_image names byte sources "image"; we know the file name
        message = message[len("image: ") :]
    cause = exc.__cause__
    if isinstance(cause, (Image.DecompressionBombError, Image.DecompressionBombWarning)) or "decompression bomb" in message:
        return UploadError(413, "too_many_pixels", f"{filename}: {message}")
    if isinstance(cause, UnidentifiedImageError):
        # PIL's own text names a BytesIO object: useless to the person who sent the file.
        return UploadError(415, "not_an_image", f"{filename}: not an image (expected JPEG, PNG, GIF, BMP, WEBP or TIFF)")
    reason = str(cause).splitlines()[0] if cause is not None and str(cause) else message
    return UploadError(422, "corrupt_image", f"{filename}: the image cannot be decoded, it is corrupt or truncated ({reason})")


def install_json_errors(app: FastAPI) -> None:
    """Every error a client can meet answers as `{"error": code, "detail": text}`, never an HTML page or a trace.

    Shared by `retreino serve` and `retreino studio`, so both APIs speak the same error shape.
    """

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"error": code, "detail": str(exc.detail)}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return JSONResponse({"error": "invalid_request", "detail": str(exc.errors())}, status_code=422)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception):
        return JSONResponse({"error": "internal_error", "detail": f"{type(exc).__name__}: {exc}"}, status_code=500)


def install_page(app: FastAPI, static: Path, csp: str) -> None:
    """`/` (the page, under its Content-Security-Policy, never cached stale) and `/favicon.ico` from `static`.

    Shared by `retreino serve` and `retreino studio`: each page is one index.html with its own CSP.
    """

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(static / "index.html", headers={"Content-Security-Policy": csp, "Cache-Control": "no-cache"})

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():
        return FileResponse(static / "favicon.svg", media_type="image/svg+xml")


def create_app(predictor, settings: ServeSettings | None = None, model_file: str | None = None, class_names: list[str] | None = None) -> FastAPI:
    """The service for one `retreino.inference.Predictor`; `class_names` are display names in class order."""
    settings = settings or ServeSettings()
    info = predictor.info
    classes = list(class_names or predictor.class_names)
    name = model_name(model_file or info.source)
    batcher = MicroBatcher(batch_function(predictor), max_batch=settings.max_batch, max_wait_ms=settings.batch_wait_ms)
    decoder = ThreadPoolExecutor(max_workers=settings.decode_threads, thread_name_prefix="retreino-decode")
    counters = {"requests": 0, "started": time.time()}
    # Grad-CAM needs the Keras model's gradients: one image at a time, on its own thread, beside the batcher.
    can_explain = getattr(getattr(predictor, "loaded", None), "model", None) is not None
    explainer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="retreino-gradcam")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        yield
        await batcher.close()
        decoder.shutdown(wait=False, cancel_futures=True)
        explainer.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title=f"retreino: {name}",
        version=__version__,
        description=f"Image classifier **{name}**: {', '.join(classes)}. Upload images to `POST /predict`.",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    app.state.settings = settings
    _mount_docs(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # ---- errors: one JSON shape for all of them ------------------------------------------

    @app.exception_handler(UploadError)
    async def _upload_error(request: Request, exc: UploadError):
        return JSONResponse({"error": exc.code, "detail": exc.message}, status_code=exc.status)

    install_json_errors(app)

    install_page(app, STATIC, PAGE_CSP)

    # ---- the API -------------------------------------------------------------------------

    @app.get("/health", response_model=HealthResponse, summary="Liveness and batching counters")
    async def health():
        return {
            "status": "ok",
            "version": __version__,
            "uptime_s": round(time.time() - counters["started"], 1),
            "requests": counters["requests"],
            "batching": batcher.stats.to_dict(),
        }

    @app.get("/model", response_model=ModelResponse, summary="What the model is and expects")
    async def model():
        return {
            "name": name,
            "classes": classes,
            "input_size": list(info.input_size),
            "model_file": str(model_file or info.source),
            "format": info.format,
            "preprocessing": info.value_range,
            "head": info.head,
            "runtime": str(getattr(predictor, "runtime", "keras")),
            "limits": {"max_file_mb": settings.max_file_mb, "max_files": settings.max_files, "max_queue": settings.max_queue},
            "batching": {"max_batch": settings.max_batch, "batch_wait_ms": settings.batch_wait_ms},
            "explain": can_explain,
        }

    async def decode_uploads(uploads) -> list[np.ndarray]:
        """Decode every upload on the decoder threads, in parallel; the first unreadable one refuses the request."""
        loop = asyncio.get_running_loop()
        decoded = await asyncio.gather(
            *(loop.run_in_executor(decoder, decode_upload, predictor, u.data, predictor.resize_mode) for u in uploads),
            return_exceptions=True,
        )
        for upload, result in zip(uploads, decoded):
            if isinstance(result, DataError):
                raise decode_error(upload.filename, result)
            if isinstance(result, BaseException):
                raise result
        return decoded

    @app.post(
        "/predict",
        response_model=PredictResponse,
        responses=_ERRORS,
        summary="Classify one or more images",
        description=(
            "Send images as multipart form files (any field name; `files` in the form below), "
            "e.g. `curl -F files=@cat.jpg -F files=@dog.png URL/predict`, or one image as the raw body."
        ),
        openapi_extra={"requestBody": _PREDICT_BODY},
    )
    async def predict(request: Request):
        start = time.perf_counter()
        counters["requests"] += 1
        uploads = await read_uploads(request, settings.max_file_bytes, settings.max_files)
        check_request_pixels(uploads)  # before any decode: pixels cost CPU (see retreino.safety docs)
        if batcher.pending + len(uploads) > settings.max_queue:
            raise UploadError(503, "busy", f"{batcher.pending} images are waiting for the model: retry in a moment")
        decoded = await decode_uploads(uploads)
        names = [u.filename for u in uploads]
        del uploads  # drop the raw bytes while waiting for the model: under load this adds up
        probs = await asyncio.gather(*(batcher.submit(px) for px in decoded))
        return {
            "model": name,
            "predictions": [answer(fn, p, classes, predictor, settings.unknown) for fn, p in zip(names, probs)],
            "time_ms": round((time.perf_counter() - start) * 1000, 2),
        }

    @app.post(
        "/explain",
        responses=_ERRORS,
        summary="Where the model looked: a Grad-CAM overlay per image",
        description=(
            "Same uploads as `/predict`. Each answer holds the class explained (the predicted one), its "
            "probability, the layer, and `overlay`: a `data:image/png;base64,...` picture of the heatmap over "
            "the image as the model saw it (after its resize contract). 501 for a model without Keras weights."
        ),
        openapi_extra={"requestBody": _PREDICT_BODY},
    )
    async def explain(request: Request):
        start = time.perf_counter()
        counters["requests"] += 1
        if not can_explain:
            raise UploadError(501, "not_available", "Grad-CAM needs the Keras model; this server runs an export alone")
        uploads = await read_uploads(request, settings.max_file_bytes, settings.max_files)
        check_request_pixels(uploads)
        loop = asyncio.get_running_loop()
        answers = []
        for u, pixels in zip(uploads, await decode_uploads(uploads)):
            e = await loop.run_in_executor(explainer, _explain_one, predictor, pixels)
            answers.append({"file": u.filename, "class": classes[e.class_index] if e.class_index < len(classes)
                            else e.class_name, "probability": e.probability, "layer": e.layer,
                            "overlay": e.data_url()})
        return {"model": name, "explanations": answers, "time_ms": round((time.perf_counter() - start) * 1000, 2)}

    return app


def _explain_one(predictor, pixels: np.ndarray):
    from ..gradcam import explain_pixels

    return explain_pixels(predictor.loaded, pixels[None], resize_mode=predictor.resize_mode)[0]


def _mount_docs(app: FastAPI) -> None:
    """Swagger UI at /docs from local files (fastapi-offline ships them), else FastAPI's CDN default."""
    from fastapi.openapi.docs import get_swagger_ui_html

    try:
        import fastapi_offline
    except ImportError:
        assets, base = None, None
    else:
        assets = Path(fastapi_offline.__file__).parent / "static"
        base = "/docs-assets"
        app.mount(base, StaticFiles(directory=assets), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs():
        if assets is None:
            return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} - API")
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title=f"{app.title} - API",
            swagger_js_url=f"{base}/swagger-ui-bundle.js",
            swagger_css_url=f"{base}/swagger-ui.css",
            swagger_favicon_url="/static/favicon.svg",
        )
