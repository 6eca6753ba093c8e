"""The HTTP patterns end to end, over real sockets on both stores: SSE turns and tails (resumed on
another instance), synchronous calls (and their turn into jobs), async jobs polled and delivered as
signed webhooks, idempotent retries, every error status, auth and tenant isolation, and the OpenAPI
document matching the routes the app serves."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from starlette.routing import Route

from parley.protocol.http import ErrorBody, Job, ResponseResult, openapi_document

from . import server_tools
from .conftest import store_url
from .support import ServerProcess, live_server
from .test_webhooks import SECRET, Receiver, eventually, receiver  # noqa: F401 (the fixture)

JWT_SECRET = "http-test-secret-that-is-long-enough-for-hs256"
#: A slow echo: a reply takes about a second, long enough to cut, cancel or time out mid-way.
SLOW = {"echo_tokens_per_second": 30.0, "echo_reply_tokens": 30}
FAST = {"echo_tokens_per_second": 0.0, "echo_reply_tokens": 12}


@dataclass
class Event:
    id: int | None
    event: str
    data: dict[str, Any]


async def sse(
    lines: AsyncIterator[str], *, until: str | None = None, count: int | None = None
) -> list[Event]:
    """Parse SSE lines into events (comments skipped) until the stream ends, an event of type
    ``until`` arrived, or ``count`` logged events arrived."""
    out: list[Event] = []
    async with asyncio.timeout(30):  # a stream that never says what a test waits for fails it
        await _read(lines, out, until, count)
    return out


async def _read(lines: AsyncIterator[str], out: list[Event], until: str | None, count: int | None) -> None:
    fields: dict[str, str] = {}
    async for line in lines:
        if line.startswith(":"):
            continue
        if line == "":
            if "data" in fields:
                ev = Event(
                    int(fields["id"]) if "id" in fields else None,
                    fields.get("event", ""),
                    json.loads(fields["data"]),
                )
                out.append(ev)
                if until is not None and ev.event == until:
                    return
                if count is not None and sum(e.id is not None for e in out) >= count:
                    return
            fields = {}
            continue
        name, _, value = line.partition(":")
        fields[name] = value[1:] if value.startswith(" ") else value


def logged(events: list[Event]) -> list[Event]:
    return [e for e in events if "seq" in e.data]


def text_of(events: list[Event]) -> str:
    return "".join(e.data["text"] for e in events if e.event == "response.delta")


@pytest.fixture
async def server(store_kind: str, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    async with live_server(store=store_url(store_kind, request), **FAST) as srv:
        yield srv


async def open_session(c: httpx.AsyncClient, **headers: str) -> tuple[str, dict[str, str]]:
    r = await c.post("/v1/sessions", headers=headers)
    assert r.status_code == 201, r.text
    body = r.json()
    return body["session_id"], {"Parley-Resume-Token": body["resume_token"]}


def client(srv: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=srv.http, timeout=20)


async def poll_until_done(c: httpx.AsyncClient, location: str, headers: dict[str, str]) -> dict[str, Any]:
    job: dict[str, Any] = {}

    async def done() -> bool:
        nonlocal job
        r = await c.get(location, headers=headers)
        assert r.status_code == 200, r.text
        job = r.json()
        Job.model_validate(job)
        return job["status"] in ("completed", "failed", "cancelled")

    await eventually(done, "the job to finish", within=20)
    return job


# ------------------------------------------------------------------ the patterns


async def test_a_session_is_created_with_a_token_and_a_request_id(server: Any) -> None:
    """POST /v1/sessions answers 201 with session_id and resume_token, and X-Request-Id echoes traceparent."""
    async with client(server) as c:
        tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        r = await c.post("/v1/sessions", headers={"traceparent": tp})
        assert r.status_code == 201
        assert set(r.json()) == {"session_id", "resume_token"}
        assert r.headers["x-request-id"] == "4bf92f3577b34da6a3ce929d0e0e4736"


async def test_an_sse_turn_streams_the_logged_events_and_ends_after_completion(server: Any) -> None:
    """Accept: text/event-stream streams the turn with id = seq, event = type, data = the WebSocket JSON."""
    async with client(server) as c:
        sid, h = await open_session(c)
        headers = {**h, "Accept": "text/event-stream", "X-Request-Id": "req-1"}
        async with c.stream(
            "POST",
            f"/v1/sessions/{sid}/messages",
            headers=headers,
            json={"client_msg_id": "c1", "content": "hi"},
        ) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            assert r.headers["x-request-id"] == "req-1"
            events = await sse(r.aiter_lines())
        assert events[0].event == "message.accepted" and events[-1].event == "response.completed"
        for e in events:
            assert e.id == e.data["seq"] and e.event == e.data["type"]
        assert [e.id for e in events] == list(range(1, len(events) + 1))
        assert events[1].data["trace_id"] == "req-1"
        r2 = await c.get(f"/v1/sessions/{sid}/responses/{events[1].data['response_id']}", headers=h)
        assert r2.json()["result"]["text"] == text_of(events)


async def test_a_sync_call_answers_the_result(server: Any) -> None:
    """Accept: application/json waits for the turn and answers its ResponseResult."""
    async with client(server) as c:
        sid, h = await open_session(c)
        r = await c.post(
            f"/v1/sessions/{sid}/messages",
            headers={**h, "Accept": "application/json"},
            json={"client_msg_id": "c1", "content": "one line"},
        )
        assert r.status_code == 200, r.text
        result = ResponseResult.model_validate(r.json())
        assert result.finish_reason == "stop" and result.text.startswith("Echo")
        assert (result.first_seq, result.last_seq) == (1, result.last_seq) and result.last_seq > 3
        assert result.trace_id == r.headers["x-request-id"]


async def test_a_sync_call_past_its_timeout_becomes_a_job(
    store_kind: str, request: pytest.FixtureRequest
) -> None:
    """Past PARLEY_SYNC_TIMEOUT_MS the answer is 202 with the job's Location, and the job completes."""
    async with live_server(store=store_url(store_kind, request), sync_timeout_ms=200, **SLOW) as srv:
        async with client(srv) as c:
            sid, h = await open_session(c)
            r = await c.post(
                f"/v1/sessions/{sid}/messages", headers=h, json={"client_msg_id": "c1", "content": "slow"}
            )
            assert r.status_code == 202, r.text
            assert r.json()["status"] == "running"
            location = r.headers["location"]
            assert location == f"/v1/sessions/{sid}/responses/{r.json()['response_id']}"
            job = await poll_until_done(c, location, h)
            assert job["status"] == "completed" and job["result"]["finish_reason"] == "stop"


