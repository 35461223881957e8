"""Bind the port and run uvicorn over the studio app, with `retreino serve`'s protections.

The same runner as serve (serve/server.py): the port is claimed before anything loads, a loopback
server answers only requests addressed to a loopback name (DNS rebinding, serve/hosts.py), slow or
silent connections are closed, and a client hanging up is one log line.
"""
from __future__ import annotations

import logging
import sys

from ..serve.hosts import CheckHost, OneLineDisconnects
from ..serve.server import KEEP_ALIVE_S, MAX_CONNECTIONS, bind_socket, header_deadline_protocol, is_loopback
from .app import StudioSettings, create_app
from .project import Project


def studio(project_dir: str = ".", host: str = "127.0.0.1", port: int = 8100, settings: StudioSettings | None = None,
           access_log: bool = False) -> None:
    """Serve the studio for `project_dir` until interrupted (Ctrl+C or SIGTERM); a running job is stopped cleanly."""
    import uvicorn

    sock = bind_socket(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    try:
        project = Project(project_dir)
        app = OneLineDisconnects(CheckHost(create_app(project, settings), loopback_only=is_loopback(bound_host)))
    except BaseException:
        sock.close()
        raise
    config = uvicorn.Config(app, log_level="info", access_log=access_log, timeout_graceful_shutdown=5,
                            timeout_keep_alive=KEEP_ALIVE_S, limit_concurrency=MAX_CONNECTIONS,
                            http=header_deadline_protocol())
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    url_host = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(bound_host, f"[{bound_host}]" if ":" in bound_host else bound_host)
    classes = project.classes()
    print(f"retreino studio: {project.root} ({len(classes)} classes, {sum(c['count'] for c in classes):,} images)\n"
          f"  page    http://{url_host}:{bound_port}/\n"
          f"  runs    {project.runs_dir}\n"
          f"Press Ctrl+C to stop.", flush=True)
    if not is_loopback(bound_host):
        print(f"warning: listening on {bound_host}: anyone who can reach this machine can change this project "
              "and start jobs (there is no authentication)", file=sys.stderr, flush=True)
    uvicorn.Server(config).run(sockets=[sock])
