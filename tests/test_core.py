"""The session core without a transport: the reader and the dispatcher against an in-memory sink and store.

Like websockets' sans-I/O tests: no socket, no server; a ``MemorySink`` records what a
transport would have put on its wire, and can decline, push back or stall on demand.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import pytest

from parley.protocol import encode, seq_of
from parley.protocol.errors import CloseCode, ParleyError, UpstreamUnavailable
from parley.protocol.messages import CLIENT_TYPES, ResponseDelta
from parley.server.core import Dispatcher, ReaderState, SessionReader, WriteDeadline
from parley.server.core.handlers import Handlers
from parley.server.meter import TokenMeter
from parley.server.metrics import Metrics
from parley.server.service import Principal
from parley.sessions import DeltaWrite, LogEntry
from parley.sessions.memory import MemoryStore

SID = "s1"


class MemorySink:
    """A ``Sink`` that records frames; ``immediate`` False declines every ``try_write``, ``push_back``
    takes the next ``try_write`` as a backlog, ``gate`` (unset) holds every async write."""

    def __init__(self, timeout: float = 5.0) -> None:
        self.deadline = WriteDeadline(timeout)
        self.frames: list[str] = []
        self.immediate = True
        self.push_back = False
        self.gate: asyncio.Event | None = None
        self.closed: tuple[int, str] | None = None
        self._backlog: list[str] | None = None

    @property
    def backlog(self) -> bool:
        return self._backlog is not None

    def try_write(self, frames: Sequence[str]) -> bool:
        if self._backlog is not None or not self.immediate:
            return False
        if self.push_back:
            self.push_back = False
            self._backlog = list(frames)
            return True
        self.frames.extend(frames)
        return True

    async def write(self, frames: Sequence[str]) -> None:
        if self.gate is not None:
            await self.deadline.run(self.gate.wait())
        if self._backlog is not None:
            self.frames.extend(self._backlog)
            self._backlog = None
        self.frames.extend(frames)

    async def close(self, code: int, reason: str, *, wait: float | None = None) -> None:
        self.closed = (code, reason)

    def discard(self) -> None:
        self._backlog = None

    def seqs(self) -> list[int]:
        return [s for s in (seq_of(f) for f in self.frames) if s is not None]

    def types(self) -> list[str]:
        return [json.loads(f)["type"] for f in self.frames]


async def settled(reader: SessionReader) -> None:
    """Wait (bounded) for the reader's catch-up task, if one runs, to end."""
    task = reader._catcher
    if task is not None:
        async with asyncio.timeout(5):
            await asyncio.shield(task)


async def turn() -> None:
    """Let a task created just now run up to its first wait."""
    for _ in range(3):
        await asyncio.sleep(0)


async def log_deltas(store: MemoryStore, n: int, start: int = 0) -> None:
    """Append ``n`` delta events to the session's log, one append each as a generation would (after
    the turn's two events when ``start`` is 0)."""
    if start == 0:
        await store.accept(
            SID,
            client_msg_id="c1",
            message_id="m1",
            response_id="r1",
            content="hi",
            accepted_body='{"type":"message.accepted"}',
            started_body='{"type":"response.started"}',
            now_ms=1_000,
            lease_ms=60_000,
        )
    for i in range(start, start + n):
        body = encode(ResponseDelta(response_id="r1", text=f"t{i}"))
        await store.append_deltas([DeltaWrite(SID, "r1", f"t{i}", body)])


async def opened_reader(
    store: MemoryStore, sink: MemorySink, after: int = 0, buffer_events: int = 4096
) -> SessionReader:
    reader = SessionReader(store, sink, buffer_events=buffer_events, heartbeat_interval_s=1.0)
    rec = await store.get_session(SID)
    assert rec is not None
    opening = await reader.open(SID, after, rec.last_seq, resumed=True)
    await reader.start(opening)
    return reader