async def test_an_async_job_is_polled_to_completion(server: Any) -> None:
    """Prefer: respond-async answers 202 + Location at once; GET it until completed with the result."""
    async with client(server) as c:
        sid, h = await open_session(c)
        r = await c.post(
            f"/v1/sessions/{sid}/messages",
            headers={**h, "Prefer": "respond-async"},
            json={"client_msg_id": "c1", "content": "job"},
        )
        assert r.status_code == 202
        job = await poll_until_done(c, r.headers["location"], h)
        assert job["status"] == "completed"
        assert job["result"]["text"].startswith("Echo") and job["result"]["first_seq"] == 1


async def test_a_retried_post_never_starts_a_second_turn(server: Any) -> None:
    """The same client_msg_id again answers the first turn: its result, its job and its stream."""
    async with client(server) as c:
        sid, h = await open_session(c)
        body = {"client_msg_id": "same", "content": "once"}
        first = await c.post(f"/v1/sessions/{sid}/messages", headers=h, json=body)
        again = await c.post(f"/v1/sessions/{sid}/messages", headers=h, json=body)
        assert first.status_code == again.status_code == 200
        assert again.json() == first.json()
        job = await c.post(
            f"/v1/sessions/{sid}/messages", headers={**h, "Prefer": "respond-async"}, json=body
        )
        assert job.status_code == 202 and job.json()["response_id"] == first.json()["response_id"]
        async with c.stream(
            "POST", f"/v1/sessions/{sid}/messages", headers={**h, "Accept": "text/event-stream"}, json=body
        ) as r:
            events = await sse(r.aiter_lines())
        assert events[0].event == "message.duplicate" and events[0].id is None
        assert text_of(events) == first.json()["text"]
        async with c.stream("GET", f"/v1/sessions/{sid}/events?after=0", headers=h) as r:
            tail = await sse(r.aiter_lines(), until="response.completed")
        assert sum(e.event == "message.accepted" for e in tail) == 1


