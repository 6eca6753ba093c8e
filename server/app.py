"""The Starlette app: the HTTP routes and ``/v1/ws`` over one ``Runtime`` (``server/runtime.py``)."""

from __future__ import annotations

import contextlib
import hmac
import importlib.util
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from parley.protocol.asyncapi import asyncapi_document
from parley.protocol.errors import ParleyError

from .feedback import MAX_LIMIT, export_feedback, parse_since
from .guard import Guard
from .metrics import CONTENT_TYPE
from .runtime import Runtime, build_catalog
from .settings import Settings
from .transports import http as http_api
from .transports.ws import websocket_endpoint

__all__ = ["WebSocketFirst", "build_catalog", "create_app"]

log = logging.getLogger("parley")


def web_demo_dir() -> Path | None:
    """Where the web demo's files are: ``web-demo/`` in a checkout, ``parley/web`` when installed."""
    spec = importlib.util.find_spec("parley.web")
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / "index.html").is_file():
            return Path(location)
    return None


WEB_DEMO = web_demo_dir()


class WebSocketFirst:
    """Serve one WebSocket path with the server's own ``send``.

    Routed the usual way, a router and two exception wrappers would sit between every
    frame and the socket (none of them acts on a WebSocket), and they would hide the
    transport that ``server/fastpath/uvicorn_ws.py`` writes frames to.
    """

    def __init__(self, app: ASGIApp, path: str, endpoint: ASGIApp) -> None:
        self.app, self.path, self.endpoint = app, path, endpoint

    @staticmethod
    def _route_path(scope: Scope) -> str:
        """The path below the app's mount point, as Starlette's router sees it."""
        path: str = scope["path"]
        root: str = scope.get("root_path", "")
        return path[len(root) :] if root and path.startswith(root) else path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
        elif self._route_path(scope) == self.path:
            await self.endpoint(scope, receive, send)
        else:  # no other WebSocket here: refused before the upgrade (HTTP 403), whatever Starlette does
            await send({"type": "websocket.close", "code": 1008})


def bearer_ok(request: Request, secret: str) -> bool:
    """``Authorization: Bearer <secret>``, compared in constant time."""
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), secret.encode())


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.parley
    return runtime


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


async def readyz(request: Request) -> Response:
    runtime = _runtime(request)
    if runtime.draining:
        return JSONResponse({"ready": False, "reason": "draining"}, status_code=503)
    try:
        await runtime.store.ping()
    except ParleyError as exc:
        return JSONResponse({"ready": False, "reason": exc.code}, status_code=503)
    return JSONResponse({"ready": True})


async def asyncapi(request: Request) -> Response:
    return JSONResponse(asyncapi_document())


async def metrics_endpoint(request: Request) -> Response:
    runtime = _runtime(request)
    token = runtime.settings.metrics_token
    if token and not bearer_ok(request, token):
        return PlainTextResponse("unauthorized", status_code=401, headers={"WWW-Authenticate": "Bearer"})
    return Response(runtime.metrics.expose(), media_type=CONTENT_TYPE)


async def feedback_endpoint(request: Request) -> Response:
    """Admin only: feedback rated since ``since`` as JSON lines (or a JSON array with format=json)."""
    runtime = _runtime(request)
    admin_token = runtime.settings.admin_token
    if not admin_token:
        return JSONResponse({"error": "feedback export is off (set PARLEY_ADMIN_TOKEN)"}, status_code=404)
    if not bearer_ok(request, admin_token):
        return JSONResponse(
            {"error": "unauthorized"}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
        )
    q = request.query_params
    try:
        since = parse_since(q.get("since"))
        until = parse_since(q.get("until")) if q.get("until") else None
        limit = min(int(q.get("limit", MAX_LIMIT)), MAX_LIMIT)
    except ValueError as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    include_text = q.get("include_text", "").lower() in ("1", "true", "yes")
    rows = export_feedback(runtime.store, since, until_ms=until, include_text=include_text, limit=limit)
    if q.get("format", "jsonl") == "json":
        return JSONResponse([row async for row in rows])

    async def lines() -> AsyncIterator[bytes]:
        async for row in rows:
            yield (json.dumps(row, ensure_ascii=False) + "\n").encode()

    return StreamingResponse(lines(), media_type="application/x-ndjson")


async def index(request: Request) -> Response:
    assert WEB_DEMO is not None
    return FileResponse(WEB_DEMO / "index.html")


def create_app(settings: Settings | None = None) -> Starlette:
    """The ASGI app: one ``Runtime`` (its lifespan), the HTTP routes, ``/v1/ws`` ahead of the router."""
    runtime = Runtime(settings or Settings())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    routes: list[Any] = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/v1/asyncapi.json", asyncapi),
        Route("/metrics", metrics_endpoint),
        Route("/v1/feedback", feedback_endpoint),
        *http_api.routes(),  # /v1/sessions/... and /v1/openapi.json (server/transports/http.py)
    ]
    if WEB_DEMO is not None:
        routes += [Route("/", index), Mount("/", StaticFiles(directory=WEB_DEMO), name="web-demo")]
    else:
        log.warning("the web demo's files were not found (parley.web); / answers 404")
    # /v1/ws is served ahead of the router (WebSocketFirst), not as a route
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[
            Middleware(Guard, settings=runtime.settings),  # URL credentials, Host, Origin: refused first
            Middleware(WebSocketFirst, path="/v1/ws", endpoint=websocket_endpoint),
        ],
    )
    app.state.parley = runtime
    return app
