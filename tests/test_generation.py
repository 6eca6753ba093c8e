"""The delta writer's coalescing, driven directly against the in-process store (no I/O to wait on)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from parley.server.generation import DeltaWriter, Generation
from parley.sessions.memory import MemoryStore

from .test_store import accept


async def logged_texts(store: MemoryStore, sid: str) -> list[str]:
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
