"""The Starlette app factory: wires the store, the models and the endpoint together."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from protocol.asyncapi import asyncapi_document
from protocol.errors import ParleyError
from sessions import open_store

from .endpoint import Connection, websocket_endpoint
from .generation import Generations
from .profiles import load_profiles, single_profile_set
from .providers.base import ModelProvider
from .providers.echo import EchoProvider
from .service import ModelCatalog, SessionService
from .settings import Settings

log = logging.getLogger("parley")

WEB_DEMO = Path(__file__).resolve().parent.parent / "web-demo"


def build_catalog(settings: Settings) -> ModelCatalog:
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
    return ModelCatalog(profiles, providers)


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings()
    store = open_store(settings.store, **settings.store_limits())
    generations = Generations(store, settings)
    catalog = build_catalog(settings)
    connections: set[Connection] = set()
    state = SimpleNamespace(
        settings=settings,
        store=store,
        generations=generations,
        service=SessionService(store, generations, catalog, settings),
        connections=connections,
        draining=False,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await store.start()
        generations.start()
        if not (settings.auth_jwt_secret or settings.auth_jwt_public_key):
            log.warning(
                "AUTH IS OFF: anyone can connect. Set PARLEY_AUTH_JWT_SECRET or "
                "PARLEY_AUTH_JWT_PUBLIC_KEY before exposing this server."
            )
        try:
            yield
        finally:
            state.draining = True
            await generations.stop(drain_s=settings.drain_timeout_ms / 1000)
            for conn in list(connections):
                await conn.close(1012, "server restart")
            for provider in catalog.providers.values():
                with contextlib.suppress(Exception):
                    await provider.aclose()
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

    async def index(request: Request) -> Response:
        return FileResponse(WEB_DEMO / "index.html")

    routes: list[Any] = [
        WebSocketRoute("/v1/ws", websocket_endpoint),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/v1/asyncapi.json", asyncapi),
    ]
    if WEB_DEMO.is_dir():
        routes += [Route("/", index), Mount("/", StaticFiles(directory=WEB_DEMO), name="web-demo")]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.parley = state
    return app
