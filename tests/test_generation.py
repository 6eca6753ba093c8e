"""The delta writer's coalescing and its writes in flight, driven directly against a store."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from server.generation import DeltaWriter, Generation
from sessions import open_store
from sessions.memory import MemoryStore

from .test_store import accept


async def logged_texts(store: Any, sid: str) -> list[str]:
    entries = await store.read(sid, 0, 100)
    events = [json.loads(e.data) for e in entries]
    return [ev["text"] for ev in events if ev["type"] == "response.delta"]


@pytest.mark.parametrize(
    ("busy_writes", "piled", "expected"),
    [(3, True, ["a ", "b c "]), (4, True, ["a ", "b ", "c "]), (3, False, ["a ", "b ", "c "])],
)
async def test_text_piled_up_during_a_write_opens_the_busy_window(
    busy_writes: int, piled: bool, expected: list[str]
) -> None:
    """When ``busy_writes`` sessions' text piled up while a write was in flight, the writer waits its
    busy window, so text added over several loop turns becomes one delta; with less piled up (however
    large the write itself), each piece goes out on its own."""
    store = MemoryStore()
    sids = ["s0", "s1", "s2"]
    for sid in sids:
        await store.create_session(sid, "t", "u", "h")
        await accept(store, sid)
    writer = DeltaWriter(store, busy_ms=50, busy_writes=busy_writes)
    request: Any = None
    gens = [Generation(sid, "r1", request, request) for sid in sids]

    written = asyncio.Event()

    class Tokens:
        """A reader of s0 that hands every session its next text while the write of "a " runs."""

        def deliver(self, entries: list[Any]) -> bool:
            if piled and not written.is_set():
                written.set()
                for g in gens:
                    writer.add(g, "b ")
            return True

        def wake(self) -> None:
            pass

    store.fanout.subscribe("s0").listener = Tokens()
    writer.start()
    try:
        for g in gens:
            writer.add(g, "a ")
        if piled:
            await written.wait()  # "a " is being written; "b " of all three piles up meanwhile
        else:
            await gens[0].flushed.wait()
            writer.add(gens[0], "b ")
        for _ in range(20):  # loop turns enough for an idle writer to flush "b " alone
            await asyncio.sleep(0)
        writer.add(gens[0], "c ")
        await gens[0].flushed.wait()
        assert await logged_texts(store, "s0") == expected
    finally:
        await writer.stop()


def evalsha_calls(redis_server: Any) -> int:
    """Script calls Redis ran (a NOSCRIPT refusal, answered by loading the script and calling again,
    is a failed call)."""
    stats = redis_server.command("INFO", "commandstats")
    line = next(ln for ln in stats.splitlines() if ln.startswith("cmdstat_evalsha:"))
    fields = dict(kv.split("=") for kv in line.split(":", 1)[1].split(","))
    return int(fields["calls"]) - int(fields["failed_calls"])


async def test_text_arriving_during_a_write_leaves_in_a_second_write_and_keeps_each_session_in_order(
    redis_url: str, redis_server: Any
) -> None:
    """While Redis holds a write, another session's new text leaves in a second write without waiting
    for the first reply, and new text of the session in flight waits for its reply (stays in order)."""
    store = open_store(redis_url)
    await store.start()
    for sid in ("A", "B"):
        await store.create_session(sid, "t", "u", "h")
        await accept(store, sid, now=int(time.time() * 1000))  # a live lease: the reaper leaves it be
    writer = DeltaWriter(store)
    request: Any = None
    a, b = Generation("A", "r1", request, request), Generation("B", "r1", request, request)
    writer.start()
    calls = evalsha_calls(redis_server)
    redis_server.command("CLIENT", "PAUSE", "10000", "WRITE")  # scripts wait in Redis until unpaused
    try:
        writer.add(a, "a1 ")
        for _ in range(1000):  # bounded: until the writer has taken A's text into a write
            if writer._sending:
                break
            await asyncio.sleep(0)
        writer.add(a, "a2 ")
        writer.add(b, "b1 ")
        for _ in range(1000):  # bounded: until B's text is in a second write while A's is out
            if b in writer._sending:
                break
            await asyncio.sleep(0)
        assert writer._sending == {a, b}
        redis_server.command("CLIENT", "UNPAUSE")
        await a.flushed.wait()
        await b.flushed.wait()
        assert evalsha_calls(redis_server) - calls == 3  # [a1], [b1] in flight together, then [a2]
        assert await logged_texts(store, "A") == ["a1 ", "a2 "]
        assert await logged_texts(store, "B") == ["b1 "]
    finally:
        redis_server.command("CLIENT", "UNPAUSE")
        await writer.stop()
        await store.close()
