"""Load a model, warm it up, bind the port and run uvicorn: what `retreino serve` does."""
from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import socket
import sys

import numpy as np

from ..errors import RetreinoError
from ..inference.exports import DEFAULT_RUNTIME
from .app import ServeSettings, create_app, model_name
from .hosts import CheckHost, OneLineDisconnects

LOOPBACK_NAMES = {"localhost", "ip6-localhost"}
# An idle keep-alive connection is closed after this many seconds (uvicorn's own default, stated here
# so that it is ours to document: docs/security.md).
KEEP_ALIVE_S = float(os.environ.get("RETREINO_KEEP_ALIVE_S", "5"))
# uvicorn 0.54 has no timeout for a new connection's request headers: one that connects and sends
# nothing (or its headers a byte at a time) is held forever. HeaderDeadlineH11 closes it.
HEADER_TIMEOUT_S = float(os.environ.get("RETREINO_HEADER_TIMEOUT_S", "10"))
# Past this many connections or tasks, uvicorn answers new requests 503.
MAX_CONNECTIONS = int(os.environ.get("RETREINO_MAX_CONNECTIONS", "256"))


def header_deadline_protocol():
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadlineH11(H11Protocol):
        """uvicorn's h11 protocol, closing a new connection whose first request has not begun in time."""

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._header_timer = self.loop.call_later(HEADER_TIMEOUT_S, self._headers_too_slow)

        def _headers_too_slow(self) -> None:
            if self.cycle is None and not self.transport.is_closing():
                self.transport.close()

        def connection_lost(self, exc) -> None:
            self._header_timer.cancel()
            super().connection_lost(exc)

    return HeaderDeadlineH11


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind before uvicorn starts, so a busy port is one clear error instead of a log line and exit."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise RetreinoError(f"cannot resolve host {host!r}: {exc.strerror}") from exc
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        hint = ": pick another with --port (or --port 0 for any free one)" if exc.errno in (98, 48, 10048) else ""
        raise RetreinoError(f"cannot listen on {host}:{port} ({exc.strerror}){hint}") from exc
    sock.set_inheritable(True)
    return sock


def warm_up(predictor) -> int:
    """Run the model once on batches of 1 and 2 so the first request does not pay for
    graph building and memory allocation; returns the number of probabilities per image."""
    h, w = predictor.info.input_size
    out = None
    for n in (1, 2):
        out = predictor.predict_pixels(np.zeros((n, h, w, 3), np.uint8))
    return int(np.asarray(out).shape[-1])


def serve(
    model: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    runtime: str = DEFAULT_RUNTIME,
    settings: ServeSettings | None = None,
    names: str | list[str] | dict[str, str] | None = None,
    access_log: bool = True,
    **load_kwargs,
) -> None:
    """Serve `model` until interrupted (Ctrl+C or SIGTERM)."""
    settings = settings or ServeSettings()
    from ..config import validate_serve

    validate_serve({**dataclasses.asdict(settings), "port": port})
    # Claim the port first: a busy port should fail in a second, not after importing
    # TensorFlow and loading the model.
    sock = bind_socket(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    try:
        import uvicorn

        from ..console import status
        from ..inference import open_predictor
        from ..prediction import parse_names

        status(f"loading {model} (runtime {runtime}) ...")
        predictor = open_predictor(model, runtime=runtime, resize_mode=settings.resize_mode, **load_kwargs)
        if settings.resize_mode is None:  # the model's own, from its metadata
            settings = dataclasses.replace(settings, resize_mode=predictor.resize_mode)
        classes = parse_names(names, predictor.class_names)
        units = warm_up(predictor)
        if units != len(classes):
            raise RetreinoError(f"the model gives {units} probabilities but has {len(classes)} class names: {', '.join(classes)}")
    except BaseException:
        sock.close()
        raise
    app = create_app(predictor, settings, model_file=str(model), class_names=classes)
    app = OneLineDisconnects(CheckHost(app, loopback_only=is_loopback(bound_host)))  # see serve/hosts.py
    config = uvicorn.Config(app, log_level="info", access_log=access_log, timeout_graceful_shutdown=5,
                            timeout_keep_alive=KEEP_ALIVE_S, limit_concurrency=MAX_CONNECTIONS,
                            http=header_deadline_protocol())
    # uvicorn's own start-up lines repeat the banner below; keep its warnings and access log.
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)

    # 0.0.0.0 is where it listens, not an address a browser can open: show this machine's.
    url_host = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(bound_host, f"[{bound_host}]" if ":" in bound_host else bound_host)
    url = f"http://{url_host}:{bound_port}"
    info = predictor.info
    shown = ", ".join(classes) if len(classes) <= 10 else ", ".join(classes[:8]) + f", ... ({len(classes) - 8} more)"
    batching = f"up to {settings.max_batch} images, {settings.batch_wait_ms:g} ms wait" if settings.max_batch > 1 else "off"
    print(
        f"retreino serve: {model_name(str(model))} ({len(classes)} classes: {shown}; "
        f"{info.input_size[0]}x{info.input_size[1]}; runtime {predictor.runtime})\n"
        f"  page    {url}/\n"
        f"  API     POST {url}/predict    docs {url}/docs\n"
        f"  batching {batching}; limits {settings.max_file_mb:g} MB per file, {settings.max_files} files per request\n"
        f"Press Ctrl+C to stop.",
        flush=True,
    )
    if not is_loopback(bound_host):
        where = "every network interface" if bound_host in ("0.0.0.0", "::") else bound_host
        print(f"warning: listening on {where} ({bound_host}): anyone who can reach this machine can use the model (there is no authentication)", file=sys.stderr, flush=True)
    uvicorn.Server(config).run(sockets=[sock])
