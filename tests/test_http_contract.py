"""The HTTP API's pure contract: bodies, error statuses, SSE framing, and the OpenAPI 3.1 document."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any, get_args

import pytest
from hypothesis import given
from hypothesis import strategies as st
from openapi_spec_validator import validate
from pydantic import ValidationError

from parley.protocol import ERROR_CLASSES, ErrorCode, encode, with_seq
from parley.protocol import http as h
from parley.protocol.codec import encode_delta
from parley.protocol.errors import InvalidMessage, RateLimited, Unauthorized, UpstreamUnavailable
from parley.protocol.messages import (
    MAX_SEQ,
    Error,
    Feedback,
    FinishReason,
    Hello,
    MessageAccepted,
    MessageSend,
    ResponseCompleted,
    SessionSnapshot,
    ToolApprove,
    ToolResult,
)


def parse_sse(raw: bytes) -> list[dict[str, Any]]:
    """A small SSE parser written from the HTML spec's algorithm (not from the code under test)."""
    events: list[dict[str, Any]] = []
    data: list[str] = []
    event: dict[str, Any] = {}
    text = raw.decode().replace("\r\n", "\n").replace("\r", "\n")
    for line in text.split("\n"):
        if line == "":
            if data or event:
                events.append({**event, "data": "\n".join(data)} if data else {**event})
            data, event = [], {}
            continue
        if line.startswith(":"):
            event.setdefault("comments", []).append(line[1:].lstrip())
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        else:
            event[name] = value
    return events


# ------------------------------------------------------------------ errors


def test_every_error_code_has_exactly_one_http_status() -> None:
    """HTTP_STATUS covers every wire code (a new code without a status fails here) and nothing else."""
    assert set(h.HTTP_STATUS) == set(ErrorCode)
    for code in ErrorCode:
        assert isinstance(h.HTTP_STATUS[code], HTTPStatus)
        assert 400 <= h.http_status(code) < 600


def test_statuses_are_the_ones_the_issue_names() -> None:
    """400 invalid, 401, 403, 404 not found (foreign too), 409 busy, 413, 429 limited, 503 outage."""
    expect = {
        ErrorCode.INVALID_MESSAGE: 400,
        ErrorCode.UNAUTHORIZED: 401,
        ErrorCode.FORBIDDEN: 403,
        ErrorCode.SESSION_NOT_FOUND: 404,
        ErrorCode.BUSY: 409,
        ErrorCode.PAYLOAD_TOO_LARGE: 413,
        ErrorCode.RATE_LIMITED: 429,
        ErrorCode.UPSTREAM_UNAVAILABLE: 503,
        ErrorCode.OVERLOADED: 503,
    }
    assert {code: h.http_status(code) for code in expect} == expect


def test_error_body_carries_the_websocket_fields_and_the_trace_id() -> None:
    """The body is {"error": {code, message, retryable, retry_after_ms?, trace_id}}, absent fields omitted."""
    body = json.loads(h.error_body(RateLimited(retry_after_ms=1500), "t1").model_dump_json(exclude_none=True))
    assert body == {
        "error": {
            "code": "rate_limited",
            "message": "rate limit exceeded",
            "retryable": True,
            "retry_after_ms": 1500,
            "trace_id": "t1",
        }
    }
    for code, cls in ERROR_CLASSES.items():
        detail = h.error_body(cls(), "t").error
        assert detail.code is code and detail.retryable is code.retryable


def test_retry_after_is_whole_seconds_rounded_up() -> None:
    """A retry hint of 1500 ms becomes Retry-After: 2; 1 ms becomes 1 (never 0)."""
    assert h.error_headers(RateLimited(retry_after_ms=1500), "t")["Retry-After"] == "2"
    assert h.error_headers(UpstreamUnavailable(retry_after_ms=1), "t")["Retry-After"] == "1"