@pytest.fixture
async def store() -> Any:
    s = MemoryStore()
    await s.start()
    await s.create_session(SID, "t", "u", "hash")
    yield s
    await s.close()


# ------------------------------------------------------------------ the reader


async def test_reader_replays_then_delivers_live_without_a_task(store: MemoryStore) -> None:
    """A reader replays the log after its cursor, goes LIVE, then writes each new event synchronously."""
    await log_deltas(store, 3)
    sink = MemorySink()
    reader = await opened_reader(store, sink, after=1)
    assert sink.seqs() == [2, 3, 4, 5] and reader.state is ReaderState.LIVE
    await log_deltas(store, 2, start=3)
    assert sink.seqs() == list(range(2, 8)) and reader.last_seq == 7
    await reader.aclose()
    assert reader.state is ReaderState.CLOSED


async def test_events_logged_while_opening_arrive_once_in_order(store: MemoryStore) -> None:
    """Events appended between the first read and the start are caught up, none twice, none lost."""
    await log_deltas(store, 2)
    sink = MemorySink()
    reader = SessionReader(store, sink, buffer_events=4096, heartbeat_interval_s=1.0)
    opening = await reader.open(SID, 0, 4, resumed=True)
    await log_deltas(store, 3, start=2)  # buffered: the reader is still OPENING
    await reader.start(opening)
    assert reader.state is ReaderState.CATCHING_UP
    await settled(reader)
    assert reader.state is ReaderState.LIVE and sink.seqs() == list(range(1, 8))
    await reader.aclose()


async def test_a_sink_that_never_writes_at_once_gets_everything_through_catch_up(store: MemoryStore) -> None:
    """With ``try_write`` always declining (no fast path), every event still arrives, in order."""
    sink = MemorySink()
    sink.immediate = False
    reader = await opened_reader(store, sink)
    await log_deltas(store, 5)
    await settled(reader)
    assert reader.state is ReaderState.LIVE and sink.seqs() == list(range(1, 8))
    await reader.aclose()


async def test_a_pushed_back_write_is_finished_before_later_events(store: MemoryStore) -> None:
    """Frames the sink took as a backlog are written before any event that follows them."""
    sink = MemorySink()
    reader = await opened_reader(store, sink)
    sink.push_back = True
    await log_deltas(store, 4)
    await settled(reader)
    assert reader.state is ReaderState.LIVE and not sink.backlog and sink.seqs() == list(range(1, 7))
    await reader.aclose()


async def test_a_resync_rereads_the_log_without_duplicates(store: MemoryStore) -> None:
    """After a resync (live delivery may have missed events) the reader re-reads from its cursor."""
    await log_deltas(store, 3)
    sink = MemorySink()
    reader = await opened_reader(store, sink)
    store.fanout.resync_all()
    await settled(reader)
    assert reader.state is ReaderState.LIVE
    await log_deltas(store, 1, start=3)
    assert sink.seqs() == list(range(1, 7))
    await reader.aclose()


async def test_a_hole_in_live_delivery_is_filled_from_the_log(store: MemoryStore) -> None:
    """An entry past a hole makes the reader read the missing events from the log first."""
    sink = MemorySink()
    reader = await opened_reader(store, sink)
    assert reader._sub is not None
    reader._sub.listener = None  # live delivery misses the next events...
    await log_deltas(store, 3)
    reader._sub.take()
    reader._sub.listener = reader
    late = await store.read(SID, 4, 10)
    reader._sub.push(late)  # ...and then sees only the last one
    await settled(reader)
    assert reader.state is ReaderState.LIVE and sink.seqs() == [1, 2, 3, 4, 5]
    await reader.aclose()


