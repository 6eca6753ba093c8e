"""Tail a session's log from a seq: replay what is stored, then go live, with no gap.

Resume, a second tab and reconnecting to another instance are all this one
operation. The subscriber is registered *before* the replay read, so an event
logged during the replay is either in the read or in the live buffer; seq
dedupe makes both at once harmless, and any hole in live delivery is filled
from the log.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from parley.protocol.errors import SessionLost

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


def fresh(entries: list[LogEntry], last_seq: int) -> tuple[list[LogEntry], int]:
    """The entries that continue ``last_seq`` without a hole (older ones dropped), and the seq of the
    first entry past a hole, else 0: live delivery missed the events before it; the log has them."""
    out: list[LogEntry] = []
    for entry in entries:
        if entry.seq <= last_seq:
            continue
        if entry.seq != last_seq + 1:
            return out, entry.seq
        out.append(entry)
        last_seq = entry.seq
    return out, 0


async def tail(
    store: SessionStore, sub: Subscriber, after_seq: int, idle_timeout: float | None = None
) -> AsyncIterator[list[LogEntry]]:
    """Contiguous batches of entries with seq > after_seq, forever (until cancelled).

    An empty batch means nothing arrived for ``idle_timeout`` seconds: time for a heartbeat.
    ``SessionLost`` when the store lost the session's state (``Fanout.lose``).
    """
    last = after_seq
    must_read, needed = True, 0  # the log first, then live entries; the log again after a resync or hole
    while True:
        if must_read or sub.resync:
            sub.resync = False
            async for batch in replay(store, sub.session_id, last):
                yield batch
                last = batch[-1].seq
            if last < needed:
                raise LogGap(f"missing events before {needed}")
        live = await sub.wait(idle_timeout)
        if sub.lost:
            raise SessionLost()
        if sub.overflowed:
            raise SlowConsumer(sub.session_id)
        out, needed = fresh(live, last)
        must_read = needed > 0
        if out:
            yield out
            last = out[-1].seq
        elif not live and not sub.resync:
            yield out
