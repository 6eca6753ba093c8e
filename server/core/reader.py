"""``SessionReader``: one client's view of its session's log, from a cursor, written to a ``Sink``.

The reader owns the cursor (``last_seq``) and the one rule every transport relies on:
every logged event with ``seq > last_seq`` reaches the sink once, in order, with no
gap. It subscribes to the fan-out *before* its first read of the log, so an event
logged meanwhile is in the read or in the live buffer (seq dedupe makes both harmless).

Once caught up it is ``LIVE``: the fan-out offers it each new entry synchronously
(``deliver``) and it hands the frames to ``Sink.try_write`` at once: no task of its
own. Whatever cannot be written at once goes to a catch-up task that exists only while
needed (``CATCHING_UP``): the replay after opening, a hole in live delivery (read from
the log), a resync after a Redis reconnect, events that arrive while an ephemeral
frame (an error, a pong) holds the sink, and a write the peer pushed back on (finished
under the send deadline). The task ends, with no await between its last check and the
hand-over, when the buffer is empty, so no event falls between the two paths. While
the store is unreachable it waits (``WAITING_FOR_STORE``, heartbeats go on) and
re-reads from the cursor; a longer outage closes (1001) and the client resumes.

A client that stops reading (a write past ``send_timeout_ms``) or falls further
behind than its buffer allows is a slow consumer: 4009; its session goes on.

States and the transitions allowed (anything else is a bug and raises)::

    OPENING ──► LIVE ◄──► CATCHING_UP ◄──► WAITING_FOR_STORE
       │         │             │                  │
       └─────────┴──────► CLOSED ◄────────────────┘
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from parley.protocol import encode, error_event
from parley.protocol.errors import CloseCode, InvalidMessage, ParleyError, SessionLost
from parley.protocol.messages import Heartbeat, SessionSnapshot, Turn
from parley.sessions import LogEntry, LogGap, SessionStore, SlowConsumer, Subscriber, fresh, replay
from parley.sessions.keys import REPLAY_CHUNK

from ..metrics import Metrics
from ..service import OpenedSession
from .sink import Sink, SinkClosed, SlowPeer

log = logging.getLogger("parley.reader")

#: A reader whose store reads fail retries this often, for up to this long, before closing (1001).
STORE_RETRY_S = 0.2
STORE_OUTAGE_GRACE_S = 30.0


class ReaderState(enum.Enum):
    OPENING = "opening"  # subscribed, the session not announced yet: live entries are buffered
    LIVE = "live"  # caught up: the fan-out's entries go straight to the sink
    CATCHING_UP = "catching_up"  # the catch-up task writes what live delivery could not
    WAITING_FOR_STORE = "waiting_for_store"  # the catch-up task waits out a store outage
    CLOSED = "closed"  # nothing more is delivered


_NEXT: dict[ReaderState, frozenset[ReaderState]] = {
    ReaderState.OPENING: frozenset({ReaderState.LIVE, ReaderState.CATCHING_UP, ReaderState.CLOSED}),
    ReaderState.LIVE: frozenset({ReaderState.CATCHING_UP, ReaderState.CLOSED}),
    ReaderState.CATCHING_UP: frozenset({ReaderState.LIVE, ReaderState.WAITING_FOR_STORE, ReaderState.CLOSED}),
    ReaderState.WAITING_FOR_STORE: frozenset({ReaderState.CATCHING_UP, ReaderState.CLOSED}),
    ReaderState.CLOSED: frozenset({ReaderState.CLOSED}),
}


@dataclass(slots=True)
class Opening:
    """What the first read found: where the client stands and what ``session.ready`` announces."""

    after: int  # the client's cursor
    chunk: list[LogEntry]  # the first replay chunk (empty for a new session)
    recovered: bool  # the log still holds every event after the cursor
    newest: int  # the newest seq known
    session: OpenedSession | None = None  # what admission opened (ids and the resume token)


#: Background heartbeats of sinks that cannot write at once (no fast path): kept from the GC.
_later: set[asyncio.Task[None]] = set()


class SessionReader:
    """Tails one session's log from ``last_seq`` into one ``Sink``; a fan-out ``Listener``."""

    # slotted: 10,000 idle connections are 10,000 of these (docs/benchmarks.md, B5)
    __slots__ = (
        "_catcher", "_hb_interval", "_lock", "_must_read", "_sub", "buffer_events", "last_sent", "last_seq",
        "metrics", "session_id", "sink", "slow", "state", "store",
    )  # fmt: skip

    def __init__(
        self,
        store: SessionStore,
        sink: Sink,
        *,
        buffer_events: int,
        heartbeat_interval_s: float,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.sink = sink
        self.buffer_events = buffer_events
        self.metrics = metrics
        self.state = ReaderState.OPENING
        self.session_id: str | None = None
        self.last_seq = 0
        self.last_sent = time.monotonic()
        self.slow = False  # declared a slow consumer; closing with 4009
        self._hb_interval = heartbeat_interval_s
        self._lock = asyncio.Lock()  # held by an ephemeral frame or the catch-up: live delivery waits
        self._catcher: asyncio.Task[None] | None = None
        self._must_read = False  # the catch-up must read the log (open, hole, resync)
        self._sub: Subscriber | None = None

    def _to(self, state: ReaderState) -> None:
        if state not in _NEXT[self.state]:
            raise RuntimeError(f"reader state {self.state.name} -> {state.name} is not allowed")
        self.state = state

    # --------------------------------------------------------------- opening

    async def open(self, session_id: str, after: int, logged: int, *, resumed: bool) -> Opening:
        """Subscribe, then read the first chunk after the cursor ``after`` (``logged``: the session's
        last seq as opening saw it). ``InvalidMessage`` if the cursor is ahead of the session."""
        self.session_id = session_id
        self._sub = await self.store.subscribe(session_id, self.buffer_events)
        self._sub.listener = self  # declines (buffers) until ``start`` has replayed
        if after > logged:
            raise InvalidMessage(
                f"last_seq {after} is ahead of the session ({logged})", ref={"type": "hello"}
            )
        # One read, after the subscription: the first replay chunk, whether the log still holds it,
        # and (when shorter than a chunk) all that was logged before live delivery took over.
        # A new session has nothing logged yet.
        chunk = await self.store.read(session_id, after, REPLAY_CHUNK) if resumed else []
        recovered = chunk[0].seq == after + 1 if chunk else after >= logged
        newest = max(logged, chunk[-1].seq) if chunk else logged
        return Opening(after, chunk, recovered, newest)

    async def start(self, opening: Opening) -> None:
        """After ``session.ready``: the replay (or a snapshot, if the log lost events), then live."""
        after = opening.after
        if not opening.recovered:
            after = await self._send_snapshot()
            self._must_read = True  # the log after the snapshot
        elif opening.chunk:
            async with self._lock:
                await self._write([entry.data for entry in opening.chunk])
            after = opening.chunk[-1].seq
            self._must_read = len(opening.chunk) >= REPLAY_CHUNK  # a full chunk: the log may hold more
        self.last_seq = after
        if self.state is not ReaderState.OPENING:  # closed meanwhile
            return
        self._to(ReaderState.LIVE)
        assert self._sub is not None
        if self._must_read or not self._sub.idle:  # events arrived meanwhile: catch up, then go live
            self.wake()

    async def _send_snapshot(self) -> int:
        assert self.session_id is not None
        snap = await self.store.snapshot(self.session_id)
        event = SessionSnapshot(
            last_seq=snap.last_seq,
            turns=[Turn(**t) for t in snap.turns],
            in_flight=Turn(**snap.in_flight) if snap.in_flight else None,
        )
        await self.send(encode(event))
        return snap.last_seq

    # --------------------------------------------------------------- ephemeral frames

    async def send(self, text: str) -> None:
        """One ephemeral frame (ready, error, pong, duplicate) in order with the log's; may wait."""
        async with self._lock:
            await self._write([text])

    async def send_error(self, exc: ParleyError) -> None:
        """Tell the client; a client gone meanwhile is no error, one that stopped reading is (SlowPeer)."""
        if self.metrics is not None:
            self.metrics.errors.labels(exc.code.value).inc()
        try:
            await self.send(encode(error_event(exc)))
        except SlowPeer:
            raise
        except Exception:
            pass

    async def _write(self, frames: list[str]) -> None:
        """Write frames (lock held), each blocked step under the send deadline, else ``SlowPeer``."""
        await self.sink.write(frames)
        self.last_sent = time.monotonic()

    # --------------------------------------------------------------- live delivery

    def deliver(self, entries: list[LogEntry]) -> bool:
        """Fan-out hook: hand new events to the sink at once, or decline (False) to have them buffered
        for the catch-up task: while it runs, while an ephemeral frame holds the sink, after a hole."""
        if self.state is not ReaderState.LIVE or self._lock.locked():
            return False
        frames, hole = fresh(entries, self.last_seq)
        if frames:
            try:
                if not self.sink.try_write([entry.data for entry in frames]):
                    return False
            except Exception as exc:  # the transport is gone: its receive side ends it; the client resumes
                self._gone(exc)
                return True
            self.last_seq = frames[-1].seq
            self.last_sent = time.monotonic()
            if self.sink.backlog:  # the peer pushes back: the catch-up task finishes it under the deadline
                self.wake()
        if hole:
            self._must_read = True
            return False
        return True

    def _gone(self, exc: Exception) -> None:
        """A write without waiting failed: stop delivering (the transport sees the disconnect)."""
        self._to(ReaderState.CLOSED)
        if not isinstance(exc, (SinkClosed, RuntimeError, OSError)):
            log.error("live delivery failed", exc_info=exc)

    def wake(self) -> None:
        """Fan-out hook: entries were buffered (or a resync or overflow is due): start catching up."""
        if self.state is ReaderState.LIVE:
            self._to(ReaderState.CATCHING_UP)
            self._catcher = asyncio.get_running_loop().create_task(
                self._catch_up(), name=f"catch-up-{self.session_id}"
            )

    async def _catch_up(self) -> None:
        """Write what live delivery could not, from the log where needed, until live again."""
        sub = self._sub
        assert sub is not None and self.session_id is not None
        outage_since: float | None = None
        try:
            while True:
                if sub.lost:  # the store lost the session (sessions/loss.py): say so and end, 4010
                    await self.fail(SessionLost(), CloseCode.SESSION_LOST)
                    return
                try:
                    async with self._lock:
                        if self.sink.backlog:
                            await self._write([])
                        if sub.overflowed:
                            raise SlowConsumer(self.session_id)
                        buffered = sub.take()
                        frames, hole = fresh(buffered, self.last_seq)
                        if hole or self._must_read or sub.resync:
                            self._must_read, sub.resync = True, False
                            async for batch in replay(self.store, self.session_id, self.last_seq):
                                await self._write([entry.data for entry in batch])
                                self.last_seq = batch[-1].seq
                            self._must_read = False
                            frames, hole = fresh(buffered, self.last_seq)
                            if hole:  # the log ends before an entry that was delivered live: it lost events
                                raise LogGap(f"missing events before {hole}")
                        if frames:
                            await self._write([entry.data for entry in frames])
                            self.last_seq = frames[-1].seq
                        if self.state is not ReaderState.CATCHING_UP:  # closed meanwhile
                            return
                        if sub.idle and not self._must_read and not self.sink.backlog:
                            self._catcher = None  # live again: no await between this check and here
                            self._to(ReaderState.LIVE)
                            return
                    outage_since = None
                except ParleyError as exc:
                    # the store is unreachable: keep the client and re-read from last_seq once it is back;
                    # only an outage longer than STORE_OUTAGE_GRACE_S closes (the client then resumes)
                    self._must_read = True
                    if self.state is not ReaderState.CATCHING_UP:  # closed meanwhile
                        return
                    now = time.monotonic()
                    outage_since = outage_since or now
                    if now - outage_since < STORE_OUTAGE_GRACE_S:
                        self._to(ReaderState.WAITING_FOR_STORE)
                        try:
                            await asyncio.sleep(STORE_RETRY_S)
                        finally:
                            if self.state is ReaderState.WAITING_FOR_STORE:
                                self._to(ReaderState.CATCHING_UP)
                        if self.state is not ReaderState.CATCHING_UP:
                            return
                        continue
                    await self.fail(exc, CloseCode.GOING_AWAY)
                    return
        except (SlowPeer, SlowConsumer, LogGap):
            await self.close_slow()
        except (SinkClosed, RuntimeError, OSError):
            pass  # the transport is gone: its receive side ends the connection

    # --------------------------------------------------------------- ending

    async def fail(self, exc: ParleyError, code: int, reason: str | None = None) -> None:
        """Tell the client why (``error``), then close with ``code``: the end of this reader.

        The hook for anything that ends a session's readers from outside (a lost session, an
        expired token): the client gets one structured error and a close, never silence."""
        try:
            await self.send_error(exc)
        except SlowPeer:
            await self.close_slow()
            return
        self.halt()
        await self.sink.close(code, exc.code if reason is None else reason)

    async def close_slow(self) -> None:
        """4009 once the client takes the close frame (within the send timeout), else give up on it."""
        if not self.slow and self.state is not ReaderState.CLOSED:
            log.warning("slow consumer", extra={"fields": {"last_seq": self.last_seq}})
        self.slow = True
        self.halt()
        await self.sink.close(
            CloseCode.SLOW_CONSUMER, "slow consumer; resume to catch up", wait=self.sink.deadline.timeout
        )

    def halt(self) -> None:
        """Deliver nothing more (the transport is closing); the catch-up task, if any, stops writing."""
        if self.state is not ReaderState.CLOSED:
            self._to(ReaderState.CLOSED)

    async def aclose(self) -> None:
        """Release everything: the subscription, the catch-up task, an unfinished backlog."""
        self.halt()
        if self._sub is not None:
            self._sub.listener = None
            self.store.unsubscribe(self._sub)
        task, self._catcher = self._catcher, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.sink.discard()

    # --------------------------------------------------------------- the ticker

    def tick(self, now: float, loop_now: float) -> None:
        """The process-wide ticker, every quarter heartbeat interval: stalled writes, then heartbeats."""
        self.sink.deadline.interrupt(loop_now)
        if (
            now - self.last_sent < self._hb_interval * 0.9
            or (self.state is not ReaderState.LIVE and self.state is not ReaderState.WAITING_FOR_STORE)
            or self._lock.locked()
            or self.sink.backlog  # a pushed-back write is not finished yet
        ):
            return
        self.last_sent = now
        hb = encode(Heartbeat(ts=int(time.time() * 1000), last_seq=self.last_seq))
        try:
            taken = self.sink.try_write([hb])
        except Exception as exc:
            self._gone(exc)
            return
        if not taken:  # a sink that never writes at once: the ordinary way, a task
            self._later(self._heartbeat(hb))
        elif self.sink.backlog:
            self.wake()  # (a catch-up task waiting out an outage finishes it on its next round)

    async def _heartbeat(self, text: str) -> None:
        try:
            await self.send(text)
        except SlowPeer:
            await self.close_slow()
        except Exception:
            pass

    @staticmethod
    def _later(coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        _later.add(task)
        task.add_done_callback(_later.discard)
