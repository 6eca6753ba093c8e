"""Prometheus metrics, every name prefixed ``parley_``; one registry per app (so tests can run many).

Besides Parley's own: ``parley_build_info{version, protocol}``, and the standard
``process_*`` (CPU, memory, file descriptors, start time) and ``python_info``.
The exposition is checked by ``promtool check metrics`` (tests/test_metrics_promtool.py).

Model timings are taken by wrapping each provider (``MeteredProvider``): time to
first token and the gap between tokens are measured where the tokens arrive,
without touching the generation runner. Store latency is taken by wrapping the
store (``MeteredStore``): every awaited store call is one observation labelled with
its operation. Gauges (connections, sessions, running generations) are read when
scraped. With ``--workers N`` each worker has its own registry: scrape each
process, or run one worker per container.
"""

from __future__ import annotations

import functools
import inspect
import time
from bisect import bisect_left
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.utils import floatToGoString

from parley.protocol.errors import ParleyError
from parley.protocol.messages import PROTOCOL_VERSION

from .providers.base import ModelProvider, ModelRequest, ProviderEvent, TextDelta, UsageReport

CONTENT_TYPE = CONTENT_TYPE_LATEST

TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
GAP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
STORE_BUCKETS = (0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5)


class LoopHistogram:
    """A histogram with one label, observed only from the event loop's thread (no lock).

    The inter-token gap is observed once per model token: prometheus_client's ``Histogram.observe``
    (a lock, a Python walk over the buckets, ~1.6 µs) cost 3-7 % of a loaded process's CPU; here
    an observation is a C ``bisect`` and two additions. Exposed as a standard histogram family.
    """

    def __init__(
        self, name: str, documentation: str, label: str, buckets: Sequence[float], registry: CollectorRegistry
    ) -> None:
        self.name, self.documentation, self.label = name, documentation, label
        self.bounds = (*buckets, float("inf"))
        self._children: dict[str, LoopHistogram.Child] = {}
        registry.register(self)

    class Child:
        __slots__ = ("bounds", "counts", "sum")

        def __init__(self, bounds: tuple[float, ...]) -> None:
            self.bounds = bounds
            self.counts = [0] * len(bounds)  # per bucket, not cumulative (summed when scraped)
            self.sum = 0.0

        def observe(self, value: float) -> None:
            self.counts[bisect_left(self.bounds, value)] += 1
            self.sum += value

    def labels(self, value: str) -> LoopHistogram.Child:
        child = self._children.get(value)
        if child is None:
            child = self._children[value] = LoopHistogram.Child(self.bounds)
        return child

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=[self.label])
        for value, child in list(self._children.items()):
            total, buckets = 0, []
            for bound, count in zip(self.bounds, child.counts, strict=True):
                total += count
                buckets.append((floatToGoString(bound), total))
            family.add_metric([value], buckets, child.sum)
        yield family

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=[self.label])


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("parley")
    except PackageNotFoundError:
        return "unknown"


class Metrics:
    """All of Parley's metrics for one app instance."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        # process_* (CPU, memory, open fds, start time) and python_info: what every dashboard expects
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.build = Info("parley_build", "The running Parley: version and protocol", registry=r)
        self.build.info({"version": _version(), "protocol": PROTOCOL_VERSION})
        self.connections = Gauge("parley_connections", "Open WebSocket connections", registry=r)
        self.connections_opened = Counter(
            "parley_connections_opened", "WebSocket connections accepted", registry=r
        )
        self.closes = Counter(
            "parley_connection_closes",
            "Connections closed by the server, by close code",
            ["code"],
            registry=r,
        )
        self.sessions_created = Counter("parley_sessions_created", "New sessions opened", registry=r)
        self.sessions_active = Gauge(
            "parley_sessions_active", "Sessions with at least one connection on this instance", registry=r
        )
        self.generations_running = Gauge(
            "parley_generations_running", "Responses generating on this instance", registry=r
        )
        self.ttft = LoopHistogram(
            "parley_ttft_seconds", "Time to first token", "provider", TTFT_BUCKETS, registry=r
        )
        self.inter_token = LoopHistogram(
            "parley_inter_token_seconds",
            "Gap between consecutive tokens from the model",
            "provider",
            GAP_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "parley_tokens",
            "Model tokens, by direction (input, output)",
            ["provider", "direction"],
            registry=r,
        )
        self.responses = Counter(
            "parley_responses", "Finished responses, by finish_reason", ["finish_reason"], registry=r
        )
        self.errors = Counter(
            "parley_errors",
            "Errors told to clients (error events and model errors), by code",
            ["code"],
            registry=r,
        )
        self.resumes = Counter(
            "parley_resumes",
            "Resume attempts, by outcome (replayed, snapshot, not_found, refused)",
            ["outcome"],
            registry=r,
        )
        self.rate_limited = Counter(
            "parley_rate_limited",
            "Requests refused by a limit, by kind and scope",
            ["kind", "scope"],
            registry=r,
        )
        self.auth_failures = Counter(
            "parley_auth_failures", "Handshakes refused or connections closed for a bad token", registry=r
        )
        self.store_latency = LoopHistogram(
            "parley_redis_latency_seconds",
            "Latency of session-store operations on Redis, by operation",
            "op",
            STORE_BUCKETS,
            registry=r,
        )
        self.store_errors = Counter(
            "parley_redis_errors", "Session-store operations that failed, by operation", ["op"], registry=r
        )
        self.webhooks = WebhookMetrics(r)

    def watch_store(self, health: Any) -> None:
        """The session store's outage counters (``sessions/outage.py``), read when scraped."""
        self.registry.register(StoreHealthCollector(health))

    def expose(self) -> bytes:
        return generate_latest(self.registry)

    def watch(
        self, *, connections: Callable[[], int], sessions: Callable[[], int], running: Callable[[], int]
    ) -> None:
        """Read the live gauges from the app's own state when scraped."""
        self.connections.set_function(connections)
        self.sessions_active.set_function(sessions)
        self.generations_running.set_function(running)