def test_429_and_503_always_say_retry_after() -> None:
    """A 429 or 503 without a hint of its own still tells the caller when to come back."""
    for exc in (RateLimited(), UpstreamUnavailable()):
        assert h.error_headers(exc, "t")["Retry-After"] == str(h.DEFAULT_RETRY_AFTER_S)


def test_errors_that_a_retry_cannot_fix_carry_no_retry_after() -> None:
    """invalid_message never tells the caller to retry; every answer carries X-Request-Id."""
    headers = h.error_headers(InvalidMessage(retry_after_ms=5000), "trace-9")
    assert "Retry-After" not in headers and headers["X-Request-Id"] == "trace-9"


def test_unauthorized_names_the_bearer_scheme() -> None:
    """A 401 says how to authenticate (RFC 6750)."""
    assert h.error_headers(Unauthorized(), "t")["WWW-Authenticate"].startswith("Bearer")


# ------------------------------------------------------------------ bodies


def test_message_request_is_message_send_plus_webhook_url() -> None:
    """The HTTP body has every MessageSend field, with the same type and bounds, plus webhook_url."""
    assert set(h.MessageRequest.model_fields) == set(MessageSend.model_fields) | {"webhook_url"}
    for name, info in MessageSend.model_fields.items():
        if name != "type":
            assert h.MessageRequest.model_fields[name].annotation == info.annotation
            assert h.MessageRequest.model_fields[name].metadata == info.metadata


def test_message_request_validates_like_the_websocket() -> None:
    """No type needed; strict types, the same bounds, and as_send() is the WebSocket message."""
    req = h.MessageRequest.model_validate_json(
        '{"client_msg_id":"c1","content":"hi","profile":"p",'
        '"response_format":{"type":"json_schema","schema":{"type":"object"}},"extra":1}'
    )
    send = req.as_send()
    assert type(send) is MessageSend and send.client_msg_id == "c1" and send.profile == "p"
    assert send.response_format is not None and send.response_format.type == "json_schema"
    for bad in (
        '{"client_msg_id":"c","content":7}',
        '{"client_msg_id":"c","content":""}',
        '{"client_msg_id":"' + "x" * 129 + '","content":"hi"}',
        '{"content":"hi"}',
    ):
        with pytest.raises(ValidationError):
            h.MessageRequest.model_validate_json(bad)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://hooks.example.com/x",
        "/relative/path",
        "https://user:pw@hooks.example.com/x",
        "https://hooks.example.com:notaport/x",
        "https://hooks.example.com/x#frag",
        "https:///nohost",
        "https://h.example/" + "a" * h.MAX_URL_LENGTH,
    ],
)
def test_webhook_url_must_be_a_plain_http_url(url: str) -> None:
    """A webhook_url that is not an absolute http(s) URL without credentials is refused by shape."""
    with pytest.raises(ValidationError):
        h.MessageRequest(client_msg_id="c", content="hi", webhook_url=url)


def test_webhook_url_accepts_http_and_https() -> None:
    """Both schemes are fine by shape; the server's allowlist decides the host."""
    for url in ("https://hooks.example.com/parley?x=1", "http://127.0.0.1:9000/hook"):
        assert h.MessageRequest(client_msg_id="c", content="hi", webhook_url=url).webhook_url == url


def test_feedback_request_is_feedback_without_type() -> None:
    """The feedback body reuses the feedback message's fields and bounds."""
    assert set(h.FeedbackRequest.model_fields) == set(Feedback.model_fields)
    fb = h.FeedbackRequest.model_validate_json('{"response_id":"r","rating":"up","tags":["a"]}').as_feedback()
    assert type(fb) is Feedback and fb.rating == "up" and fb.tags == ["a"]
    with pytest.raises(ValidationError):
        h.FeedbackRequest.model_validate_json('{"response_id":"r","rating":"meh"}')


