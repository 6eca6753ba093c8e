"""The WebSocket endpoint over a real socket, on both stores: the v1 conversation contract."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import connect

from parley.client import ParleyClient, ParleyClosed
from parley.server.providers.base import ChatMessage
from parley.server.providers.echo import reply_words


def expected_reply(*user_turns: str, n: int = 20) -> str:
    """The echo model's reply to a conversation whose earlier replies were also echo replies."""
    msgs: list[ChatMessage] = []
    for turn in user_turns:
        msgs.append(ChatMessage("user", turn))
        reply = "".join(w + " " for w in reply_words(msgs, n))
        msgs.append(ChatMessage("assistant", reply))
    return msgs[-1].content


async def test_new_session_gets_ready_with_seq_zero(server: Any) -> None:
    """hello without a session opens one: ready, not resumed, recovered, last_seq 0."""
    async with ParleyClient(server.url) as c:
        assert c.ready is not None
        assert c.ready["type"] == "session.ready"
        assert (c.ready["resumed"], c.ready["recovered"], c.ready["last_seq"]) == (False, True, 0)
        assert c.ready["protocol"] == "parley.v1"
        assert c.ready["heartbeat_interval_ms"] == 15_000


async def test_reply_streams_and_completes_with_usage(server: Any) -> None:
    """A message is accepted, streamed as deltas and completed with usage and timings."""
    async with ParleyClient(server.url) as c:
        reply = await c.ask("hello there")
    kinds = [e["type"] for e in reply.events]
    assert kinds[:2] == ["message.accepted", "response.started"]
    assert "response.delta" in kinds
    assert reply.text == expected_reply("hello there")
    assert reply.completed["finish_reason"] == "stop"
    assert reply.completed["usage"] == {"input_tokens": 2, "output_tokens": 20}
    assert reply.completed["latency_ms"] >= reply.completed["ttft_ms"] >= 0
    seqs = [e["seq"] for e in reply.events]
    assert seqs == list(range(1, len(seqs) + 1))


async def test_model_sees_the_whole_conversation(server: Any) -> None:
    """The second reply depends on (and quotes) the first turn."""
    async with ParleyClient(server.url) as c:
        await c.ask("first question")
        second = await c.ask("second question")
    assert second.text == expected_reply("first question", "second question")
    assert "(earlier: first question )" in second.text


async def test_same_conversation_gives_same_reply_in_two_sessions(server: Any) -> None:
    """The echo reply depends only on the conversation, not on ids or time."""
    async with ParleyClient(server.url) as a, ParleyClient(server.url) as b:
        assert (await a.ask("same")).text == (await b.ask("same")).text


async def test_second_message_while_running_is_busy(server_factory: Any) -> None:
    """A message.send during a running response gets a retryable busy error and starts nothing."""
    async with server_factory(echo_tokens_per_second=20.0) as server, ParleyClient(server.url) as c:
        cid = await c.send("one")
        await c.next_event("response.started")
        await c.send("two", client_msg_id="c-two")
        err = await c.next_event("error")
        assert err["code"] == "busy" and err["retryable"] is True
        assert err["ref"] == {"type": "message.send", "client_msg_id": "c-two"}
        assert 0 < err["retry_after_ms"] <= server.settings.lease_ms  # until the lease lapses, if not renewed
        await c.cancel()
        reply = await c.collect(cid)
        assert reply.finish_reason == "cancelled"


async def test_repeated_client_msg_id_starts_nothing_new(server: Any) -> None:
    """Resending a client_msg_id answers message.duplicate with the original seq, while running and after."""
    async with ParleyClient(server.url) as c:
        await c.send("hi", client_msg_id="same")
        accepted = await c.next_event("message.accepted")
        await c.send("hi", client_msg_id="same")
        dup = await c.next_event("message.duplicate")
        assert dup["accepted_seq"] == accepted["seq"] and dup["message_id"] == accepted["message_id"]
        await c.next_event("response.completed")
        await c.send("hi", client_msg_id="same")
        dup2 = await c.next_event("message.duplicate")
        assert dup2["response_id"] == dup["response_id"]
        last = c.last_seq
        await c.ping("after")
        assert (await c.next_event("pong"))["nonce"] == "after"
        assert c.last_seq == last  # nothing new was logged


