"""The Python client's typed API against real servers: streaming, cancel, feedback, typed errors,
timeouts, the outbox across a cut connection and across a server restart, the sync facade."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import jwt
import pytest
from websockets.asyncio.server import ServerConnection, serve

from parley.client import ParleyClient, ParleyClosed, ResponseTimeout, UnknownEvent
from parley.client.errors import wire_code
from parley.client.events import to_model
from parley.protocol.errors import (
    InvalidMessage,
    ParleyError,
    PayloadTooLarge,
    RateLimited,
    SessionNotFound,
    Unauthorized,
)
from parley.protocol.messages import (
    FeedbackRecorded,
    MessageAccepted,
    MessageDuplicate,
    ResponseCompleted,
    ResponseDelta,
    ResponseStarted,
)

from .support import ServerProcess, live_server

SECRET = "s" * 40


def slow(**extra: Any) -> Any:
    """A server whose replies take a while (20 tokens a second), on the memory store."""
    return live_server(store="memory://", echo_tokens_per_second=20.0, echo_reply_tokens=200, **extra)


def quick(**extra: Any) -> Any:
    return live_server(store="memory://", echo_tokens_per_second=0, echo_reply_tokens=12, **extra)


async def whole_log(url: str, session_id: str, resume_token: str) -> list[dict[str, Any]]:
    """Every logged event of a session, read by a second client resuming from seq 0."""
    async with ParleyClient(url, session_id=session_id, resume_token=resume_token, last_seq=0) as r:
        assert r.ready is not None
        newest = r.ready["last_seq"]
        events = []
        while r.last_seq < newest:
            ev = await r.next_event()
            if "seq" in ev:
                events.append(ev)
        return events


def accepted(log: list[dict[str, Any]], cid: str) -> int:
    return sum(1 for e in log if e["type"] == "message.accepted" and e["client_msg_id"] == cid)


# ------------------------------------------------------------------ streaming


async def test_stream_yields_the_protocol_models_of_one_turn_in_order() -> None:
    """A turn streams MessageAccepted, ResponseStarted, ResponseDeltas and ResponseCompleted models."""
    async with quick() as srv, ParleyClient(srv.url) as c:
        async with c.stream("hello typed world") as turn:
            events = [ev async for ev in turn]
        assert isinstance(events[0], MessageAccepted) and events[0].content == "hello typed world"
        assert isinstance(events[1], ResponseStarted) and events[1].response_id == turn.response_id
        deltas = [e for e in events[2:-1]]
        assert deltas and all(isinstance(e, ResponseDelta) for e in deltas)
        last = events[-1]
        assert isinstance(last, ResponseCompleted) and last.finish_reason == "stop"
        assert turn.text == "".join(e.text for e in deltas if isinstance(e, ResponseDelta))
        assert turn.usage is not None and turn.usage.output_tokens == 12
        assert turn.finish_reason == "stop" and turn.error is None and turn.done
        again = await c.ask("and again")
        assert again.finish_reason == "stop" and again.usage["output_tokens"] == 12
        assert again.response_id != turn.response_id


async def test_async_for_without_a_block_sends_on_first_iteration() -> None:
    """``async for ev in c.stream(...)`` alone sends the message and ends with the reply."""
    async with quick() as srv, ParleyClient(srv.url) as c:
        turn = c.stream("no block")
        kinds = [type(ev).__name__ async for ev in turn]
        assert kinds[-1] == "ResponseCompleted" and turn.text


async def test_ask_connects_by_itself_and_rebuilds_nothing_twice() -> None:
    """A client used without ``async with`` connects on its first ask; a repeat id is a duplicate."""
    async with quick() as srv:
        c = ParleyClient(srv.url)
        first = await c.ask("idempotent", client_msg_id="cid-1")
        turn = c.stream("idempotent", client_msg_id="cid-1")
        events = [ev async for ev in turn]
        assert [type(e) for e in events] == [MessageDuplicate]
        assert turn.response_id == first.response_id and turn.text == first.text
        assert turn.reply().completed == first.completed
        await c.close()
        log = await whole_log(srv.url, c.session_id or "", c.resume_token or "")
        assert accepted(log, "cid-1") == 1


# ------------------------------------------------------------------ cancel and feedback


async def test_cancel_ends_the_turn_with_finish_reason_cancelled() -> None:
    """turn.cancel() mid-reply: iteration goes on to a ResponseCompleted with finish_reason cancelled."""
    async with slow() as srv, ParleyClient(srv.url) as c:
        async with c.stream("please stop me") as turn:
            async for ev in turn:
                if isinstance(ev, ResponseDelta):
                    await turn.cancel()
        assert turn.finish_reason == "cancelled"
        assert turn.usage is not None and turn.usage.output_tokens < 200


async def test_leaving_the_block_early_cancels_and_frees_the_session() -> None:
    """A break out of the loop cancels the reply on block exit; the next turn is not refused as busy."""
    async with slow() as srv, ParleyClient(srv.url) as c:
        async with c.stream("break early") as turn:
            async for ev in turn:
                if isinstance(ev, ResponseDelta):
                    break
        assert turn.done and turn.finish_reason == "cancelled"
        async with c.stream("next one") as nxt:
            async for ev in nxt:
                if isinstance(ev, ResponseStarted):
                    await nxt.cancel()
        assert nxt.finish_reason == "cancelled"


async def test_cancel_before_the_reply_started_is_sent_when_it_starts() -> None:
    """A cancel asked for before response.started is applied to the reply as soon as it is named."""
    async with slow() as srv, ParleyClient(srv.url) as c:
        async with c.stream("cancel at once") as turn:
            await turn.cancel()
            async for _ in turn:
                pass
        assert turn.finish_reason == "cancelled"


async def test_feedback_is_logged_and_returned_typed() -> None:
    """turn.feedback(+1, comment=...) returns FeedbackRecorded once the server logged it; -1 overrides."""
    async with quick() as srv, ParleyClient(srv.url) as c:
        async with c.stream("rate me") as turn:
            async for _ in turn:
                pass
        up = await turn.feedback(+1, comment="spot on")
        assert isinstance(up, FeedbackRecorded) and (up.response_id, up.rating) == (turn.response_id, "up")
        down = await turn.feedback("down")
        assert down.rating == "down"
        with pytest.raises(ValueError):
            await turn.feedback(0)
        log = await whole_log(srv.url, c.session_id or "", c.resume_token or "")
        ratings = [e["rating"] for e in log if e["type"] == "feedback.recorded"]
        assert ratings == ["up", "down"]


# ------------------------------------------------------------------ typed errors


async def test_refusals_raise_the_protocol_exception_classes() -> None:
    """Too long raises PayloadTooLarge, an unknown profile InvalidMessage, a frame flood RateLimited."""
    async with quick(max_message_chars=10, frames_per_minute=2) as srv, ParleyClient(srv.url) as c:
        with pytest.raises(PayloadTooLarge) as too_big:
            await c.ask("x" * 11)
        assert too_big.value.retryable is False and wire_code(too_big.value) == "payload_too_large"
        with pytest.raises(InvalidMessage):  # (refused without a ref: still this turn's refusal)
            await c.ask("short", profile="no-such-profile")
        with pytest.raises(RateLimited) as limited:
            await c.ask("flood")
        assert limited.value.retryable is True and (limited.value.retry_after_ms or 0) > 0


async def test_refused_hello_raises_unauthorized_and_session_not_found() -> None:
    """A bad token raises Unauthorized (close 4001); resuming an unknown session raises SessionNotFound."""
    async with quick(auth_jwt_secret=SECRET) as srv:
        bad = ParleyClient(srv.url, token="not-a-jwt")
        with pytest.raises(Unauthorized) as info:
            async with bad:
                pass
        assert bad.close_code == 4001 and isinstance(info.value.__cause__, ParleyClosed)
        token = jwt.encode({"sub": "u", "tenant": "t", "exp": int(time.time()) + 300}, SECRET)
        with pytest.raises(SessionNotFound):
            async with ParleyClient(srv.url, token=token, session_id="s_gone", resume_token="r"):
                pass


@asynccontextmanager
async def fake_server(handler: Callable[[ServerConnection], Awaitable[None]]) -> AsyncIterator[str]:
    """A scripted WebSocket peer on loopback, for answers a real server does not give (yet)."""
    async with serve(handler, "127.0.0.1", 0, subprotocols=["parley.v1"]) as srv:  # type: ignore[list-item]
        port = next(iter(srv.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/v1/ws"


def ready(heartbeat_ms: int = 15_000, **extra: Any) -> str:
    base = {
        "type": "session.ready",
        "session_id": "s_1",
        "resume_token": "r_1",
        "protocol": "parley.v1",
        "heartbeat_interval_ms": heartbeat_ms,
        "resumed": False,
        "recovered": True,
        "last_seq": 0,
    }
    return json.dumps({**base, **extra})


async def test_an_unknown_error_code_and_close_end_the_session_typed() -> None:
    """A newer server's error code (here session_lost) and close code end the turn with a typed error."""
    hellos = 0

    async def handler(ws: ServerConnection) -> None:
        nonlocal hellos
        await ws.recv()
        hellos += 1
        await ws.send(ready())
        await ws.recv()  # the message.send
        lost = {"type": "error", "code": "session_lost", "message": "the session's state is gone"}
        await ws.send(json.dumps({**lost, "retryable": False}))
        await ws.close(4011, "session_lost")

    async with fake_server(handler) as url, ParleyClient(url) as c:
        with pytest.raises(ParleyError) as info:
            await c.ask("anyone there?")
    assert wire_code(info.value) == "session_lost" and info.value.retryable is False
    assert hellos == 1  # no reconnect loop


