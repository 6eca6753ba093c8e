"""The Starlette app factory: wires the store, the models and the endpoint together."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import importlib.util
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
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
from parley.sessions import keys, open_store

from .auth import build_authenticator
from .endpoint import Connection, websocket_endpoint
from .feedback import MAX_LIMIT, export_feedback, parse_since
from .generation import Generation, Generations
from .guard import Guard
from .metrics import CONTENT_TYPE, MeteredProvider, MeteredStore, Metrics
from .profiles import load_profiles, single_profile_set
from .providers.base import ModelProvider
from .providers.echo import EchoProvider
from .ratelimit import open_limiter
from .service import ModelCatalog, Principal, SessionService
from .settings import Settings

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
    transport that ``server/inline.py`` writes frames to.
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
        if scope["type"] == "websocket" and self._route_path(scope) == self.path:
            await self.endpoint(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def build_catalog(settings: Settings, metrics: Metrics | None = None) -> ModelCatalog:
    """Profiles from ``--profiles`` (TOML) or a one-profile default from ``--model``."""
    profiles = load_profiles(settings.profiles) if settings.profiles else single_profile_set(settings.model)
    providers: dict[str, ModelProvider] = {}
    for name in profiles.providers():
        if name == "echo":
            providers[name] = EchoProvider(
                ttft_ms=settings.echo_ttft_ms,
                tokens_per_second=settings.echo_tokens_per_second,
                reply_tokens=settings.echo_reply_tokens,
            )
        elif name == "openai":
            from .providers.openai import OpenAIProvider

            providers[name] = OpenAIProvider(
                connect_timeout=settings.openai_connect_timeout_s,
                first_token_timeout=settings.openai_first_token_timeout_s,
                between_token_timeout=settings.openai_between_token_timeout_s,
                retry_attempts=settings.openai_retry_attempts,
            )
        else:
            raise ValueError(f"unknown provider {name!r} in profiles")
        if metrics is not None:
            providers[name] = MeteredProvider(providers[name], metrics)
    return ModelCatalog(profiles, providers)


def bearer_ok(request: Request, secret: str) -> bool:
    """``Authorization: Bearer <secret>``, compared in constant time."""
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), secret.encode())


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings()
    metrics = Metrics()
    auth = build_authenticator(settings)  # a bad key stops start-up here
    limiter = open_limiter(settings)
    store: Any = open_store(settings.store, **settings.store_limits())
    if not settings.store.startswith("memory://"):
        store = MeteredStore(store, metrics)
    generations = Generations(store, settings)
    catalog = build_catalog(settings, metrics)
    connections: set[Connection] = set()
    state = SimpleNamespace(
        settings=settings,
        store=store,
        generations=generations,
        service=SessionService(store, generations, catalog, settings),
        connections=connections,
        draining=False,
        auth=auth,
        limiter=limiter,
        metrics=metrics,
        charges={},  # session_id -> the token charge of its last response, until it lands
    )
    metrics.watch(
        connections=lambda: len(connections),
        sessions=lambda: len(store.fanout.sessions()),
        running=lambda: len(generations.running),
    )
    metrics.watch_store(store.health)  # outage time, failed writes, lost sessions (sessions/outage.py)
    background: set[asyncio.Task[Any]] = set()

    async def charge(gen: Generation) -> None:
        assert limiter is not None
        tokens = gen.usage.output_tokens if gen.usage is not None else gen.output_tokens
        rec = await store.get_session(gen.session_id)
        if rec is not None and tokens > 0:
            await limiter.charge_tokens(Principal(rec.tenant, rec.user), tokens)

    def on_finish(gen: Generation, finish_reason: str) -> None:
        """Runs in the generation's task: metrics, one log line (no text), the token charge."""
        metrics.responses.labels(finish_reason).inc()
        ttft = None if gen.first_token is None else round((gen.first_token - gen.started) * 1000)
        log.info(
            "response finished",
            extra={
                "fields": {
                    "session_id": gen.session_id,
                    "response_id": gen.response_id,
                    "finish_reason": finish_reason,
                    "output_tokens": gen.usage.output_tokens if gen.usage else gen.output_tokens,
                    "ttft_ms": ttft,
                }
            },
        )
        if limiter is not None:
            # registered before this task yields, so before any local reader sends response.completed:
            # the session's next message.send waits for the charge (see Connection._handle)
            task = asyncio.get_running_loop().create_task(charge(gen))
            background.add(task)
            state.charges[gen.session_id] = task
            task.add_done_callback(background.discard)
            task.add_done_callback(
                lambda t, sid=gen.session_id: (
                    state.charges.pop(sid, None) if state.charges.get(sid) is t else None
                )
            )

    generations.on_finish.append(on_finish)

    async def tend_connections() -> None:
        """One ticker for every connection: heartbeats to idle ones, 4009 for writes stalled past
        PARLEY_SEND_TIMEOUT_MS; cheaper than a timer per connection (docs/benchmarks.md, B5)."""
        period = max(0.02, min(settings.send_timeout_ms, settings.heartbeat_interval_ms) / 4000)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(period)
            now, loop_now = time.monotonic(), loop.time()
            for conn in list(connections):
                conn.tick(now, loop_now)

    async def keep_connection_slots() -> None:
        """Refresh this instance's connection slots so a crash frees them within the slot TTL."""
        assert limiter is not None
        while True:
            await asyncio.sleep(keys.CONNECTION_REFRESH_MS / 1000)
            held = [(c.who, c.conn_id) for c in list(connections) if c.holds_slot and c.who is not None]
            with contextlib.suppress(Exception):
                await limiter.keep_connections(held)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await store.start()
        generations.start()
        background.add(asyncio.create_task(tend_connections(), name="parley-connection-ticker"))
        if limiter is not None:
            await limiter.start()
            background.add(asyncio.create_task(keep_connection_slots(), name="parley-connection-slots"))
        if auth is None:
            log.warning(
                "AUTH IS OFF: anyone can connect and claim any tenant or user. Set PARLEY_AUTH_JWT_SECRET or "
                "PARLEY_AUTH_JWT_PUBLIC_KEY before exposing this server."
            )
        else:
            log.info("auth on", extra={"fields": {"algorithm": auth.algorithm}})
        if limiter is None:
            log.warning("per-user and per-tenant limits are off (PARLEY_IDENTITY_LIMITS)")
        try:
            yield
        finally:
            state.draining = True
            await generations.stop(drain_s=settings.drain_timeout_ms / 1000)
            await asyncio.gather(*(conn.close(1012, "server restart") for conn in list(connections)))
            for provider in catalog.providers.values():
                with contextlib.suppress(Exception):
                    await provider.aclose()
            for task in list(background):
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            if limiter is not None:
                with contextlib.suppress(Exception):
                    await limiter.close()
            await store.close()

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def readyz(request: Request) -> Response:
        if state.draining:
            return JSONResponse({"ready": False, "reason": "draining"}, status_code=503)
        try:
            await store.ping()
        except ParleyError as exc:
            return JSONResponse({"ready": False, "reason": exc.code}, status_code=503)
        return JSONResponse({"ready": True})

    async def asyncapi(request: Request) -> Response:
        return JSONResponse(asyncapi_document())

    async def metrics_endpoint(request: Request) -> Response:
        if settings.metrics_token and not bearer_ok(request, settings.metrics_token):
            return PlainTextResponse("unauthorized", status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return Response(metrics.expose(), media_type=CONTENT_TYPE)

    async def feedback_endpoint(request: Request) -> Response:
        """Admin only: feedback rated since ``since`` as JSON lines (or a JSON array with format=json)."""
        if not settings.admin_token:
            return JSONResponse({"error": "feedback export is off (set PARLEY_ADMIN_TOKEN)"}, status_code=404)
        if not bearer_ok(request, settings.admin_token):
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
        rows = export_feedback(store, since, until_ms=until, include_text=include_text, limit=limit)
        if q.get("format", "jsonl") == "json":
            return JSONResponse([row async for row in rows])

        async def lines() -> AsyncIterator[bytes]:
            async for row in rows:
                yield (json.dumps(row, ensure_ascii=False) + "\n").encode()

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    async def index(request: Request) -> Response:
        assert WEB_DEMO is not None
        return FileResponse(WEB_DEMO / "index.html")

    routes: list[Any] = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/v1/asyncapi.json", asyncapi),
        Route("/metrics", metrics_endpoint),
        Route("/v1/feedback", feedback_endpoint),
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
            Middleware(Guard, settings=settings),  # URL credentials, Host, Origin: refused before any route
            Middleware(WebSocketFirst, path="/v1/ws", endpoint=websocket_endpoint),
        ],
    )
    app.state.parley = state
    return app