def test_tool_requests_are_the_tool_messages_without_type() -> None:
    """The tool-results and tool-approvals bodies reuse tool.result's and tool.approve's fields and bounds."""
    assert set(h.ToolResultRequest.model_fields) == set(ToolResult.model_fields)
    assert set(h.ToolApproveRequest.model_fields) == set(ToolApprove.model_fields)
    res = h.ToolResultRequest.model_validate_json('{"call_id":"c1","output":{"a":1}}').as_message()
    assert type(res) is ToolResult and res.output == {"a": 1} and res.is_error is False
    ok = h.ToolApproveRequest.model_validate_json('{"call_id":"c1","approved":false}').as_message()
    assert type(ok) is ToolApprove and ok.approved is False
    with pytest.raises(ValidationError):
        h.ToolApproveRequest.model_validate_json(
            '{"call_id":"c1","approved":"yes"}'
        )  # strict, as on the WebSocket


def test_session_create_metadata_is_hellos() -> None:
    """POST /v1/sessions takes hello's metadata, with the same bound on its size."""
    assert h.SessionCreate.model_fields["metadata"].annotation == Hello.model_fields["metadata"].annotation
    assert h.SessionCreate.model_validate_json('{"metadata":{"tenant_id":"t"}}').metadata == {
        "tenant_id": "t"
    }
    with pytest.raises(ValidationError):
        h.SessionCreate.model_validate({"metadata": {f"k{i}": i for i in range(33)}})


# ------------------------------------------------------------------ states


def test_job_status_moves_forward_only() -> None:
    """queued -> running -> terminal; nothing leaves a terminal state; no step back."""
    q, r, c = h.JobStatus.QUEUED, h.JobStatus.RUNNING, h.JobStatus.COMPLETED
    assert q.to(r) is r and r.to(c) is c and q.to(h.JobStatus.CANCELLED) is h.JobStatus.CANCELLED
    for bad in ((r, q), (c, r), (c, h.JobStatus.FAILED), (r, r)):
        with pytest.raises(ValueError):
            bad[0].to(bad[1])


def test_every_finish_reason_has_a_terminal_job_status() -> None:
    """Each finish_reason has a terminal status: cancelled; failed for error/interrupted; else completed."""
    mapping = {reason: h.JobStatus.of_finish(reason) for reason in get_args(FinishReason)}
    assert all(status.terminal for status in mapping.values())
    assert mapping["cancelled"] is h.JobStatus.CANCELLED
    assert mapping["error"] is mapping["interrupted"] is h.JobStatus.FAILED
    assert mapping["stop"] is mapping["length"] is h.JobStatus.COMPLETED


def test_webhook_state_refuses_bad_transitions() -> None:
    """waiting -> pending -> delivered|failed; a pending delivery may stay pending (a retry)."""
    w, p, d, f = (h.WebhookState(s) for s in ("waiting", "pending", "delivered", "failed"))
    assert w.to(p) is p and p.to(p) is p and p.to(d) is d and w.to(f) is f
    for a, b in ((w, d), (d, p), (f, p), (p, w)):
        with pytest.raises(ValueError):
            a.to(b)


# ------------------------------------------------------------------ negotiation


@pytest.mark.parametrize(
    ("accept", "prefer", "mode"),
    [
        ("text/event-stream", None, "sse"),
        ("application/json", None, "sync"),
        (None, None, "sync"),
        ("*/*", None, "sync"),
        ("text/event-stream, application/json;q=0.5", None, "sse"),
        ("application/json, text/event-stream;q=0.1", None, "sync"),
        ("text/event-stream;q=0", None, "sync"),
        ("text/event-stream", "respond-async", "async"),
        ("application/json", "wait=5, respond-async", "async"),
        ("application/json", "return=minimal", "sync"),
    ],
)
def test_choose_mode(accept: str | None, prefer: str | None, mode: str) -> None:
    """Prefer: respond-async makes a job; an Accept ranking event-stream first streams; else sync."""
    assert h.choose_mode(accept, prefer) == mode


def test_job_location_is_the_poll_path() -> None:
    """The Location of a job is its GET path."""
    assert h.job_location("s_1", "r_2") == "/v1/sessions/s_1/responses/r_2"