async def test_the_tail_replays_then_goes_live_without_gap(
    store_kind: str, request: pytest.FixtureRequest
) -> None:
    """GET /events?after=0 during a turn replays what is logged, then live events, each seq once."""
    async with live_server(store=store_url(store_kind, request), **SLOW) as srv, client(srv) as c:
        sid, h = await open_session(c)
        r = await c.post(
            f"/v1/sessions/{sid}/messages",
            headers={**h, "Prefer": "respond-async"},
            json={"client_msg_id": "c1", "content": "tail"},
        )
        async with c.stream("GET", f"/v1/sessions/{sid}/events?after=0", headers=h) as s:
            events = await sse(s.aiter_lines(), until="response.completed")
        assert events[0].event == "session.ready" and events[0].data["recovered"] is True
        seqs = [e.id for e in logged(events)]
        assert seqs == list(range(1, len(seqs) + 1))
        job = await poll_until_done(c, r.headers["location"], h)
        assert text_of(events) == job["result"]["text"]


async def test_a_cursor_past_retention_gets_a_snapshot(
    store_kind: str, request: pytest.FixtureRequest
) -> None:
    """A Last-Event-ID older than the log keeps gets session.ready recovered:false and a session.snapshot."""
    async with (
        live_server(
            store=store_url(store_kind, request),
            log_max_len=10,
            echo_tokens_per_second=300,
            echo_reply_tokens=30,
        ) as srv,
        client(srv) as c,
    ):
        sid, h = await open_session(c)
        for i in range(2):
            r = await c.post(
                f"/v1/sessions/{sid}/messages", headers=h, json={"client_msg_id": f"c{i}", "content": "x"}
            )
            assert r.status_code == 200
        last = r.json()["last_seq"]
        async with c.stream("GET", f"/v1/sessions/{sid}/events", headers={**h, "Last-Event-ID": "1"}) as s:
            events = await sse(s.aiter_lines(), until="session.snapshot")
        assert events[0].event == "session.ready" and events[0].data["recovered"] is False
        snap = events[-1]
        assert snap.id == snap.data["last_seq"] == last
        assert [t["role"] for t in snap.data["turns"]] == ["user", "assistant"] * 2


async def test_cancel_ends_a_running_job_as_cancelled(
    store_kind: str, request: pytest.FixtureRequest
) -> None:
    """POST .../cancel answers cancelling for a running job (then finished) and the job ends cancelled."""
    async with live_server(store=store_url(store_kind, request), **SLOW) as srv, client(srv) as c:
        sid, h = await open_session(c)
        r = await c.post(
            f"/v1/sessions/{sid}/messages",
            headers={**h, "Prefer": "respond-async"},
            json={"client_msg_id": "c1", "content": "stop me"},
        )
        location = r.headers["location"]
        cancel = await c.post(f"{location}/cancel", headers=h)
        assert cancel.status_code == 200 and cancel.json()["outcome"] == "cancelling"
        job = await poll_until_done(c, location, h)
        assert job["status"] == "cancelled"
        again = await c.post(f"{location}/cancel", headers=h)
        assert again.json()["outcome"] == "finished"


async def test_feedback_is_logged_with_its_seq(server: Any) -> None:
    """POST .../feedback answers the seq of its feedback.recorded."""
    async with client(server) as c:
        sid, h = await open_session(c)
        result = (
            await c.post(
                f"/v1/sessions/{sid}/messages", headers=h, json={"client_msg_id": "c", "content": "x"}
            )
        ).json()
        r = await c.post(
            f"/v1/sessions/{sid}/feedback",
            headers=h,
            json={"response_id": result["response_id"], "rating": "up"},
        )
        assert r.status_code == 200
        assert r.json() == {
            "response_id": result["response_id"],
            "rating": "up",
            "seq": result["last_seq"] + 1,
        }


# ------------------------------------------------------------------ tool calls

SELECTION = {
    "name": "get_selection",
    "description": "The text the user selected in the page.",
    "parameters": {"type": "object", "properties": {"limit": {"type": "integer"}}},
}


async def stream_turn(c: httpx.AsyncClient, sid: str, h: dict[str, str], body: dict[str, Any]) -> list[Event]:
    """POST a message as SSE: its events up to its first response.completed (tool_calls ends it)."""
    headers = {**h, "Accept": "text/event-stream"}
    async with c.stream("POST", f"/v1/sessions/{sid}/messages", headers=headers, json=body) as r:
        assert r.status_code == 200
        return await sse(r.aiter_lines())


