"""`hierfl dashboard`'s web app (Starlette): the page, its script and style, its state, `/metrics`.

Fixed routes only: the page's three files ship in the package (`static/`), and everything
else is read from the run directory by `view.RunReader`, so no request names a file. The
page polls `/api/state?since=N`: the whole view, and the chart points after the first N
(all of them again after the run's metrics file was rewritten, with `since` 0).

With a token every request must present it: `Authorization: Bearer TOKEN` (a Prometheus
scraper), or the cookie that opening `/?token=TOKEN` sets (a browser).
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from hierfl.dashboard.prometheus import RunCollector
from hierfl.dashboard.view import RunFiles, RunReader, run_view
from hierfl.errors import HierflError

STATIC = Path(__file__).parent / "static"
PAGE_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}
TOKEN_COOKIE = "hierfl_dashboard_token"


class Dashboard:
    """The run directory's reader, shared by the page's polls and Prometheus' scrapes."""

    def __init__(self, run_dir: Path):
        self.reader = RunReader(run_dir)
        self.lock = threading.Lock()

    def snapshot(self) -> tuple[RunFiles, dict[str, Any]]:
        with self.lock:
            files = self.reader.read()
        return files, run_view(files, time.time())


def page_file(path: str) -> Response:
    name, media_type = PAGE_FILES[path]
    return Response((STATIC / name).read_bytes(), media_type=media_type, headers=HEADERS)


def state_response(dashboard: Dashboard, since: str | None) -> JSONResponse:
    files, view = dashboard.snapshot()
    start = int(since) if since and since.isdigit() else 0
    if start > len(files.points):  # the file was rewritten (a resumed cloud): start over
        start = 0
    body = {"view": view, "since": start, "points": files.points[start:]}
    return JSONResponse(body, headers=HEADERS)


class TokenRequired(BaseHTTPMiddleware):
    """401 for a request without the dashboard's token (header or cookie); `?token=` sets the cookie."""

    def __init__(self, app, token: str):
        super().__init__(app)
        self.token = token

    def presented(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        given = header[len("Bearer ") :] if header.startswith("Bearer ") else None
        given = given or request.cookies.get(TOKEN_COOKIE) or ""
        return hmac.compare_digest(given.encode(), self.token.encode())

    async def dispatch(self, request: Request, call_next) -> Response:
        query = request.query_params.get("token")
        if query is not None and hmac.compare_digest(query.encode(), self.token.encode()):
            response = RedirectResponse(request.url.path, status_code=303)
            response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict")
            return response
        if self.presented(request):
            return await call_next(request)
        return PlainTextResponse(
            "this dashboard needs its token: open the URL `hierfl dashboard` printed "
            "(.../?token=...), or send the header Authorization: Bearer TOKEN\n",
            status_code=401,
        )


def create_app(run_dir: Path, token: str | None = None) -> Starlette:
    """The dashboard of `run_dir`; with `token`, only for requests that present it."""
    dashboard = Dashboard(run_dir)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RunCollector(dashboard.snapshot))

    def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    routes = [Route(path, lambda request: page_file(request.url.path)) for path in PAGE_FILES]
    routes += [
        Route("/api/state", lambda r: state_response(dashboard, r.query_params.get("since"))),
        Route("/metrics", metrics),
    ]
    middleware = [Middleware(TokenRequired, token=token)] if token else []
    return Starlette(routes=routes, middleware=middleware)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_bind(bind: str, default_port: int) -> tuple[str, int]:
    """`HOST`, `HOST:PORT` or `[V6]:PORT` -> (host, port); HierflError naming the form otherwise."""
    host, port = bind, str(default_port)
    if bind.startswith("["):
        host, _, rest = bind[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else port
    elif bind.count(":") == 1:
        host, port = bind.split(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise HierflError(f"--bind {bind!r}: expected HOST or HOST:PORT, e.g. 0.0.0.0:8470")
    return host, int(port)


def dashboard_token(host: str, token: str | None) -> str | None:
    """The token requests must carry: None on loopback unless given; a fresh one when none is given."""
    if token is not None or is_loopback(host):
        return token
    return secrets.token_urlsafe(24)


def serve(run_dir: Path, host: str, port: int, token: str | None) -> None:
    """Serves the dashboard until interrupted, printing its URL (with the token) first."""
    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        listener = socket.create_server((host, port), family=family, reuse_port=False)
    except OSError as error:
        raise HierflError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    bound = listener.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    query = f"?token={token}" if token else ""
    print(f"dashboard of {run_dir}: http://{shown}:{bound}/{query}", flush=True)
    config = uvicorn.Config(
        create_app(run_dir, token), log_level="warning", access_log=False, lifespan="off"
    )
    uvicorn.Server(config).run(sockets=[listener])