# ------------------------------------------------------------------ SSE


def test_a_logged_event_is_framed_with_its_seq_and_type() -> None:
    """id: = seq, event: = type, data: = exactly the WebSocket frame's JSON."""
    stored = with_seq(7, encode(MessageAccepted(client_msg_id="c", message_id="m", content="hi\nthere")))
    [event] = parse_sse(h.sse_logged(stored))
    assert event == {"id": "7", "event": "message.accepted", "data": stored}


def test_a_delta_with_line_breaks_stays_one_event() -> None:
    """A delta's newlines are escaped in its JSON, so the SSE event decodes to the same text."""
    stored = with_seq(12, encode_delta("r_1", "line one\nline two\r\n"))
    [event] = parse_sse(h.sse_logged(stored))
    assert event["id"] == "12" and event["event"] == "response.delta"
    assert json.loads(event["data"])["text"] == "line one\nline two\r\n"


@given(st.text(max_size=200), st.integers(min_value=1, max_value=MAX_SEQ))
def test_any_delta_round_trips_through_sse(text: str, seq: int) -> None:
    """Whatever text a delta holds, the SSE data decodes to the same event."""
    stored = with_seq(seq, encode_delta("r", text))
    [event] = parse_sse(h.sse_logged(stored))
    assert event["data"] == stored and int(event["id"]) == seq


def test_raw_multiline_data_is_split_into_data_lines() -> None:
    """Data with line breaks (never produced by JSON, but possible) is framed as several data: lines."""
    raw = h.sse_frame("a\nb\r\nc\rd", event="x")
    assert raw == b"event: x\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
    assert parse_sse(raw) == [{"event": "x", "data": "a\nb\nc\nd"}]


def test_logged_framing_refuses_an_event_without_seq() -> None:
    """Only stored events (seq first) can become SSE events with an id."""
    with pytest.raises(ValueError):
        h.sse_logged(encode(MessageAccepted(client_msg_id="c", message_id="m", content="x")))


def test_ephemeral_events_keep_the_cursor_unless_told() -> None:
    """An error has no id: (EventSource keeps its last id); a snapshot moves it to last_seq."""
    [err] = parse_sse(h.sse_event(Error(code=ErrorCode.BUSY, message="m", retryable=True)))
    assert "id" not in err and err["event"] == "error" and json.loads(err["data"])["code"] == "busy"
    snap = SessionSnapshot(last_seq=40, turns=[])
    [event] = parse_sse(h.sse_event(snap, id=snap.last_seq))
    assert event["id"] == "40" and event["event"] == "session.snapshot"


def test_terminal_event_is_framed_like_any_logged_event() -> None:
    """response.completed ends a turn's stream; it is an ordinary logged event on the wire."""
    stored = with_seq(9, encode(ResponseCompleted(response_id="r", finish_reason="stop")))
    [event] = parse_sse(h.sse_logged(stored))
    assert event["event"] == "response.completed" and event["id"] == "9"


def test_heartbeat_is_a_comment() -> None:
    """Heartbeats are comment lines EventSource ignores; a line break cannot escape the comment."""
    assert h.sse_comment() == b": heartbeat\n\n"
    [event] = parse_sse(h.sse_comment("a\nevent: evil"))
    assert event == {"comments": ["a event: evil"]}
    assert h.sse_retry(1500) == b"retry: 1500\n\n"


@pytest.mark.parametrize(
    ("header", "after", "cursor"),
    [
        ("12", None, 12),
        ("12", "3", 12),
        ("", "3", 3),
        ("  ", "3", 3),
        (None, "0", 0),
        (None, None, None),
        (str(MAX_SEQ), None, MAX_SEQ),
        (" 5 ", None, 5),
    ],
)
def test_cursor_comes_from_last_event_id_then_after(
    header: str | None, after: str | None, cursor: int | None
) -> None:
    """Last-Event-ID wins over ?after= (EventSource reconnects keep the first URL); empty is absent."""
    assert h.parse_cursor(header, after) == cursor