async def test_cancel_ends_the_response_and_keeps_partial_text(server_factory: Any) -> None:
    """Cancel logs finish_reason cancelled, nothing of that response after it, partial text in history."""
    async with server_factory(echo_tokens_per_second=50.0, echo_reply_tokens=200) as server:
        async with ParleyClient(server.url) as c:
            cid = await c.send("long one")
            await c.next_event("response.delta")
            await c.cancel()
            reply = await c.collect(cid)
            assert reply.finish_reason == "cancelled"
            rid = reply.response_id
            # read the whole log: nothing for the response after its terminal event
            async with ParleyClient(server.url, session_id=c.session_id, resume_token=c.resume_token) as r:
                events = []
                while not events or events[-1]["type"] != "response.completed":
                    events.append(await r.next_event())
            terminal = next(i for i, e in enumerate(events) if e["type"] == "response.completed")
            assert all(e.get("response_id") != rid for e in events[terminal + 1 :])
            logged_text = "".join(e["text"] for e in events if e["type"] == "response.delta")
            hist = await server.state.store.history(c.session_id)
            assert hist[-1]["content"] == logged_text == reply.text
            assert 0 < len(reply.text.split()) < 200
            await c.cancel()  # nothing running: changes nothing, and the answer says so
            answer = await c.next_event("pong", "error")
            assert answer["code"] == "invalid_message" and answer["retryable"] is False
            assert answer["ref"] == {"type": "response.cancel"}
            await c.cancel(rid)  # the finished response: the same, naming it
            answer = await c.next_event("pong", "error")
            assert answer["code"] == "invalid_message"
            assert answer["ref"] == {"type": "response.cancel", "response_id": rid}
            await c.ping("x")
            assert (await c.next_event("pong", "error"))["type"] == "pong"
            nxt = await c.ask("next")
            assert nxt.finish_reason == "stop"


async def test_cancel_of_unknown_response_is_invalid_message(server: Any) -> None:
    """Cancelling a response id that is not in the session is invalid_message, not internal."""
    async with ParleyClient(server.url) as c:
        await c.cancel("r_nope")
        err = await c.next_event("error")
        assert err["code"] == "invalid_message" and err["ref"]["response_id"] == "r_nope"


async def test_feedback_is_logged_and_last_write_wins(server: Any) -> None:
    """feedback is logged as feedback.recorded, and the stored rating is the last one."""
    async with ParleyClient(server.url) as c:
        reply = await c.ask("rate me")
        await c.feedback(reply.response_id, "up", comment="nice", tags=["helpful"])
        first = await c.next_event("feedback.recorded")
        await c.feedback(reply.response_id, "down")
        second = await c.next_event("feedback.recorded")
        assert (first["rating"], second["rating"]) == ("up", "down")
        stored = await server.state.store.feedback(c.session_id)
        assert stored[reply.response_id]["rating"] == "down"
        await c.feedback("r_unknown", "up")
        err = await c.next_event("error")
        assert err["code"] == "invalid_message" and err["retryable"] is False


async def test_two_tabs_see_the_same_events(server: Any) -> None:
    """Two connections on one session both receive every logged event, in the same order."""
    async with ParleyClient(server.url) as a:
        assert a.session_id
        async with ParleyClient(server.url, session_id=a.session_id, resume_token=a.resume_token) as b:
            reply = await a.ask("tabs")
            seen_b = []
            while not seen_b or seen_b[-1]["type"] != "response.completed":
                seen_b.append(await b.next_event())
        assert [e["seq"] for e in seen_b] == [e["seq"] for e in reply.events]
        assert seen_b[0]["type"] == "message.accepted" and seen_b[0]["content"] == "tabs"


async def test_heartbeat_arrives_when_idle(server_factory: Any) -> None:
    """An idle connection receives heartbeat events carrying its last_seq."""
    async with server_factory(heartbeat_interval_ms=200) as server, ParleyClient(server.url) as c:
        await c.ask("x")
        hb = await c.next_event("heartbeat", timeout=5)
        assert hb["last_seq"] == c.last_seq and hb["ts"] > 0


async def test_ping_is_answered_with_pong(server: Any) -> None:
    """ping{nonce} is answered by pong{nonce}, without a seq."""
    async with ParleyClient(server.url) as c:
        await c.ping("n1")
        pong = await c.next_event("pong")
        assert pong == {"type": "pong", "nonce": "n1"}


