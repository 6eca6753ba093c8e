"""The delta writer's coalescing, driven directly against the in-process store (no I/O to wait on)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from server.generation import DeltaWriter, Generation
from sessions.memory import MemoryStore

from .test_store import accept


async def logged_texts(store: MemoryStore, sid: str) -> list[str]:
    entries = await store.read(sid, 0, 100)
    events = [json.loads(e.data) for e in entries]
    return [ev["text"] for ev in events if ev["type"] == "response.delta"]


@pytest.mark.parametrize(("busy_writes", "expected"), [(3, ["a ", "b c "]), (100, ["a ", "b ", "c "])])
async def test_after_a_busy_flush_the_writer_merges_a_sessions_next_text(
    busy_writes: int, expected: list[str]
) -> None:
    """After a flush of at least ``busy_writes`` deltas the writer waits its busy window, so text added
    over several loop turns becomes one delta; after a smaller flush each piece goes out on its own."""
    store = MemoryStore()
    sids = ["s0", "s1", "s2"]
    for sid in sids:
        await store.create_session(sid, "t", "u", "h")
        await accept(store, sid)
    writer = DeltaWriter(store, busy_ms=50, busy_writes=busy_writes)
    writer.start()
    try:
        request: Any = None
        gens = [Generation(sid, "r1", request, request) for sid in sids]
        for g in gens:
            writer.add(g, "a ")
        await gens[0].flushed.wait()  # one flush of three deltas
        writer.add(gens[0], "b ")
        for _ in range(20):  # loop turns enough for an idle writer to flush "b " alone
            await asyncio.sleep(0)
        writer.add(gens[0], "c ")
        await gens[0].flushed.wait()
        assert await logged_texts(store, "s0") == expected
    finally:
        await writer.stop()
