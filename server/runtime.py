"""``Runtime``: everything one Parley process runs, built from ``Settings`` in one place.

The store (chosen by URL, ``sessions/url.py``), the providers (by profile, from the
registry in ``server/providers/registry.py``), the limiter, the token meter, the
metrics, the generations, the session core (admission and the handler table) and
the connection ticker. ``start`` and ``stop`` bring them up and down in order; the
app (``server/app.py``) holds one runtime in ``app.state.parley`` and its routes and
transports read what they need from it. Configuration problems raise ``ConfigError``
here, before anything is served.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Protocol

from parley.sessions import SessionStore, UnsupportedStoreUrl, keys, open_store, parse_store_url

from . import fastpath
from .auth import build_authenticator
from .config_error import ConfigError
from .core import Admission, Handler, Handlers, SessionReader, Sink
from .core.admission import Ticket
from .generation import Generation, Generations
from .jobs import Jobs
from .meter import TokenMeter
from .metrics import MeteredProvider, MeteredStore, Metrics
from .profiles import load_profiles, single_profile_set
from .providers.base import ModelProvider
from .providers.registry import build_provider
from .ratelimit import open_limiter
from .service import ModelCatalog, SessionService
from .settings import Settings
from .tools import ServerTools
from .webhooks import Webhooks

log = logging.getLogger("parley")


class Client(Protocol):
    """A connected client as the runtime tends it, whatever its transport."""

    ticket: Ticket

    def tick(self, now: float, loop_now: float) -> None: ...

    async def close(self, code: int, reason: str = "", *, wait: float | None = None) -> None: ...


def build_catalog(settings: Settings, metrics: Metrics | None = None) -> ModelCatalog:
    """Profiles from ``--profiles`` (TOML) or a one-profile default from ``--model``."""
    profiles = load_profiles(settings.profiles) if settings.profiles else single_profile_set(settings.model)
    providers: dict[str, ModelProvider] = {}
    for name in profiles.providers():
        providers[name] = build_provider(name, settings)
        if metrics is not None:
            providers[name] = MeteredProvider(providers[name], metrics)
    return ModelCatalog(profiles, providers)


class Runtime:
    """One process's wiring; ``start`` / ``stop`` are the app's lifespan."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        try:
            self.store_url = parse_store_url(settings.store)
        except UnsupportedStoreUrl as exc:
            raise ConfigError(exc.what, exc.fix) from None
        self.auth = build_authenticator(settings)  # a bad key stops start-up here
        self.limiter = open_limiter(settings)
        store: Any = open_store(settings.store, **settings.store_limits())
        self.store: SessionStore = MeteredStore(store, self.metrics) if self.store_url.shared else store
        self.generations = Generations(self.store, settings)
        self.catalog = build_catalog(settings, self.metrics)
        self.server_tools = ServerTools.load(self.catalog.profiles.values())  # a bad path: ConfigError
        self.service = SessionService(self.store, self.generations, self.catalog, settings, self.server_tools)
        self.meter = TokenMeter(self.store, self.limiter)
        self.admission = Admission(self.service, settings, self.metrics, self.auth, self.limiter)
        self.handlers = Handlers(
            self.service, self.metrics, self.limiter, self.meter, turns_per_tick=settings.turn_starts_per_tick
        )
        self.handler_table: dict[str, Handler] = self.handlers.table()
        self.connections: set[Any] = set()  # every connected ``Client``, on any transport
        self.draining = False
        self._tasks: list[asyncio.Task[None]] = []
        self.generations.on_finish.append(self._on_finish)
        self.generations.on_finish.append(self.meter.on_finish)
        self.metrics.watch(
            connections=lambda: len(self.connections),
            sessions=lambda: len(self.store.fanout.sessions()),
            running=lambda: len(self.generations.running),
        )
        self.metrics.watch_store(self.store.health)  # outage time, failed writes, lost sessions
        # the HTTP patterns (issue 18): jobs read from the log, and the webhooks of async jobs, armed
        # when a job ends (its generation here, or the reaper for a dead instance's)
        self.webhooks = Webhooks.from_settings(settings, self.store, metrics=self.metrics.webhooks)
        self.jobs = Jobs(self.store, self.webhooks)
        self.webhooks.lookup = self.jobs.lookup
        self.generations.on_finish.append(self.jobs.on_finish)
        self.generations.on_reaped.append(self.jobs.on_reaped)

    def reader(self, sink: Sink) -> SessionReader:
        """A client's reader of its log, writing to ``sink`` (one per connection, any transport)."""
        settings = self.settings
        return SessionReader(
            self.store,
            sink,
            buffer_events=settings.send_buffer_events,
            heartbeat_interval_s=settings.heartbeat_interval_ms / 1000,
            metrics=self.metrics,
        )

    def _on_finish(self, gen: Generation, finish_reason: str) -> None:
        """Runs in the generation's task: metrics and one log line (no text)."""
        self.metrics.responses.labels(finish_reason).inc()
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

    # --------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        fastpath.check()  # one warning if a speed trick is off (a library outside its tested range)
        await self.store.start()
        self.generations.start()
        self._tasks.append(asyncio.create_task(self._tend_connections(), name="parley-connection-ticker"))
        if self.limiter is not None:
            await self.limiter.start()
            self._tasks.append(asyncio.create_task(self._keep_slots(), name="parley-connection-slots"))
        if self.webhooks.enabled:
            await self.webhooks.start()
        if self.auth is None:
            log.warning(
                "AUTH IS OFF: anyone can connect and claim any tenant or user. Set PARLEY_AUTH_JWT_SECRET or "
                "PARLEY_AUTH_JWT_PUBLIC_KEY before exposing this server."
            )
        else:
            log.info("auth on", extra={"fields": {"algorithm": self.auth.algorithm}})
        if self.limiter is None:
            log.warning("per-user and per-tenant limits are off (PARLEY_IDENTITY_LIMITS)")

    async def stop(self) -> None:
        """Drain: no new clients, running responses get ``drain_timeout_ms``, then every client 1012."""
        self.draining = True
        await self.generations.stop(drain_s=self.settings.drain_timeout_ms / 1000)
        await asyncio.gather(*(c.close(1012, "server restart") for c in list(self.connections)))
        for provider in self.catalog.providers.values():
            with contextlib.suppress(Exception):
                await provider.aclose()
        await self.meter.stop()
        await self.webhooks.aclose()
        await self.jobs.aclose()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.limiter is not None:
            with contextlib.suppress(Exception):
                await self.limiter.close()
        await self.store.close()

    async def _tend_connections(self) -> None:
        """One ticker for every client: heartbeats to idle ones, 4009 for writes stalled past
        PARLEY_SEND_TIMEOUT_MS; cheaper than a timer per connection (docs/benchmarks.md, B5)."""
        settings = self.settings
        period = max(0.02, min(settings.send_timeout_ms, settings.heartbeat_interval_ms) / 4000)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(period)
            now, loop_now = time.monotonic(), loop.time()
            for client in list(self.connections):
                client.tick(now, loop_now)

    async def _keep_slots(self) -> None:
        """Refresh this instance's connection slots so a crash frees them within the slot TTL."""
        assert self.limiter is not None
        while True:
            await asyncio.sleep(keys.CONNECTION_REFRESH_MS / 1000)
            held = [
                (t.who, t.conn_id)
                for t in (c.ticket for c in list(self.connections))
                if t.holds_slot and t.who is not None
            ]
            with contextlib.suppress(Exception):
                await self.limiter.keep_connections(held)