async def tail_until_completed(c: httpx.AsyncClient, sid: str, h: dict[str, str], after: int) -> list[Event]:
    async with c.stream("GET", f"/v1/sessions/{sid}/events?after={after}", headers=h) as r:
        assert r.status_code == 200
        return await sse(r.aiter_lines(), until="response.completed")


async def test_a_client_tool_round_trip_over_http(server: Any) -> None:
    """A call read from the stream and answered by POST .../tool-results continues into a reply with its
    output; the same result again is a duplicate naming the original seq; an unknown call is 400."""
    async with client(server) as c:
        sid, h = await open_session(c)
        first = await stream_turn(
            c,
            sid,
            h,
            {"client_msg_id": "t1", "content": '/tool get_selection {"limit": 5}', "tools": [SELECTION]},
        )
        call = next(e.data for e in first if e.event == "response.tool_call")
        assert call["name"] == "get_selection" and call["arguments"] == {"limit": 5}
        assert first[-1].data["finish_reason"] == "tool_calls"
        url = f"/v1/sessions/{sid}/tool-results"
        r = await c.post(url, headers=h, json={"call_id": call["call_id"], "output": "the selected text"})
        assert r.status_code == 200, r.text
        assert r.json() == {"call_id": call["call_id"], "outcome": "accepted"}
        rest = await tail_until_completed(c, sid, h, first[-1].id or 0)
        accepted = next(e for e in rest if e.event == "tool.result.accepted")
        assert accepted.data["output"] == "the selected text" and accepted.data["is_error"] is False
        final = rest[-1].data
        assert final["finish_reason"] == "stop"
        reply = "".join(e.data["text"] for e in rest if e.event == "response.delta")
        assert "get_selection returned the selected text" in reply
        again = await c.post(
            url, headers=h, json={"call_id": call["call_id"], "output": "other", "is_error": True}
        )
        assert again.status_code == 200, again.text
        assert again.json() == {
            "call_id": call["call_id"],
            "outcome": "duplicate",
            "response_id": call["response_id"],
            "accepted_seq": accepted.id,
        }
        unknown = await c.post(url, headers=h, json={"call_id": "call_nope", "output": "x"})
        assert error_of(unknown, 400, "invalid_message")["ref"] == {
            "type": "tool.result",
            "call_id": "call_nope",
        }
        error_of(await c.post(url, headers=h, json={"output": "no call id"}), 400, "invalid_message")
        error_of(await c.post(url, json={"call_id": "c", "output": "x"}), 401, "unauthorized")


async def test_cancelling_a_response_that_waits_for_tool_results_answers_cancelling(server: Any) -> None:
    """POST .../cancel on a response waiting for tool results ends the wait (its continuation is logged
    cancelled) and answers 200 like any cancel; a result sent afterwards is refused."""
    async with client(server) as c:
        sid, h = await open_session(c)
        first = await stream_turn(
            c, sid, h, {"client_msg_id": "w1", "content": "/tool get_selection {}", "tools": [SELECTION]}
        )
        call = next(e.data for e in first if e.event == "response.tool_call")
        r = await c.post(f"/v1/sessions/{sid}/responses/{call['response_id']}/cancel", headers=h)
        assert r.status_code == 200, r.text
        assert r.json() == {"response_id": call["response_id"], "outcome": "cancelling"}
        rest = await tail_until_completed(c, sid, h, first[-1].id or 0)
        assert rest[-1].data["finish_reason"] == "cancelled"
        late = await c.post(
            f"/v1/sessions/{sid}/tool-results", headers=h, json={"call_id": call["call_id"], "output": "x"}
        )
        error_of(late, 400, "invalid_message")