async def test_a_write_stalled_past_the_deadline_closes_as_slow_consumer(store: MemoryStore) -> None:
    """A blocked write interrupted by the ticker past its deadline closes the sink with 4009."""
    sink = MemorySink(timeout=10.0)
    reader = await opened_reader(store, sink)
    sink.immediate, sink.gate = False, asyncio.Event()  # the peer stops reading
    await log_deltas(store, 1)
    await turn()
    due = sink.deadline.due
    assert due is not None  # the catch-up task is blocked in a write
    assert not sink.deadline.interrupt(due - 1)  # not yet past its deadline
    assert sink.deadline.interrupt(due + 1)
    await settled(reader)
    assert sink.closed is not None and sink.closed[0] == CloseCode.SLOW_CONSUMER
    assert reader.slow and reader.state is ReaderState.CLOSED
    await reader.aclose()


async def test_a_reader_past_its_buffer_bound_closes_as_slow_consumer(store: MemoryStore) -> None:
    """More buffered events than ``buffer_events`` while the sink is stuck: 4009, the session goes on."""
    sink = MemorySink()
    reader = await opened_reader(store, sink, buffer_events=4)
    sink.immediate, sink.gate = False, asyncio.Event()
    await log_deltas(store, 10)
    sink.gate.set()
    await settled(reader)
    assert sink.closed is not None and sink.closed[0] == CloseCode.SLOW_CONSUMER and reader.slow
    await reader.aclose()


async def test_the_ticker_sends_a_heartbeat_to_an_idle_reader(store: MemoryStore) -> None:
    """An idle LIVE reader gets a heartbeat carrying its cursor once the interval has passed."""
    await log_deltas(store, 1)
    sink = MemorySink()
    reader = await opened_reader(store, sink)
    loop = asyncio.get_running_loop()
    reader.tick(reader.last_sent + 0.1, loop.time())
    assert sink.types()[-1] != "heartbeat"
    reader.tick(reader.last_sent + 1.0, loop.time())
    beat = json.loads(sink.frames[-1])
    assert beat["type"] == "heartbeat" and beat["last_seq"] == 3
    await reader.aclose()


class FlakyStore:
    """A store whose log reads fail ``failures`` times (an outage), then work."""

    def __init__(self, inner: MemoryStore, failures: int) -> None:
        self.inner, self.failures = inner, failures

    async def read(self, session_id: str, after_seq: int, limit: int) -> list[LogEntry]:
        if self.failures > 0:
            self.failures -= 1
            raise UpstreamUnavailable("session store unavailable")
        return await self.inner.read(session_id, after_seq, limit)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_a_store_outage_during_catch_up_is_waited_out(store: MemoryStore) -> None:
    """While the store is unreachable the reader waits (WAITING_FOR_STORE), then reads on from its cursor."""
    sink = MemorySink()
    flaky = FlakyStore(store, failures=0)
    reader = await opened_reader(flaky, sink)  # type: ignore[arg-type]
    flaky.failures = 2
    store.fanout.resync_all()
    await turn()
    assert reader.state is ReaderState.WAITING_FOR_STORE
    await log_deltas(store, 2)  # buffered meanwhile
    await settled(reader)
    assert flaky.failures == 0 and reader.state is ReaderState.LIVE
    assert sink.seqs() == [1, 2, 3, 4] and sink.closed is None
    await reader.aclose()


async def test_the_reader_refuses_transitions_its_state_machine_does_not_have(store: MemoryStore) -> None:
    """A closed reader cannot go live again: a bad transition is a bug and raises."""
    reader = await opened_reader(store, MemorySink())
    await reader.aclose()
    with pytest.raises(RuntimeError, match="CLOSED -> LIVE"):
        reader._to(ReaderState.LIVE)


async def test_fail_tells_the_client_then_closes(store: MemoryStore) -> None:
    """``fail`` (the hook for a lost session or an expired token) sends one error, then closes."""
    sink = MemorySink()
    reader = await opened_reader(store, sink)
    await reader.fail(UpstreamUnavailable("gone"), CloseCode.GOING_AWAY)
    assert json.loads(sink.frames[-1])["code"] == "upstream_unavailable"
    assert sink.closed == (CloseCode.GOING_AWAY, "upstream_unavailable")
    await log_deltas(store, 1)
    assert sink.types()[-1] == "error"  # nothing is delivered after the close


