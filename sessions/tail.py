"""Tail a session's log from a seq: replay what is stored, then go live, with no gap.

Resume, a second tab and reconnecting to another instance are all this one
operation. The subscriber is registered *before* the replay read, so an event
logged during the replay is either in the read or in the live buffer; seq
dedupe makes both at once harmless, and any hole in live delivery is filled
from the log.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from .fanout import Subscriber
from .keys import REPLAY_CHUNK
from .store import LogEntry, SessionStore


class SlowConsumer(Exception):
    """The reader fell further behind than its buffer allows."""


class LogGap(Exception):
    """The log no longer holds events the reader needs (trimmed or expired)."""


async def replay(store: SessionStore, session_id: str, after_seq: int) -> AsyncIterator[list[LogEntry]]:
    """Stored entries with seq > after_seq, in chunks; raises ``LogGap`` if some are gone."""
    last = after_seq
    while True:
        batch = await store.read(session_id, last, REPLAY_CHUNK)
        if not batch:
            return
        if batch[0].seq != last + 1:
            raise LogGap(f"log starts at {batch[0].seq}, need {last + 1}")
        yield batch
        last = batch[-1].seq
        if len(batch) < REPLAY_CHUNK:
            return


async def tail(
    store: SessionStore, sub: Subscriber, after_seq: int, idle_timeout: float | None = None
) -> AsyncIterator[list[LogEntry]]:
    """Contiguous batches of entries with seq > after_seq, forever (until cancelled).

    An empty batch means nothing arrived for ``idle_timeout`` seconds: time for a heartbeat.
    """
    last = after_seq
    async for batch in replay(store, sub.session_id, last):
        yield batch
        last = batch[-1].seq
    while True:
        live = await sub.wait(idle_timeout)
        if sub.overflowed:
            raise SlowConsumer(sub.session_id)
        if sub.resync:
            sub.resync = False
            async for batch in replay(store, sub.session_id, last):
                yield batch
                last = batch[-1].seq
        out: list[LogEntry] = []
        for entry in live:
            if entry.seq <= last:
                continue
            if entry.seq > last + 1:  # a hole in live delivery: the log has it
                if out:
                    yield out
                    out = []
                async for batch in replay(store, sub.session_id, last):
                    filled = [e for e in batch if e.seq < entry.seq]
                    if filled:
                        yield filled
                        last = filled[-1].seq
                    if batch[-1].seq >= entry.seq - 1:
                        break
                if entry.seq != last + 1:
                    raise LogGap(f"missing events before {entry.seq}")
            out.append(entry)
            last = entry.seq
        if out or not live:
            yield out