async def test_resume_with_wrong_token_or_unknown_session_looks_the_same(server: Any) -> None:
    """A wrong resume token, an unknown id and another tenant's session all give session_not_found + 4004."""
    async with ParleyClient(server.url, metadata={"tenant_id": "acme"}) as owner:
        sid, tok = owner.session_id, owner.resume_token
    answers = []
    for kwargs in (
        {"session_id": sid, "resume_token": "wrong"},
        {"session_id": "s_unknown", "resume_token": tok},
        {"session_id": sid, "resume_token": tok, "metadata": {"tenant_id": "other"}},
    ):
        with pytest.raises(ParleyClosed) as info:
            await ParleyClient(server.url, **kwargs).connect()  # type: ignore[arg-type]
        answers.append((info.value.code, info.value.reason))
    assert answers == [(4004, "session_not_found")] * 3


async def test_last_seq_ahead_of_the_session_is_refused(server: Any) -> None:
    """A resume claiming a seq the session never reached is invalid_message and closes 4000."""
    async with ParleyClient(server.url) as c:
        pass
    with pytest.raises(ParleyClosed) as info:
        await ParleyClient(
            server.url, session_id=c.session_id, resume_token=c.resume_token, last_seq=99
        ).connect()
    assert info.value.code == 4000


async def test_health_and_ready_endpoints(server: Any) -> None:
    """/healthz answers ok and /readyz checks the store."""
    async with httpx.AsyncClient(base_url=server.http) as http:
        assert (await http.get("/healthz")).text == "ok"
        ready = await http.get("/readyz")
        assert ready.status_code == 200 and ready.json() == {"ready": True}


async def test_asyncapi_document_is_served(server: Any) -> None:
    """/v1/asyncapi.json serves the generated AsyncAPI 3 document."""
    async with httpx.AsyncClient(base_url=server.http) as http:
        doc = (await http.get("/v1/asyncapi.json")).json()
    assert doc["asyncapi"] == "3.0.0"
    assert "message_send" in doc["components"]["messages"]


async def raw_hello(url: str, **extra: Any) -> Any:
    ws = await connect(url, subprotocols=["parley.v1"], compression=None)  # type: ignore[list-item]
    await ws.send(json.dumps({"type": "hello", "protocol": "parley.v1", **extra}))
    ready = json.loads(await ws.recv())
    assert ready["type"] == "session.ready"
    return ws


async def test_oversized_frame_closes_with_1009(server: Any) -> None:
    """A frame over the 64 KiB limit closes the connection with 1009 and is never answered."""
    ws = await raw_hello(server.url)
    await ws.send("x" * (64 * 1024 + 1))
    with pytest.raises(websockets.ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 5)
    assert ws.close_code == 1009


async def test_a_frame_at_the_limit_is_answered(server: Any) -> None:
    """A frame of exactly 64 KiB is read (and answered with an error for its content)."""
    ws = await raw_hello(server.url)
    body = json.dumps({"type": "ping", "nonce": "n"})
    await ws.send(body + " " * (64 * 1024 - len(body)))
    assert json.loads(await ws.recv())["type"] == "pong"
    await ws.close()


async def test_silent_client_is_closed_after_hello_deadline(server_factory: Any) -> None:
    """A socket that never says hello is closed with 4008 after the hello deadline."""
    async with server_factory(hello_timeout_ms=200) as server:
        ws = await connect(server.url, subprotocols=["parley.v1"])  # type: ignore[list-item]
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
        assert ws.close_code == 4008


async def test_unknown_subprotocol_is_refused_before_accept(server: Any) -> None:
    """A client offering only unknown protocol versions gets HTTP 400 with unsupported_version."""
    with pytest.raises(websockets.InvalidStatus) as info:
        await connect(server.url, subprotocols=["parley.v9"])  # type: ignore[list-item]
    assert info.value.response.status_code == 400
    assert json.loads(info.value.response.body)["code"] == "unsupported_version"


async def test_hello_with_unknown_version_gets_error_and_4002(server: Any) -> None:
    """hello.protocol other than parley.v1 is unsupported_version, then close 4002."""
    ws = await connect(server.url)
    await ws.send(json.dumps({"type": "hello", "protocol": "parley.v2"}))
    err = json.loads(await ws.recv())
    assert err["code"] == "unsupported_version" and err["retryable"] is False
    with pytest.raises(websockets.ConnectionClosed):
        await ws.recv()
    assert ws.close_code == 4002


