"""The `Host` header check that stops DNS rebinding against a server bound to this machine only.

A web page on evil.example can make the browser resolve evil.example to 127.0.0.1 and then call
`retreino serve` as if it were its own site (same origin, so it reads the answers). The browser still
sends `Host: evil.example`: a loopback-bound server answers only requests addressed to a loopback
name. A server listening on the network is reachable by anyone anyway; it keeps every Host.
"""
from __future__ import annotations

import ipaddress
import json

LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1", "ip6-localhost"}


def _host_name(value: str) -> str:
    """`Host` header value -> host name without port ("[::1]:8000" -> "::1")."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def host_allowed(header: str | None, loopback_only: bool) -> bool:
    if not loopback_only:
        return True
    if not header:
        return False
    name = _host_name(header)
    if name in LOOPBACK_HOSTS or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class CheckHost:
    """ASGI middleware: 421 with a JSON reason for an HTTP request whose Host is not this server's."""

    def __init__(self, app, loopback_only: bool):
        self.app, self.loopback_only = app, loopback_only

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            headers = dict(scope.get("headers") or [])
            host = headers.get(b"host", b"").decode("latin-1")
            if not host_allowed(host, self.loopback_only):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                body = json.dumps({"error": f"Host {host[:100]!r} is not this server: it answers only "
                                            "requests to localhost / 127.0.0.1 (DNS rebinding protection)"}).encode()
                await send({"type": "http.response.start", "status": 421,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


class OneLineDisconnects:
    """ASGI middleware: a client that hangs up mid-request is one log line, not a traceback."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        from starlette.requests import ClientDisconnect

        try:
            await self.app(scope, receive, send)
        except ClientDisconnect:
            import sys

            client = scope.get("client") or ("?", 0)
            print(f"retreino serve: client {client[0]}:{client[1]} disconnected during "
                  f"{scope.get('method', '?')} {scope.get('path', '?')}", file=sys.stderr, flush=True)