@pytest.mark.parametrize(
    ("header", "after", "named"),
    [
        ("abc", None, "Last-Event-ID"),
        ("-1", None, "Last-Event-ID"),
        ("1.5", None, "Last-Event-ID"),
        (str(MAX_SEQ + 1), None, "Last-Event-ID"),
        ("1" * 40, None, "Last-Event-ID"),
        (None, "x", "after"),
        (None, "", "after"),
        ("", "+3", "after"),
    ],
)
def test_a_bad_cursor_is_a_clear_invalid_message(header: str | None, after: str | None, named: str) -> None:
    """A cursor that is not a seq is invalid_message naming where it came from, never a crash."""
    with pytest.raises(InvalidMessage) as caught:
        h.parse_cursor(header, after)
    assert named in caught.value.message and "seq" in caught.value.message


# ------------------------------------------------------------------ OpenAPI


def test_openapi_document_is_valid_openapi_3_1() -> None:
    """openapi-spec-validator (the reference validator) accepts the generated document."""
    doc = h.openapi_document()
    assert doc["openapi"] == "3.1.0"
    validate(doc)
    json.dumps(doc)  # serializable as served


def test_openapi_names_every_path_and_header() -> None:
    """Every route of the API and every header the contract uses appears in the document."""
    doc = h.openapi_document()
    assert set(doc["paths"]) == {
        "/v1/sessions",
        "/v1/sessions/{session_id}/messages",
        "/v1/sessions/{session_id}/events",
        "/v1/sessions/{session_id}/responses/{response_id}",
        "/v1/sessions/{session_id}/responses/{response_id}/cancel",
        "/v1/sessions/{session_id}/feedback",
        "/v1/sessions/{session_id}/tool-results",
        "/v1/sessions/{session_id}/tool-approvals",
        "/v1/openapi.json",
    }
    text = json.dumps(doc)
    headers = ["Parley-Resume-Token", "Last-Event-ID", "Prefer", "traceparent", "X-Request-Id"]
    for header in [*headers, "Retry-After", "Location", "webhook-signature"]:
        assert f'"{header}"' in text, header
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_openapi_answers_sse_and_json_and_jobs() -> None:
    """sendMessage answers JSON or text/event-stream (200) or a job with Location (202); events is SSE."""
    paths = h.openapi_document()["paths"]
    send = paths["/v1/sessions/{session_id}/messages"]["post"]["responses"]
    assert set(send["200"]["content"]) == {"application/json", "text/event-stream"}
    assert "Location" in send["202"]["headers"]
    events = paths["/v1/sessions/{session_id}/events"]["get"]["responses"]["200"]["content"]
    assert set(events) == {"text/event-stream"}


def test_openapi_error_responses_use_the_status_table() -> None:
    """Each status of HTTP_STATUS is documented with the error body; 429 and 503 with Retry-After."""
    doc = h.openapi_document()
    seen: dict[str, Any] = {}
    for item in doc["paths"].values():
        for op in item.values():
            seen.update({k: v for k, v in op["responses"].items() if k.startswith(("4", "5"))})
    assert {str(int(s)) for s in h.HTTP_STATUS.values()} <= set(seen)
    for status, answer in seen.items():
        assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
        if status in ("429", "503"):
            assert "Retry-After" in answer["headers"]


def test_openapi_schemas_come_from_the_models() -> None:
    """Each request and answer model is a component schema; the job shows its webhook state."""
    schemas = h.openapi_document()["components"]["schemas"]
    for model in h.REQUEST_MODELS + h.RESPONSE_MODELS:
        assert model.__name__ in schemas
    assert "type" not in schemas["MessageRequest"]["properties"]
    assert set(schemas["WebhookStatus"]["properties"]) >= {"attempts", "last_status", "delivered_at"}
    assert set(schemas["Job"]["properties"]["status"].get("enum", [])) | {s.value for s in h.JobStatus} == {
        "queued",
        "running",
        "completed",
        "failed",
        "cancelled",
    }


