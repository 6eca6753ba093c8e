"""Faults are logged once and usefully: a Redis outage under load, a client's protocol violation."""

from __future__ import annotations

import asyncio
import json
import signal
import struct
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from parley.client import ParleyClient

from .support import RedisServer, ServerProcess

pytestmark = pytest.mark.slow

OUTAGE_S = 10.0
STREAMS = 10


def lines_after(proc: ServerProcess, offset: int) -> list[dict[str, Any]]:
    return [json.loads(x) for x in proc.log()[offset:].splitlines() if x.strip()]


def metric(proc: ServerProcess, name: str) -> float:
    text = httpx.get(f"{proc.http}/metrics", timeout=2).text
    return float(next(x for x in text.splitlines() if x.startswith(name + " ")).split()[1])


async def test_a_redis_outage_under_load_is_a_handful_of_lines(tmp_path: Path) -> None:
    """A 10 s outage under load: a warning naming address and cause, one when back, no traceback."""
    redis = RedisServer(dir=str(tmp_path), persist=True)
    redis.start()
    proc = ServerProcess(
        {
            "PARLEY_STORE": redis.url,
            "PARLEY_ECHO_TOKENS_PER_SECOND": "20",
            "PARLEY_ECHO_REPLY_TOKENS": "600",
            "PARLEY_LOG_LEVEL": "info",
        }
    )
    proc.start()
    clients = [ParleyClient(proc.url) for _ in range(STREAMS)]
    try:
        for c in clients:
            await c.connect()
            await c.send("a long reply through an outage")
            await c.next_event("response.delta")
        offset = len(proc.log())
        redis.stop(signal.SIGKILL)
        down = time.monotonic()
        answers = []
        while time.monotonic() - down < OUTAGE_S:  # load meanwhile: sends and new sessions, bounded
            await clients[0].send("while down")
            answers.append((await clients[0].next_event("error", timeout=5))["code"])
            with pytest.raises(Exception):  # noqa: B017 (a refused open is the point)
                await asyncio.wait_for(ParleyClient(proc.url, auto_resume=False).connect(), 5)
            await asyncio.sleep(0.5)  # the load's pace, not synchronization
        redis.start()
        deadline = time.monotonic() + 15
        while "reachable again" not in proc.log()[offset:]:
            assert time.monotonic() < deadline, proc.log()[offset:][-3000:]
            await asyncio.sleep(0.05)
        for c in clients:  # every reply goes on to its end
            while not c.completed:
                await c.next_event(timeout=40)
        lines = lines_after(proc, offset)
        assert set(answers) <= {"upstream_unavailable", "busy"}
    finally:
        for c in clients:
            await c.close()
        proc.stop(signal.SIGKILL)
        redis.stop()
    loud = [x for x in lines if x["level"] in ("warning", "error", "critical")]
    assert len(loud) <= 4, "\n".join(json.dumps(x) for x in loud)
    assert not [x for x in lines if "exc" in x or "Traceback" in x["msg"]]
    outage = [x for x in loud if x["logger"] == "parley.redis"]
    lost, back = outage[0], outage[-1]
    assert lost["msg"].startswith(f"session store unreachable at 127.0.0.1:{redis.port} (")
    assert lost["store"] == f"127.0.0.1:{redis.port}" and lost["cause"]
    assert back["msg"].startswith("session store reachable again") and back["outage_s"] >= OUTAGE_S - 1
    assert back["writes_retried"] > 0
    print(f"{len(lines)} lines in the outage ({len(loud)} warnings): " + "; ".join(x["msg"] for x in loud))


async def test_outage_time_and_failed_writes_are_metrics(tmp_path: Path) -> None:
    """/metrics counts the outage's seconds and the writes that failed during it."""
    redis = RedisServer(dir=str(tmp_path), persist=True)
    redis.start()
    proc = ServerProcess({"PARLEY_STORE": redis.url, "PARLEY_ECHO_TOKENS_PER_SECOND": "20"})
    proc.start()
    try:
        assert metric(proc, "parley_store_up") == 1 and metric(proc, "parley_store_outages_total") == 0
        async with ParleyClient(proc.url) as c:
            await c.send("through a short outage")
            await c.next_event("response.delta")
            redis.stop(signal.SIGKILL)
            deadline = time.monotonic() + 10
            failed = "parley_store_writes_failed_total"
            while metric(proc, "parley_store_up") != 0 or metric(proc, failed) == 0:
                assert time.monotonic() < deadline, "the outage (or the reply's failing writes) not counted"
                await asyncio.sleep(0.05)
            redis.start()
            while metric(proc, "parley_store_up") != 1:
                assert time.monotonic() < deadline + 10, "the recovery was not noticed"
                await asyncio.sleep(0.05)
        assert metric(proc, "parley_store_outages_total") == 1
        assert metric(proc, "parley_store_outage_seconds_total") > 0
    finally:
        proc.stop(signal.SIGKILL)
        redis.stop()


def masked_text_frame(payload: bytes) -> bytes:
    """One client text frame (FIN, opcode 1), masked as RFC 6455 requires, with any payload bytes."""
    mask = b"\x01\x02\x03\x04"
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return struct.pack("!BB", 0x81, 0x80 | len(payload)) + mask + body


async def test_invalid_utf8_is_one_info_line_and_close_1007() -> None:
    """A text frame with invalid UTF-8 closes 1007 and logs one info line, not an error with a traceback."""
    proc = ServerProcess({"PARLEY_STORE": "memory://", "PARLEY_LOG_LEVEL": "info"})
    proc.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proc.port)
        writer.write(
            (
                f"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1:{proc.port}\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            ).encode()
        )
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 101")
        writer.write(masked_text_frame(b"\xff\xfe not utf-8"))
        frame = await asyncio.wait_for(reader.read(4), 5)
        assert frame[0] == 0x88 and struct.unpack("!H", frame[2:4])[0] == 1007
        writer.close()
        deadline = time.monotonic() + 5
        while "client protocol error" not in proc.log():
            assert time.monotonic() < deadline, proc.log()[-2000:]
            await asyncio.sleep(0.05)
        lines = [json.loads(x) for x in proc.log().splitlines() if x.strip()]
    finally:
        proc.stop(signal.SIGKILL)
    told = [x for x in lines if "client protocol error" in x["msg"]]
    assert len(told) == 1 and told[0]["level"] == "info" and "UTF-8" in told[0]["msg"]
    assert not [x for x in lines if "exc" in x or x["level"] in ("error", "critical")]