# ------------------------------------------------------------------ the dispatcher


class MemoryCaller:
    """A ``Caller`` that records replies, errors and a close."""

    def __init__(self) -> None:
        self.session_id: str | None = SID
        self.trace_id = "t"
        self.who: Principal | None = Principal("t", "u")
        self.replies: list[str] = []
        self.errors: list[ParleyError] = []
        self.closed: int | None = None

    async def reply(self, text: str) -> None:
        self.replies.append(text)

    async def send_error(self, exc: ParleyError) -> None:
        self.errors.append(exc)

    async def close(self, code: int, reason: str = "") -> None:
        self.closed = code


def dispatcher(table: dict[str, Any], frames_per_minute: int = 0, strikes: int = 10) -> Dispatcher:
    return Dispatcher(
        table, MemoryCaller(), frames_per_minute=frames_per_minute, abuse_strikes=strikes, metrics=Metrics()
    )


async def test_each_type_goes_to_its_handler() -> None:
    """A parsed frame reaches the handler its ``type`` names, with the parsed model."""
    seen: list[Any] = []

    async def ping(caller: Any, msg: Any) -> None:
        seen.append(msg)

    d = dispatcher({"ping": ping})
    assert await d.dispatch('{"type":"ping","nonce":"n1"}')
    assert seen[0].nonce == "n1" and not d.caller.errors  # type: ignore[attr-defined]


async def test_bad_frames_and_types_without_a_handler_get_one_error_each() -> None:
    """Invalid JSON, a binary frame and a type with no handler here each get invalid_message; the
    connection stays open."""
    d = dispatcher({})
    for frame in ("{nope", None, '{"type":"ping"}'):
        assert await d.dispatch(frame)
    assert [e.code.value for e in d.caller.errors] == ["invalid_message"] * 3  # type: ignore[attr-defined]


async def test_the_frame_budget_refuses_frames_past_it() -> None:
    """Past ``frames_per_minute`` a frame is answered rate_limited with a retry hint, not handled."""
    handled: list[Any] = []

    async def ping(caller: Any, msg: Any) -> None:
        handled.append(msg)

    d = dispatcher({"ping": ping}, frames_per_minute=2)
    for _ in range(3):
        assert await d.dispatch('{"type":"ping"}')
    (err,) = d.caller.errors  # type: ignore[attr-defined]
    assert len(handled) == 2 and err.code.value == "rate_limited" and err.retry_after_ms > 0


async def test_repeated_rate_limits_close_the_connection() -> None:
    """``abuse_strikes`` rate_limited answers within the window close with 4029."""
    d = dispatcher({}, frames_per_minute=1, strikes=2)
    results = [await d.dispatch('{"type":"ping"}') for _ in range(3)]
    assert results == [True, True, False]
    assert d.caller.closed == CloseCode.POLICY_VIOLATION  # type: ignore[attr-defined]


async def test_the_handler_table_covers_every_client_message_type(store: MemoryStore) -> None:
    """Every client message type of the protocol has a handler, and there is none for anything else."""
    handlers = Handlers(None, Metrics(), None, TokenMeter(store, None))  # type: ignore[arg-type]
    assert set(handlers.table()) == set(CLIENT_TYPES)


async def test_a_second_hello_is_refused() -> None:
    """hello after the session is open is answered invalid_message, nothing else happens."""
    handlers = Handlers(None, Metrics(), None, None)  # type: ignore[arg-type]
    d = dispatcher(handlers.table())  # type: ignore[arg-type]
    assert await d.dispatch('{"type":"hello","protocol":"parley.v1"}')
    assert d.caller.errors[0].code.value == "invalid_message"  # type: ignore[attr-defined]
