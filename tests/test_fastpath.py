"""The fenced speed tricks (server/fastpath/, sessions/fastpath.py): on with the tested libraries, whose
private names still exist; off, with one warning, outside the tested range."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from parley.server import fastpath
from parley.server.fastpath import uvicorn_ws
from parley.sessions import fastpath as store_fastpath
from parley.sessions.fastpath import trick, version_of


def test_every_trick_is_on_with_the_installed_libraries() -> None:
    """CI installs versions inside every tested range: a trick that is off here means an upgrade broke it."""
    installed = {t.library: version_of(t.library) for t in fastpath.TRICKS}
    if installed["redis"] < (7, 2):  # DriverInfo does not exist before 7.2: nothing to save there
        assert not store_fastpath.DRIVER.on and store_fastpath.client_options() == {}
        tricks = [t for t in fastpath.TRICKS if t is not store_fastpath.DRIVER]
    else:
        tricks = list(fastpath.TRICKS)
    assert [t.name for t in tricks if not t.on] == []


async def test_uvicorn_protocol_objects_have_every_name_the_direct_path_reads() -> None:
    """A real uvicorn sans-I/O protocol object has the private attributes ``writable()`` reads."""
    if not uvicorn_ws.DIRECT.on:
        pytest.fail(f"the direct path is off: {uvicorn_ws.DIRECT.reason}")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        pass

    config = Config(app=app)
    config.load()
    proto = uvicorn_ws.WebSocketsSansIOProtocol(config=config, server_state=ServerState(), app_state={})
    missing = [name for name in uvicorn_ws.USED_NAMES if not hasattr(proto, name)]
    assert missing == []
    assert isinstance(proto.writable, asyncio.Event) and proto.conn.state is uvicorn_ws.State.CONNECTING
    assert proto.conn.extensions == []


def test_asyncio_futures_have_the_flag_the_inline_send_clears() -> None:
    """``_finish`` takes over a future the way asyncio's Task does: the private flag must exist."""
    loop = asyncio.new_event_loop()
    try:
        assert hasattr(loop.create_future(), "_asyncio_future_blocking")
    finally:
        loop.close()


def test_hiredis_packing_writes_the_bytes_redis_py_writes() -> None:
    """The store's C command packer produces byte-for-byte what redis-py's own packer does."""
    import redis.asyncio as aioredis

    plain = aioredis.Connection()
    fast = store_fastpath.with_hiredis_packing(aioredis.Connection)()
    assert isinstance(fast, store_fastpath.HiredisPacking)
    commands = [
        ("EVALSHA", "a" * 40, 2, "parley:{s1}:meta", "parley:{s1}:log", "ünïcødé 🦊", 10_000, b"\x00raw"),
        ("SCRIPT LOAD", "return 1"),
        ("ZADD", "parley:sessions", *(x for i in range(300) for x in (1_700_000_000 + i, f"s{i}"))),
        ("SET", "k", "x" * 100_000),  # past redis-py's buffer cutoff
    ]
    for cmd in commands:
        assert b"".join(fast.pack_command(*cmd)) == b"".join(plain.pack_command(*cmd))


def test_a_library_outside_the_tested_range_turns_a_trick_off() -> None:
    """A version past the tested range (or a missing name) gives an off trick saying why."""
    newer = trick("t", "redis", (5, 0), (9, 0), names_ok=True, version=(9, 1, 0))
    assert not newer.on and "9.1.0 is outside >=5.0,<9.0" in newer.reason
    renamed = trick("t", "redis", (5, 0), (9, 0), names_ok=False, version=(8, 2, 0))
    assert not renamed.on and "no longer has" in renamed.reason
    assert trick("t", "redis", (5, 0), (9, 0), names_ok=True, version=(8, 2, 0)).on


def test_check_warns_once_naming_the_tricks_that_are_off(
    caplog: pytest.LogCaptureFixture, monkeypatch: Any
) -> None:
    """At start-up one warning lists every trick that is off; a second check says nothing more."""
    off = trick("direct frames", "uvicorn", (0, 50), (0, 56), names_ok=True, version=(0, 60, 0))
    monkeypatch.setattr(fastpath, "TRICKS", (off,))
    monkeypatch.setattr(fastpath, "_warned", False)
    with caplog.at_level(logging.WARNING, logger="parley.fastpath"):
        assert fastpath.check() == [off]
        fastpath.check()
    (record,) = caplog.records
    assert "direct frames (uvicorn 0.60.0 is outside >=0.50,<0.56)" in record.getMessage()
