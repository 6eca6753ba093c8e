"""Browser fixtures: real ``parley serve`` processes, a real redis-server, Chromium via Playwright.

Everything here is a real process on a real socket; the only polling is bounded
start-up readiness (a port answering, ``/healthz`` returning 200).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .harness import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, FreezingProxy, PageProbe, Parley, Redis, watch

# ------------------------------------------------------------------- redis


@pytest.fixture
def redis() -> Iterator[Redis]:
    r = Redis()
    yield r
    r.stop()


# ------------------------------------------------------------------- parley


@pytest.fixture
def parley_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., Parley]]:
    """Start servers on demand; stopped (and their logs attached on failure) afterwards."""
    started: list[Parley] = []

    def make(store: str = "memory://", **env: str) -> Parley:
        p = Parley(store, {f"PARLEY_{k.upper()}": str(v) for k, v in env.items()})
        p.start()
        started.append(p)
        return p

    yield make
    for p in started:
        p.stop()
    rep = getattr(request.node, "rep_call", None)
    failed = rep is None or rep.failed
    for p in started:
        if failed:
            sys.stderr.write(f"\n----- parley serve log (port {p.port}) -----\n{p.log()[-8000:]}\n")
        for log in p.logs:
            log.unlink(missing_ok=True)


@pytest.fixture
def parley(parley_factory: Callable[..., Parley]) -> Parley:
    """One server on the in-memory store."""
    return parley_factory()


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


# ------------------------------------------------------------------- a freezable TCP proxy


@pytest.fixture
def freezing_proxy() -> Iterator[Callable[[int], FreezingProxy]]:
    proxies: list[FreezingProxy] = []

    def make(upstream_port: int) -> FreezingProxy:
        p = FreezingProxy(upstream_port)
        proxies.append(p)
        return p

    yield make
    for p in proxies:
        p.close()


# ------------------------------------------------------------------- browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Module-scoped: sync Playwright keeps its event loop current while open, which async tests
    in other modules must not inherit."""
    import playwright.sync_api as sync_api

    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM} (scripts/test installs it; or set PARLEY_CHROMIUM)")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 1024, "height": 800})
    ctx.set_default_timeout(15_000)
    yield ctx
    ctx.close()


@pytest.fixture
def probe() -> PageProbe:
    return PageProbe()


@pytest.fixture
def page(context: Any, probe: PageProbe) -> Iterator[Any]:
    pg = context.new_page()
    watch(pg, probe)
    yield pg
    assert not probe.errors, f"uncaught page errors: {probe.errors}"


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where screenshots go: ``artifacts/browser`` at the repo root (gitignored), or $PARLEY_ARTIFACTS_DIR."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