class WebhookMetrics:
    """Webhook deliveries of async jobs (server/webhooks.py)."""

    def __init__(self, r: CollectorRegistry) -> None:
        self.deliveries = Counter(
            "parley_webhook_deliveries",
            "Webhook deliveries finished, by outcome (delivered, failed)",
            ["outcome"],
            registry=r,
        )
        self.attempts = Counter(
            "parley_webhook_attempts", "Webhook POSTs sent (each retry counts)", registry=r
        )
        self.failures = Counter(
            "parley_webhook_failures",
            "Webhook attempts without a 2xx, by reason (status, timeout, network, refused)",
            ["reason"],
            registry=r,
        )


class StoreHealthCollector:
    """Outage time, failed writes and lost sessions of the session store, from its ``StoreHealth``."""

    def __init__(self, health: Any) -> None:
        self.health = health

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        h = self.health
        yield GaugeMetricFamily("parley_store_up", "1 while the session store is reachable", value=int(h.up))
        for name, doc, value in (
            ("parley_store_outage_seconds", "Time the session store was unreachable", h.outage_total),
            ("parley_store_outages", "Times the session store became unreachable", h.outages),
            ("parley_store_writes_failed", "Store writes that failed (each retry counts)", h.writes_failed),
            ("parley_store_writes_dropped", "Store writes given up after failing", h.writes_dropped),
            ("parley_sessions_lost", "Sessions read here whose state the store lost", h.sessions_lost),
        ):
            yield CounterMetricFamily(name, doc, value=value)

    def describe(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        return self.collect()


class MeteredProvider:
    """A ``ModelProvider`` that observes ttft, inter-token gaps, tokens and model errors."""

    def __init__(self, inner: ModelProvider, metrics: Metrics) -> None:
        self.inner = inner
        self.name = inner.name
        self.metrics = metrics

    async def stream(self, request: ModelRequest) -> AsyncIterator[ProviderEvent]:
        m, label = self.metrics, self.name
        ttft, gap = m.ttft.labels(label), m.inter_token.labels(label)  # looked up once, not per token
        started = time.monotonic()
        last: float | None = None
        count = 0
        usage: UsageReport | None = None
        try:
            async for ev in self.inner.stream(request):
                if isinstance(ev, TextDelta) and ev.text:
                    now = time.monotonic()
                    if last is None:
                        ttft.observe(now - started)
                    else:
                        gap.observe(now - last)
                    last = now
                    count += 1
                elif isinstance(ev, UsageReport):
                    usage = ev
                yield ev
        except ParleyError as exc:
            m.errors.labels(exc.code.value).inc()
            raise
        finally:
            out = usage.output_tokens if usage is not None else count
            m.tokens.labels(label, "output").inc(out)
            if usage is not None:
                m.tokens.labels(label, "input").inc(usage.input_tokens)

    async def aclose(self) -> None:
        await self.inner.aclose()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class MeteredStore:
    """Wraps a ``SessionStore``: every coroutine method is timed into ``parley_redis_latency_seconds``."""

    def __init__(self, inner: Any, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not inspect.iscoroutinefunction(attr) or name in ("start", "close"):
            return attr
        observe = self._metrics.store_latency.labels(name).observe
        failed = self._metrics.store_errors.labels(name)

        @functools.wraps(attr)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await attr(*args, **kwargs)
            except ParleyError:
                failed.inc()
                raise
            finally:
                observe(time.perf_counter() - t0)

        self.__dict__[name] = timed  # built once per method
        return timed