# ------------------------------------------------------------------ trace ids and the turn fold


@pytest.mark.parametrize(
    ("traceparent", "request_id", "trace"),
    [
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "req-1",
            "4bf92f3577b34da6a3ce929d0e0e4736",
        ),
        ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", None, "4bf92f3577b34da6a3ce929d0e0e4736"),
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", "req-1", "req-1"),
        ("garbage", "req-1", "req-1"),
        (None, "abc:123/x=y", "abc:123/x=y"),
        (None, "bad\r\nSet-Cookie: x", None),
        (None, "x" * 65, None),
        (None, "", None),
        (None, None, None),
    ],
)
def test_trace_id_of_the_callers_headers(
    traceparent: str | None, request_id: str | None, trace: str | None
) -> None:
    """A valid traceparent wins, then a safe X-Request-Id; anything unsafe to echo is ignored."""
    assert h.trace_id_of(traceparent, request_id) == trace


def _turn_log(rid: str = "r_1", *, finish: str = "stop", start: int = 4) -> list[str]:
    from parley.protocol.messages import FeedbackRecorded, ResponseStarted, Usage

    bodies = [
        encode(MessageAccepted(client_msg_id="c", message_id="m_1", content="hi")),
        encode(ResponseStarted(response_id=rid, in_reply_to="m_1", profile="p@1", trace_id="t" * 32)),
        encode_delta(rid, "Hello"),
        encode(FeedbackRecorded(response_id=rid, rating="up")),  # rated while running: not the turn's
        encode_delta(rid, ", world"),
        encode(
            ResponseCompleted(
                response_id=rid,
                finish_reason=finish,
                usage=Usage(input_tokens=3, output_tokens=2),  # type: ignore[arg-type]
            )
        ),
    ]
    return [with_seq(start + i, body) for i, body in enumerate(bodies)]


def test_a_turns_log_folds_into_its_result() -> None:
    """message.accepted .. response.completed fold to the sync answer: text, usage, trace id and seq range."""
    fold = h.TurnFold("r_1")
    log = _turn_log()
    assert [fold.feed(d) for d in log] == [False] * 5 + [True]
    result = fold.result()
    assert result is not None and result.text == "Hello, world" and result.finish_reason == "stop"
    assert (result.first_seq, result.last_seq) == (4, 9) and result.trace_id == "t" * 32
    assert result.usage.output_tokens == 2
    job = fold.job("s_1")
    assert job.status is h.JobStatus.COMPLETED and job.result == result


def test_a_running_turn_is_a_running_job_without_result() -> None:
    """Before response.completed the job is running (queued before response.started) and has no result."""
    fold = h.TurnFold("r_1")
    assert fold.job("s").status is h.JobStatus.QUEUED
    for data in _turn_log()[:3]:
        fold.feed(data)
    assert fold.status is h.JobStatus.RUNNING and fold.result() is None and fold.text == "Hello"


def test_fold_status_follows_the_finish_reason() -> None:
    """A cancelled turn is a cancelled job; an interrupted one failed; events after the end are ignored."""
    for finish, status in (("cancelled", h.JobStatus.CANCELLED), ("interrupted", h.JobStatus.FAILED)):
        fold = h.TurnFold("r_1")
        for data in _turn_log(finish=finish):
            fold.feed(data)
        assert fold.status is status
        assert fold.feed(with_seq(99, encode_delta("r_1", "late")))
        assert fold.text == "Hello, world"


def test_fold_skips_other_responses() -> None:
    """Another response's events in the log (an older turn's, say) change nothing."""
    fold = h.TurnFold("r_other")
    assert not any(fold.feed(d) for d in _turn_log())
    assert fold.status is h.JobStatus.QUEUED and fold.text == ""