@pytest.mark.parametrize(
    "first",
    ["not json", "[]", '{"type":"ping"}', '{"type":"hello"}', '{"type":"hello","protocol":1}'],
)
async def test_bad_first_frame_gets_error_and_4000(server: Any, first: str) -> None:
    """A first frame that is not a valid hello gets invalid_message and close 4000."""
    ws = await connect(server.url)
    await ws.send(first)
    err = json.loads(await ws.recv())
    assert err["type"] == "error" and err["code"] == "invalid_message"
    with pytest.raises(websockets.ConnectionClosed):
        await ws.recv()
    assert ws.close_code == 4000


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://127.0.0.1:1"])
async def test_foreign_origin_is_refused_with_403(server: Any, origin: str) -> None:
    """A browser handshake from another origin is refused with HTTP 403 before accept."""
    with pytest.raises(websockets.InvalidStatus) as info:
        await connect(server.url, origin=origin)  # type: ignore[arg-type]
    assert info.value.response.status_code == 403


async def test_own_origin_is_allowed(server: Any) -> None:
    """A handshake whose Origin is the server's own host is accepted."""
    async with ParleyClient(server.url, origin=f"http://127.0.0.1:{server.port}") as c:
        assert c.session_id


async def test_message_longer_than_limit_is_payload_too_large(server_factory: Any) -> None:
    """A user turn over max_message_chars is payload_too_large and the connection stays usable."""
    async with server_factory(max_message_chars=10) as server, ParleyClient(server.url) as c:
        await c.send("x" * 11, client_msg_id="big")
        err = await c.next_event("error")
        assert err["code"] == "payload_too_large" and err["ref"]["client_msg_id"] == "big"
        assert (await c.ask("short")).finish_reason == "stop"


async def test_unknown_profile_is_invalid_message(server: Any) -> None:
    """Asking for a profile the server does not have is invalid_message."""
    async with ParleyClient(server.url) as c:
        await c.send("x", profile="nope")
        assert (await c.next_event("error"))["code"] == "invalid_message"


async def test_echo_json_schema_output_is_parsed_and_valid(server: Any) -> None:
    """With response_format json_schema, completed.output is a valid instance of the schema."""
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string"}, "score": {"type": "integer", "minimum": 1}},
        "required": ["answer", "score"],
    }
    async with ParleyClient(server.url) as c:
        reply = await c.ask("json please", response_format={"type": "json_schema", "schema": schema})
    assert reply.finish_reason == "stop"
    assert reply.completed["output"] == {"answer": "json please", "score": 1}


async def test_unsatisfiable_schema_output_is_schema_validation_failed(server: Any) -> None:
    """When the model's output does not validate, the response ends with error schema_validation_failed."""
    schema = {"type": "object", "properties": {"code": {"type": "string", "pattern": "^[0-9]{6}$"}}}
    async with ParleyClient(server.url) as c:
        reply = await c.ask("no digits here", response_format={"type": "json_schema", "schema": schema})
    assert reply.finish_reason == "error"
    assert reply.completed["error"]["code"] == "schema_validation_failed"
    assert reply.completed["error"]["retryable"] is False


async def test_delta_timestamps_only_when_enabled(server_factory: Any) -> None:
    """response.delta carries its append time `ts` only with event_timestamps on."""
    async with server_factory() as plain, ParleyClient(plain.url) as c:
        deltas = [e for e in (await c.ask("x")).events if e["type"] == "response.delta"]
        assert deltas and all("ts" not in d for d in deltas)
    async with server_factory(event_timestamps=True) as stamped, ParleyClient(stamped.url) as c:
        deltas = [e for e in (await c.ask("x")).events if e["type"] == "response.delta"]
        assert deltas and all(isinstance(d["ts"], float) and d["ts"] > 1.7e12 for d in deltas)


async def test_client_gives_up_on_a_server_that_never_answers_hello() -> None:
    """A server that accepts the socket but never sends session.ready fails the client's open in time."""
    from websockets.asyncio.server import ServerConnection, serve

    got_hello = asyncio.Event()

    async def silent(ws: ServerConnection) -> None:
        await ws.recv()
        got_hello.set()
        await ws.wait_closed()

    async with serve(silent, "127.0.0.1", 0, subprotocols=["parley.v1"]) as srv:  # type: ignore[list-item]
        port = next(iter(srv.sockets)).getsockname()[1]
        c = ParleyClient(f"ws://127.0.0.1:{port}/v1/ws", open_timeout=0.3)
        with pytest.raises(TimeoutError):
            await c.connect()
        assert got_hello.is_set()