async def test_a_server_tool_is_approved_over_http(
    store_kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """POST .../tool-approvals runs a server tool that asked; its result continues the turn; twice is 400."""
    profiles = tmp_path / "profiles.toml"
    profiles.write_text('default = "main"\n[profiles.main]\ntools = ["tests.server_tools:guarded"]\n')
    async with (
        live_server(store=store_url(store_kind, request), profiles=str(profiles), **FAST) as srv,
        client(srv) as c,
    ):
        sid, h = await open_session(c)
        first = await stream_turn(
            c, sid, h, {"client_msg_id": "g1", "content": '/tool guarded {"text": "go"}'}
        )
        asked = next(e.data for e in first if e.event == "tool.approval_requested")
        url = f"/v1/sessions/{sid}/tool-approvals"
        r = await c.post(url, headers=h, json={"call_id": asked["call_id"], "approved": True})
        assert r.status_code == 200, r.text
        assert r.json() == {"call_id": asked["call_id"], "approved": True}
        rest = await tail_until_completed(c, sid, h, first[-1].id or 0)
        accepted = next(e.data for e in rest if e.event == "tool.result.accepted")
        assert accepted["output"] == "approved: go" and accepted["is_error"] is False
        assert server_tools.STARTED.count(("guarded", asked["call_id"])) == 1
        assert rest[-1].data["finish_reason"] == "stop"
        twice = await c.post(url, headers=h, json={"call_id": asked["call_id"], "approved": False})
        error_of(twice, 400, "invalid_message")


# ------------------------------------------------------------------ another instance


@pytest.fixture
def two_instances(redis_url: str) -> Iterator[list[ServerProcess]]:
    env = {
        "PARLEY_STORE": redis_url,
        "PARLEY_ECHO_TOKENS_PER_SECOND": "40",
        "PARLEY_ECHO_REPLY_TOKENS": "40",
        "PARLEY_LOG_FORMAT": "json",
    }
    procs = [ServerProcess(dict(env)) for _ in range(2)]
    for p in procs:
        p.start()
    yield procs
    for p in procs:
        p.stop()


async def test_an_sse_stream_cut_mid_reply_resumes_on_another_instance(
    two_instances: list[ServerProcess],
) -> None:
    """A turn's stream cut on instance A, resumed with Last-Event-ID on B: same text, no gap or duplicate."""
    a, b = two_instances
    async with (
        httpx.AsyncClient(base_url=a.http, timeout=20) as ca,
        httpx.AsyncClient(base_url=b.http, timeout=20) as cb,
    ):
        sid, h = await open_session(ca)
        async with ca.stream(
            "POST",
            f"/v1/sessions/{sid}/messages",
            headers={**h, "Accept": "text/event-stream"},
            json={"client_msg_id": "c1", "content": "a long reply"},
        ) as r:
            before = await sse(r.aiter_lines(), count=5)  # cut mid-reply
        cut = before[-1].id
        assert cut is not None and before[-1].event == "response.delta"
        async with cb.stream(
            "GET", f"/v1/sessions/{sid}/events", headers={**h, "Last-Event-ID": str(cut)}
        ) as r:
            after = await sse(r.aiter_lines(), until="response.completed")
        assert after[0].event == "session.ready" and after[0].data["recovered"] is True
        seqs = [e.id for e in logged(before)] + [e.id for e in logged(after)]
        assert seqs == list(range(1, len(seqs) + 1))
        rid = before[1].data["response_id"]
        job = (await cb.get(f"/v1/sessions/{sid}/responses/{rid}", headers=h)).json()
        assert text_of(logged(before) + logged(after)) == job["result"]["text"]


# ------------------------------------------------------------------ errors


def error_of(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = ErrorBody.model_validate(r.json()).error
    assert body.code == code
    assert body.trace_id == r.headers["x-request-id"]
    return r.json()["error"]


async def test_every_error_has_its_status_and_body(store_kind: str, request: pytest.FixtureRequest) -> None:
    """400, 401, 404, 409 and 413 carry the WebSocket's codes in the error body, Retry-After if retryable."""
    async with (
        live_server(store=store_url(store_kind, request), max_message_chars=100, **SLOW) as srv,
        client(srv) as c,
    ):
        sid, h = await open_session(c)
        url = f"/v1/sessions/{sid}/messages"
        error_of(await c.post(url, headers=h, content=b"{not json"), 400, "invalid_message")
        error_of(await c.post(url, headers=h, json={"content": "no id"}), 400, "invalid_message")
        bad = await c.get(f"/v1/sessions/{sid}/events", headers={**h, "Last-Event-ID": "x"})
        assert "Last-Event-ID" in error_of(bad, 400, "invalid_message")["message"]
        ahead = await c.get(f"/v1/sessions/{sid}/events", headers={**h, "Last-Event-ID": "999"})
        error_of(ahead, 400, "invalid_message")
        error_of(await c.get(f"/v1/sessions/{sid}/responses/r_nope", headers=h), 400, "invalid_message")
        unauth = await c.post(url, json={"client_msg_id": "c", "content": "x"})
        error_of(unauth, 401, "unauthorized")
        assert unauth.headers["www-authenticate"].startswith("Bearer")
        wrong = {"Parley-Resume-Token": "wrong"}
        error_of(
            await c.post(url, headers=wrong, json={"client_msg_id": "c", "content": "x"}),
            404,
            "session_not_found",
        )
        error_of(await c.get("/v1/sessions/s_unknown/responses/r_1", headers=h), 404, "session_not_found")
        too_long = {"client_msg_id": "big", "content": "x" * 101}
        error_of(await c.post(url, headers=h, json=too_long), 413, "payload_too_large")
        error_of(await c.post(url, headers=h, content=b"{" + b" " * 70_000 + b"}"), 413, "payload_too_large")
        jobs = {**h, "Prefer": "respond-async"}
        first = await c.post(url, headers=jobs, json={"client_msg_id": "c1", "content": "x"})
        assert first.status_code == 202
        busy = await c.post(url, headers=jobs, json={"client_msg_id": "c2", "content": "y"})
        assert error_of(busy, 409, "busy")["retryable"] is True
        assert int(busy.headers["retry-after"]) >= 1


async def test_a_rate_limited_call_is_429_with_retry_after(
    store_kind: str, request: pytest.FixtureRequest
) -> None:
    """Past the user's messages per minute a call is 429 rate_limited with retry_after_ms and Retry-After."""
    limits = {"identity_limits": "on", "user_messages_per_minute": 2}
    async with live_server(store=store_url(store_kind, request), **limits, **FAST) as srv, client(srv) as c:
        sid, h = await open_session(c)
        url = f"/v1/sessions/{sid}/messages"
        for i in range(2):
            assert (
                await c.post(url, headers=h, json={"client_msg_id": f"c{i}", "content": "x"})
            ).status_code == 200
        limited = await c.post(url, headers=h, json={"client_msg_id": "c3", "content": "z"})
        err = error_of(limited, 429, "rate_limited")
        assert err["retry_after_ms"] > 0 and int(limited.headers["retry-after"]) >= 1


async def test_a_draining_server_answers_503_with_retry_after(server: Any) -> None:
    """While the server drains, session calls answer 503 overloaded with Retry-After."""
    async with client(server) as c:
        sid, h = await open_session(c)
        server.state.draining = True
        try:
            r = await c.get(f"/v1/sessions/{sid}/responses/r_1", headers=h)
        finally:
            server.state.draining = False
        error_of(r, 503, "overloaded")
        assert r.headers["retry-after"] == "1"


async def test_hosts_and_url_credentials_are_refused_on_every_path(server: Any) -> None:
    """A Host not allowed is refused (400) and a token in the URL is 401, on the HTTP API's paths too."""
    async with client(server) as c:
        sid, h = await open_session(c)
        r = await c.get(f"/v1/sessions/{sid}/events", headers={**h, "Host": "rebind.attacker.test"})
        assert r.status_code == 400
        r = await c.post("/v1/sessions", headers={"Host": "rebind.attacker.test"})
        assert r.status_code == 400
        r = await c.get(f"/v1/sessions/{sid}/events?resume_token={h['Parley-Resume-Token']}")
        assert r.status_code == 401


# ------------------------------------------------------------------ auth and tenants


def token(user: str, tenant: str = "acme") -> str:
    return jwt.encode({"sub": user, "tenant": tenant, "exp": int(time.time()) + 300}, JWT_SECRET)


async def test_auth_and_tenants_as_on_the_websocket(store_kind: str, request: pytest.FixtureRequest) -> None:
    """With auth on the JWT is required on every call; another user's or tenant's session is 404."""
    async with live_server(store=store_url(store_kind, request), auth_jwt_secret=JWT_SECRET, **FAST) as srv:
        async with client(srv) as c:
            error_of(await c.post("/v1/sessions"), 401, "unauthorized")
            error_of(
                await c.post("/v1/sessions", headers={"Authorization": "Bearer nope"}), 401, "unauthorized"
            )
            alice = {"Authorization": f"Bearer {token('alice')}"}
            sid, h = await open_session(c, **alice)
            url = f"/v1/sessions/{sid}/messages"
            body = {"client_msg_id": "c1", "content": "hi"}
            ok = await c.post(url, headers=alice, json=body)  # the identity proves the session
            assert ok.status_code == 200, ok.text
            assert (await c.post(url, headers={**alice, **h}, json=body)).status_code == 200
            error_of(
                await c.post(url, headers=h, json=body), 401, "unauthorized"
            )  # a token alone is not enough
            for other in (token("bob"), token("alice", tenant="globex")):
                foreign = {"Authorization": f"Bearer {other}", **h}
                error_of(await c.post(url, headers=foreign, json=body), 404, "session_not_found")
                error_of(await c.get(f"/v1/sessions/{sid}/events", headers=foreign), 404, "session_not_found")
                rid = ok.json()["response_id"]
                error_of(
                    await c.get(f"/v1/sessions/{sid}/responses/{rid}", headers=foreign),
                    404,
                    "session_not_found",
                )


async def test_anonymous_tenants_come_from_the_session(server: Any) -> None:
    """With auth off, a session opened with metadata keeps its tenant: its resume token alone proves it."""
    async with client(server) as c:
        r = await c.post("/v1/sessions", json={"metadata": {"tenant_id": "acme", "user_id": "u1"}})
        sid, tok = r.json()["session_id"], r.json()["resume_token"]
        _, other = await open_session(c)
        body = {"client_msg_id": "c1", "content": "hi"}
        ok = await c.post(f"/v1/sessions/{sid}/messages", headers={"Parley-Resume-Token": tok}, json=body)
        assert ok.status_code == 200
        error_of(
            await c.post(f"/v1/sessions/{sid}/messages", headers=other, json=body), 404, "session_not_found"
        )


# ------------------------------------------------------------------ webhooks


def hooked(store: str, **more: Any) -> Any:
    settings = {
        "webhook_secret": SECRET,
        "webhook_allowed_hosts": "127.0.0.1",
        "webhook_backoff_base_ms": 50,
        "webhook_backoff_max_ms": 200,
        "webhook_poll_ms": 20,
        **FAST,
    }
    return live_server(store=store, **{**settings, **more})


async def test_a_job_webhook_is_delivered_signed(
    store_kind: str,
    request: pytest.FixtureRequest,
    receiver: Receiver,  # noqa: F811
) -> None:
    """A job's webhook_url gets the finished job (checked by standardwebhooks); its poll says delivered."""
    async with hooked(store_url(store_kind, request)) as srv, client(srv) as c:
        sid, h = await open_session(c)
        r = await c.post(
            f"/v1/sessions/{sid}/messages",
            headers={**h, "Prefer": "respond-async"},
            json={"client_msg_id": "c1", "content": "hook", "webhook_url": receiver.url()},
        )
        assert r.status_code == 202, r.text
        await eventually(lambda: len(receiver.received) == 1, "the webhook")
        payload = receiver.received[0]["payload"]
        job = await poll_until_done(c, r.headers["location"], h)
        assert payload["type"] == "response.completed"
        assert payload["data"]["result"] == job["result"]
        await eventually(lambda: _delivered(c, r.headers["location"], h), "the poll to show the delivery")


async def _delivered(c: httpx.AsyncClient, location: str, h: dict[str, str]) -> bool:
    hook = (await c.get(location, headers=h)).json().get("webhook") or {}
    return hook.get("state") == "delivered" and hook.get("last_status") == 200


async def test_a_failing_receiver_gets_three_attempts_with_one_id(
    store_kind: str,
    request: pytest.FixtureRequest,
    receiver: Receiver,  # noqa: F811
) -> None:
    """A receiver that fails twice then succeeds sees 3 attempts with the same webhook-id."""
    receiver.answers = [500, 503]
    async with hooked(store_url(store_kind, request)) as srv, client(srv) as c:
        sid, h = await open_session(c)
        r = await c.post(
            f"/v1/sessions/{sid}/messages",
            headers={**h, "Accept": "application/json"},  # a sync call may name a webhook too
            json={"client_msg_id": "c1", "content": "retry", "webhook_url": receiver.url()},
        )
        assert r.status_code == 200
        location = f"/v1/sessions/{sid}/responses/{r.json()['response_id']}"
        await eventually(lambda: _delivered(c, location, h), "the third attempt")
        assert len(set(receiver.ids())) == 1 and len(receiver.ids()) == 3
        assert (await c.get(location, headers=h)).json()["webhook"]["attempts"] == 3


async def test_a_restart_during_retries_still_delivers(
    redis_url: str,
    receiver: Receiver,  # noqa: F811
) -> None:
    """A delivery failing when its instance stops is made by the next instance on the same Redis."""
    receiver.answers = [500]
    async with (
        hooked(redis_url, webhook_backoff_base_ms=1500, webhook_backoff_max_ms=1500) as srv,
        client(srv) as c,
    ):
        sid, h = await open_session(c)
        r = await c.post(
            f"/v1/sessions/{sid}/messages",
            headers={**h, "Prefer": "respond-async"},
            json={"client_msg_id": "c1", "content": "restart", "webhook_url": receiver.url()},
        )
        await eventually(lambda: len(receiver.received) == 1, "the first, failed attempt")
    async with hooked(redis_url) as srv2, client(srv2) as c2:
        await eventually(lambda: _delivered(c2, r.headers["location"], h), "the retry on the new instance")
    assert len(receiver.ids()) == 2 and len(set(receiver.ids())) == 1


async def test_a_webhook_host_not_allowed_is_refused_before_the_turn(
    store_kind: str,
    request: pytest.FixtureRequest,
    receiver: Receiver,  # noqa: F811
) -> None:
    """A webhook_url outside PARLEY_WEBHOOK_ALLOWED_HOSTS is 400 and no turn starts; nothing is sent."""
    async with hooked(store_url(store_kind, request)) as srv, client(srv) as c:
        sid, h = await open_session(c)
        r = await c.post(
            f"/v1/sessions/{sid}/messages",
            headers={**h, "Prefer": "respond-async"},
            json={"client_msg_id": "c1", "content": "no", "webhook_url": receiver.url(host="localhost")},
        )
        assert "PARLEY_WEBHOOK_ALLOWED_HOSTS" in error_of(r, 400, "invalid_message")["message"]
        async with c.stream("GET", f"/v1/sessions/{sid}/events?after=0", headers=h) as s:
            events = await sse(s.aiter_lines(), until="session.ready")
        assert events[-1].data["last_seq"] == 0
    assert receiver.received == []


async def test_a_profile_names_the_webhook(
    store_kind: str,
    request: pytest.FixtureRequest,
    receiver: Receiver,  # noqa: F811
    tmp_path: Any,
) -> None:
    """A profile's webhook_url is used by jobs that name none."""
    profiles = tmp_path / "profiles.toml"
    profiles.write_text(
        f'[profiles.hooked]\nprovider = "echo"\nmodel = "echo"\nwebhook_url = "{receiver.url()}"\n'
    )
    async with hooked(store_url(store_kind, request), profiles=str(profiles)) as srv, client(srv) as c:
        sid, h = await open_session(c)
        r = await c.post(
            f"/v1/sessions/{sid}/messages",
            headers={**h, "Prefer": "respond-async"},
            json={"client_msg_id": "c1", "content": "via profile"},
        )
        assert r.status_code == 202
        await eventually(lambda: len(receiver.received) == 1, "the profile's webhook")
        assert receiver.received[0]["payload"]["data"]["response_id"] == r.json()["response_id"]


# ------------------------------------------------------------------ the document


#: /v1 paths the app serves that are not the HTTP API of the OpenAPI document, and where they are described.
NOT_IN_OPENAPI = {
    "/v1/ws": "the WebSocket: /v1/asyncapi.json",
    "/v1/asyncapi.json": "the WebSocket's own document",
    "/v1/feedback": "the admin export: docs/operations.md",
}


async def test_openapi_is_served_and_matches_the_routes(server: Any) -> None:
    """/v1/openapi.json is the generated document, and lists exactly the HTTP API routes the app serves."""
    async with client(server) as c:
        r = await c.get("/v1/openapi.json")
    assert r.status_code == 200 and r.json() == openapi_document()
    doc = r.json()["paths"]
    served: dict[str, set[str]] = {}
    for route in server.app.routes:
        if isinstance(route, Route) and route.path.startswith("/v1/") and route.path not in NOT_IN_OPENAPI:
            served[route.path] = {m.lower() for m in (route.methods or ()) if m != "HEAD"}
    assert served == {path: set(ops) for path, ops in doc.items()}
    assert "/v1/ws" not in doc and all(p.startswith("/v1/") for p in doc)