async def test_an_unknown_close_code_alone_is_terminal_not_a_reconnect_loop() -> None:
    """A 4xxx close this client does not know, with no error event, raises instead of resuming."""
    hellos = 0

    async def handler(ws: ServerConnection) -> None:
        nonlocal hellos
        await ws.recv()
        hellos += 1
        await ws.send(ready())
        await ws.close(4321, "")

    async with fake_server(handler) as url, ParleyClient(url) as c:
        with pytest.raises(ParleyClosed) as info:
            await c.next_event()
        assert info.value.code == 4321 and wire_code(info.value.error) == "close_4321"
        assert hellos == 1 and c.resumes == 0


def test_unknown_event_types_and_fields_are_tolerated() -> None:
    """A newer server's extra field is dropped, an unknown type becomes an UnknownEvent."""
    delta = to_model({"seq": 3, "type": "response.delta", "response_id": "r", "text": "x", "shiny": 1})
    assert isinstance(delta, ResponseDelta) and delta.text == "x"
    other = to_model({"type": "tool.call", "name": "f"})
    assert isinstance(other, UnknownEvent) and other.type == "tool.call"


# ------------------------------------------------------------------ timeouts


async def test_first_event_timeout_when_the_message_is_never_answered() -> None:
    """A server that never answers the message: ResponseTimeout(first_event) after the bound."""

    async def handler(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.send(ready())
        await ws.wait_closed()

    async with fake_server(handler) as url, ParleyClient(url, first_event_timeout=0.3) as c:
        with pytest.raises(ResponseTimeout) as info:
            await c.ask("hello?")
    assert info.value.phase == "first_event" and info.value.seconds == 0.3


async def test_idle_timeout_counts_gaps_between_events_not_heartbeats() -> None:
    """A reply that stops mid-way while heartbeats go on: ResponseTimeout(idle), not a hang."""

    async def handler(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.send(ready(heartbeat_ms=100))
        send = json.loads(await ws.recv())
        cid = send["client_msg_id"]
        acc = {"type": "message.accepted", "client_msg_id": cid, "message_id": "m1", "content": "x"}
        await ws.send(json.dumps({"seq": 1, **acc}))
        started = {"type": "response.started", "response_id": "r1", "in_reply_to": "m1"}
        await ws.send(json.dumps({"seq": 2, **started, "profile": "p@1", "trace_id": "t"}))
        await ws.send(json.dumps({"seq": 3, "type": "response.delta", "response_id": "r1", "text": "hal"}))
        for _ in range(100):  # heartbeats only (bounded: 10 s)
            await ws.send(json.dumps({"type": "heartbeat", "ts": 0, "last_seq": 3}))
            await asyncio.sleep(0.1)

    async with fake_server(handler) as url, ParleyClient(url, idle_timeout=0.5) as c:
        with pytest.raises(ResponseTimeout) as info:
            async with c.stream("stall") as turn:
                async for _ in turn:
                    pass
    assert info.value.phase == "idle" and turn.text == "hal"


async def test_a_long_healthy_reply_is_not_cut_by_the_timeouts() -> None:
    """Timeouts bound gaps, not totals: a reply longer than both bounds completes."""
    async with live_server(store="memory://", echo_tokens_per_second=20.0, echo_reply_tokens=60) as srv:
        async with ParleyClient(srv.url, first_event_timeout=1.0, idle_timeout=1.0) as c:
            start = time.monotonic()
            reply = await c.ask("take your time")
            assert reply.finish_reason == "stop" and reply.usage["output_tokens"] == 60
            assert time.monotonic() - start > 1.0  # (the premise: longer than either bound)


async def test_total_silence_is_taken_for_a_dead_connection_and_resumed() -> None:
    """No frame for two heartbeat intervals: the client drops the socket and resumes by itself."""
    hellos: list[dict[str, Any]] = []

    async def handler(ws: ServerConnection) -> None:
        hellos.append(json.loads(await ws.recv()))
        resumed = len(hellos) > 1
        await ws.send(ready(heartbeat_ms=200, resumed=resumed))
        if resumed:
            await ws.send(json.dumps({"type": "pong"}))
        await ws.wait_closed()  # silent: no heartbeats

    async with fake_server(handler) as url, ParleyClient(url) as c:
        ev = await c.next_event(timeout=10)
    assert ev["type"] == "pong" and c.resumes == 1
    assert hellos[1]["session_id"] == "s_1" and hellos[1]["resume_token"] == "r_1"


# ------------------------------------------------------------------ the outbox


async def test_a_message_sent_while_cut_off_is_sent_once_after_the_resume() -> None:
    """send() on a cut connection queues; the resume sends it with its client_msg_id exactly once."""
    async with quick() as srv, ParleyClient(srv.url) as c:
        await c.ask("before the cut")
        c.drop()
        assert not c.connected
        reply = await c.ask("written while cut", client_msg_id="while-cut")
        assert reply.finish_reason == "stop" and c.resumes == 1
        # and one written on the socket just before it died: the replay shows it, nothing is resent
        cid = await c.send("sent, then cut", client_msg_id="then-cut")
        c.drop()
        assert (await c.collect(cid)).finish_reason == "stop"
        log = await whole_log(srv.url, c.session_id or "", c.resume_token or "")
    assert accepted(log, "while-cut") == 1 and accepted(log, "then-cut") == 1
    assert c.gaps == 0 and c.duplicates_dropped == 0


@pytest.fixture
def redis_proc(redis_url: str) -> Iterator[ServerProcess]:
    p = ServerProcess(
        {"PARLEY_STORE": redis_url, "PARLEY_ECHO_TOKENS_PER_SECOND": "0", "PARLEY_DRAIN_TIMEOUT_MS": "0"}
    )
    p.start()
    yield p
    p.stop(signal.SIGKILL)


@pytest.mark.slow
async def test_a_message_sent_while_the_server_is_down_goes_out_after_the_restart(
    redis_proc: ServerProcess,
) -> None:
    """Server stopped (Redis keeps the log), ask() meanwhile, server back: one turn, answered."""
    c = ParleyClient(redis_proc.url)
    first = await c.ask("before the restart")
    redis_proc.stop(signal.SIGTERM)
    task = asyncio.create_task(c.ask("during the restart", client_msg_id="down-1"))
    deadline = time.monotonic() + 10
    while c.resumes < 2:  # (the message is queued: the client is trying to reconnect)
        assert time.monotonic() < deadline and not task.done()
        await asyncio.sleep(0.02)
    await asyncio.to_thread(redis_proc.start)
    reply = await asyncio.wait_for(task, 30)
    assert reply.finish_reason == "stop" and reply.response_id != first.response_id
    assert "(earlier: before the restart )" in reply.text  # the same session, its history intact
    await c.close()
    log = await whole_log(redis_proc.url, c.session_id or "", c.resume_token or "")
    assert accepted(log, "down-1") == 1
    assert [e["seq"] for e in log] == list(range(1, len(log) + 1))


# ------------------------------------------------------------------ sync facade


async def test_sync_facade_asks_streams_and_rates() -> None:
    """ParleyClient.sync(url) works without an event loop of the caller's: ask, stream, feedback."""
    async with quick() as srv:

        def script() -> tuple[str, list[str], str, str]:
            with ParleyClient.sync(srv.url) as c:
                text = c.ask("sync hello").text
                turn = c.stream("sync stream")
                kinds = [type(ev).__name__ for ev in turn]
                rating = turn.feedback(-1, comment="meh").rating
                return text, kinds, turn.text, rating

        text, kinds, streamed, rating = await asyncio.to_thread(script)
    assert text and streamed and rating == "down"
    assert kinds[0] == "MessageAccepted" and kinds[-1] == "ResponseCompleted"


async def test_sync_facade_raises_a_refused_hello_typed_and_leaves_no_thread() -> None:
    """A refused hello raises Unauthorized from the blocking facade too, and stops its loop thread."""
    import threading

    async with quick(auth_jwt_secret=SECRET) as srv:

        def script() -> None:
            with ParleyClient.sync(srv.url, token="not-a-jwt"):
                pass

        before = {t.name for t in threading.enumerate()}
        with pytest.raises(Unauthorized):
            await asyncio.to_thread(script)
        assert "parley-client" not in {t.name for t in threading.enumerate()} - before
