"""`retreino serve MODEL --in-browser`: a static page whose model runs in the visitor's browser.

Nothing is predicted on the server and no photo is uploaded: the server only hands out the files
of a tfjs export folder (model.json, weights.bin, metadata.json, the page and its two scripts), and
Teachable Machine's own library (`@teachablemachine/image` on `@tensorflow/tfjs`) classifies each
photo on the device. The same folder works from any static host (`python -m http.server`, GitHub
Pages ...); this command is a convenience with a strict Content-Security-Policy on top.

MODEL can be
- a `retreino export --format tfjs` folder (served as it is),
- a Teachable Machine TF.js download (model.json + weights.bin + metadata.json; copied with the
  page into a temporary folder, the original is left untouched),
- any other model retreino loads: it is exported to tfjs first (`<model folder>/exports/tfjs/`).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path

from ..errors import RetreinoError
from ..export.tfjs_page import has_page, missing_bundles_message, write_page
from .server import bind_socket, is_loopback

# Everything comes from this server (no CDN, no upload). 'unsafe-eval' because the npm bundle of
# @teachablemachine/image 0.8.5 is a webpack eval build: each of its modules is an eval() string
# (Chromium: "EvalError ... at ./node_modules/seedrandom/seedrandom.js (teachablemachine-image.min.js)").
BROWSER_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self' 'unsafe-eval'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": BROWSER_CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


def browser_folder(model: str, **load_kwargs) -> tuple[Path, bool]:
    """The folder to serve for `model`, and whether it is a temporary copy to delete afterwards."""
    path = Path(model)
    folder = path if path.is_dir() else path.parent
    if (folder / "model.json").is_file() and has_page(folder):
        return folder, False
    if (folder / "model.json").is_file() and (folder / "metadata.json").is_file():
        return _page_for_download(folder), True
    from .. import load_model
    from ..export import export_model

    result = export_model(load_model(model, **load_kwargs), "tfjs", measure=False)
    if not has_page(result.folder):
        raise RetreinoError(missing_bundles_message())
    return result.folder, False


_COPY_PREFIX = "retreino-browser-"


def _remove_copies_of_dead_servers() -> None:
    """A server killed outright (SIGKILL, power loss) never reaches its cleanup: its copy is removed by the next one.

    Each copy's name holds its server's process id; a copy whose process is gone is deleted."""
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process there, not probe it
        return
    for old in Path(tempfile.gettempdir()).glob(f"{_COPY_PREFIX}*-*"):
        pid = old.name[len(_COPY_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's process (PermissionError), or no way to tell: keep its folder
        return True
    return True


def _page_for_download(folder: Path) -> Path:
    """A Teachable Machine download plus the page, in a temporary folder (the download may be read-only)."""
    model = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    names = ["model.json", "metadata.json"]
    for group in model.get("weightsManifest", []):
        for p in group.get("paths", []):
            if "/" in p or "\\" in p or p.startswith("."):
                raise RetreinoError(f"{folder}/model.json names weight file {p!r} outside its folder")
            names.append(p)
    _remove_copies_of_dead_servers()
    tmp = Path(tempfile.mkdtemp(prefix=f"{_COPY_PREFIX}{os.getpid()}-"))
    try:
        for name in names:
            shutil.copyfile(folder / name, tmp / name)
        write_page(tmp)
        if not has_page(tmp):
            raise RetreinoError(missing_bundles_message())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def create_static_app(folder: Path):
    """A Starlette app serving `folder` (index.html at /), every response with the security headers."""
    from starlette.applications import Starlette
    from starlette.staticfiles import StaticFiles

    app = Starlette()
    app.mount("/", StaticFiles(directory=str(folder), html=True), name="page")
    return _WithHeaders(app)


class _WithHeaders:
    """ASGI wrapper adding SECURITY_HEADERS to every HTTP response of `app`."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                extra = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        return await self.app(scope, receive, send_with_headers)


@contextlib.contextmanager
def _sigterm_raises():
    """uvicorn shuts down on SIGTERM, then raises the signal again with the handler it found: by default that ends
    the process at once, past our `finally`. This handler turns it into SystemExit, so the temporary copy goes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def exit_on_sigterm(signum, frame):
        raise SystemExit(128 + signum)

    before = signal.signal(signal.SIGTERM, exit_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def serve_in_browser(model: str, host: str = "127.0.0.1", port: int = 8000, access_log: bool = True, **load_kwargs):
    """Serve the in-browser page of `model` until interrupted."""
    import sys

    sock = bind_socket(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    try:
        import uvicorn

        folder, temporary = browser_folder(model, **load_kwargs)
    except BaseException:
        sock.close()
        raise
    try:
        metadata = json.loads((folder / "metadata.json").read_text(encoding="utf-8"))
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        url_host = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(bound_host, shown)
        labels = metadata.get("labels") or []
        print(
            f"retreino serve --in-browser: {metadata.get('modelName', Path(model).name)} ({len(labels)} classes: "
            f"{', '.join(map(str, labels[:10]))})\n"
            f"  page    http://{url_host}:{bound_port}/   (the model runs in the browser; photos are not uploaded)\n"
            f"  folder  {folder}{'  (temporary copy)' if temporary else '  (put it on any static host)'}\n"
            f"Press Ctrl+C to stop.",
            flush=True,
        )
        if not is_loopback(bound_host):
            print(f"warning: listening on {bound_host}: anyone who can reach this machine can download the model",
                  file=sys.stderr, flush=True)
        config = uvicorn.Config(create_static_app(folder), log_level="warning", access_log=access_log,
                                timeout_graceful_shutdown=5)
        with _sigterm_raises():
            uvicorn.Server(config).run(sockets=[sock])
    finally:
        if temporary:
            shutil.rmtree(folder, ignore_errors=True)
