"""The handshake deadline and the per-address cap: stalled handshakes are closed, a normal client gets in."""

from __future__ import annotations

import asyncio
import pickle
import signal
import time
from collections.abc import Iterator

import pytest

from parley.client import ParleyClient
from parley.server import handshake
from parley.server.settings import Settings

from .support import ServerProcess

STALLED = 200  # bounded: loopback only, well under the process's file descriptor limit


def test_the_uvicorn_fence_holds() -> None:
    """The installed uvicorn is inside the fence: version range, and every method the protocol relies on."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    assert handshake.supported()
    cls = handshake.protocol_class(Settings())
    assert cls is handshake.DeadlineProtocol and issubclass(cls, HttpToolsProtocol)
    for name in handshake.HOOKS:
        assert callable(getattr(HttpToolsProtocol, name)), name
    assert pickle.loads(pickle.dumps(cls)) is cls  # --workers pickles the uvicorn config naming it


def server(**env: str) -> ServerProcess:
    p = ServerProcess({"PARLEY_STORE": "memory://", "PARLEY_ECHO_TOKENS_PER_SECOND": "0", **env})
    p.start()
    return p


@pytest.fixture
def quick() -> Iterator[ServerProcess]:
    p = server(PARLEY_HANDSHAKE_TIMEOUT_MS="1000")
    yield p
    p.stop(signal.SIGKILL)


async def stall(port: int, partial: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if partial:
        writer.write(partial)
        await writer.drain()
    return reader, writer


async def closed_after(reader: asyncio.StreamReader, limit: float) -> bytes:
    """Everything the server sent before closing; fails if it is still open after ``limit`` s."""
    return await asyncio.wait_for(reader.read(), limit)


@pytest.mark.slow
async def test_stalled_handshakes_are_closed_within_the_deadline(quick: ServerProcess) -> None:
    """Many connections that send nothing or half a request are closed within the deadline; others get in."""
    partials = [b"", b"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\n", b"GE"]
    opened = time.monotonic()
    conns = [await stall(quick.port, partials[i % 3]) for i in range(STALLED)]
    async with ParleyClient(quick.url) as c:  # a normal client meanwhile
        assert (await c.ask("still serving")).finish_reason == "stop"
    answers = await asyncio.gather(*(closed_after(r, 5) for r, _ in conns))
    elapsed = time.monotonic() - opened
    assert elapsed < 1.0 + 3.0, f"stalled handshakes closed after {elapsed:.2f} s (deadline 1 s)"
    assert all(a == b"" or a.startswith(b"HTTP/1.1 408 ") for a in answers)
    for _, w in conns:
        w.close()
    assert "Traceback" not in quick.log()


@pytest.mark.slow
async def test_a_kept_alive_connection_gets_the_deadline_again(quick: ServerProcess) -> None:
    """After a response, half of a second request on the same connection is closed within the deadline."""
    reader, writer = await stall(quick.port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert (await asyncio.wait_for(reader.readuntil(b"ok"), 5)).startswith(b"HTTP/1.1 200")
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 1")
    assert (await closed_after(reader, 5)).startswith(b"HTTP/1.1 408 ")
    writer.close()


@pytest.mark.slow
async def test_pending_handshakes_per_address_are_capped() -> None:
    """Over the cap a new connection gets 503 at once; ready sessions do not count; the cap frees again."""
    p = server(PARLEY_HANDSHAKE_TIMEOUT_MS="2000", PARLEY_MAX_PENDING_PER_ADDRESS="20")
    try:
        ready = [ParleyClient(p.url) for _ in range(25)]  # more than the cap, each at session.ready
        for c in ready:
            await c.connect()
        conns = [await stall(p.port, b"GET / HTTP/1.1\r\n") for _ in range(20)]
        reader, writer = await stall(p.port, b"")
        assert (await closed_after(reader, 2)).startswith(b"HTTP/1.1 503 ")
        writer.close()
        await asyncio.gather(*(closed_after(r, 5) for r, _ in conns))  # the deadline frees the address
        async with ParleyClient(p.url) as late:
            assert late.session_id
        for c in ready:
            await c.close()
        assert "refusing connections from 127.0.0.1" in p.log()
    finally:
        p.stop(signal.SIGKILL)
