"""Shared fixtures: one real redis-server per test session, stores of both kinds, live servers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from parley.sessions import SessionStore, open_store

from .support import RedisCluster, RedisServer, live_server

STORE_KINDS = ["memory", "redis"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Browser tests (sync Playwright) run last, after every asyncio test."""
    items.sort(key=lambda item: "tests/browser/" in str(item.path).replace("\\", "/"))


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    cluster = RedisCluster()
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A clean database on the session's redis-server (restarted if a test stopped it)."""
    if redis_server.proc is None:
        redis_server.start()
    redis_server.command("FLUSHALL")
    return redis_server.url


def store_url(kind: str, request: pytest.FixtureRequest) -> str:
    if kind == "memory":
        return "memory://"
    if kind == "cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        cluster.flush()
        return cluster.url
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture(params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=[*STORE_KINDS, "cluster"])
def any_store_kind(request: pytest.FixtureRequest) -> str:
    """The store suite also runs against a real three-node Redis Cluster."""
    return str(request.param)


@pytest.fixture
async def store(any_store_kind: str, request: pytest.FixtureRequest) -> AsyncIterator[SessionStore]:
    s = open_store(store_url(any_store_kind, request), log_max_len=50)
    await s.start()
    yield s
    await s.close()


@pytest.fixture
def server_factory(store_kind: str, request: pytest.FixtureRequest) -> Any:
    """Build a live server on the parametrized store with settings overrides."""
    url = store_url(store_kind, request)

    def make(**overrides: Any) -> Any:
        base: dict[str, Any] = {"store": url, "echo_tokens_per_second": 500.0, "echo_reply_tokens": 20}
        base.update(overrides)
        return live_server(**base)

    return make


@pytest.fixture
async def server(server_factory: Any) -> AsyncIterator[Any]:
    async with server_factory() as live:
        yield live
