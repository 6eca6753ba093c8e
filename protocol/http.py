"""The HTTP API's contract: bodies, error statuses, SSE framing and the OpenAPI 3.1 document.

Pure like the rest of ``parley.protocol``: no sockets, no clocks. The HTTP patterns are
views of the same session log as the WebSocket (docs/http.md):

- ``POST /v1/sessions`` opens a session (``SessionCreated``);
- ``POST /v1/sessions/{id}/messages`` sends a turn (``MessageRequest``) and answers it as
  an SSE stream, a synchronous ``ResponseResult``, or an async ``Job`` (``choose_mode``);
- ``GET /v1/sessions/{id}/events`` tails the log as SSE from ``Last-Event-ID``;
- ``GET .../responses/{rid}`` polls a ``Job``; ``POST .../cancel`` and ``POST .../feedback``;
- ``POST .../tool-results`` and ``POST .../tool-approvals`` answer a turn's tool calls.

Request bodies reuse the WebSocket messages' fields by inheritance (``MessageRequest`` *is*
a ``MessageSend``), so a field added to a message reaches HTTP without a copy. Every error
is ``ErrorBody`` with the WebSocket's codes; ``HTTP_STATUS`` gives each code one status.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime
from enum import StrEnum
from http import HTTPStatus
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator
from pydantic.json_schema import SkipJsonSchema, models_json_schema

from . import messages as m
from .codec import encode, seq_of
from .errors import ErrorCode, InvalidMessage, ParleyError

# ------------------------------------------------------------------ headers and media types

RESUME_TOKEN_HEADER = "Parley-Resume-Token"  # an anonymous caller's proof of the session
REQUEST_ID_HEADER = "X-Request-Id"  # echoed (or made up) on every answer: the trace id
TRACEPARENT_HEADER = "traceparent"  # W3C trace context; its trace id becomes the answer's
LAST_EVENT_ID_HEADER = "Last-Event-ID"  # an SSE reconnect's cursor: the last seq the caller has
PREFER_HEADER = "Prefer"  # "respond-async" asks for a job (RFC 7240)
RETRY_AFTER_HEADER = "Retry-After"  # whole seconds, on every retryable error
EVENT_STREAM = "text/event-stream"
JSON = "application/json"

#: Retry-After for a 429 or 503 whose error carries no hint of its own.
DEFAULT_RETRY_AFTER_S = 1
#: Longest accepted ``webhook_url``: a URL, never a document.
MAX_URL_LENGTH = 2048


class _Body(BaseModel):
    """A request body: strict like the WebSocket's client messages, unknown fields ignored."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ------------------------------------------------------------------ request bodies

#: ``POST /v1/sessions``: optional; the same ``metadata`` as ``hello.metadata`` (one definition).
SessionCreate: type[_Body] = create_model(
    "SessionCreate",
    __base__=_Body,
    __doc__="Opens a session; ``metadata`` is ``hello.metadata`` (tenant_id, user_id, trace_id ...).",
    metadata=(m.Hello.model_fields["metadata"].annotation, m.Hello.model_fields["metadata"]),
)


def checked_webhook_url(url: str | None) -> str | None:
    """Shape only (http or https, a host, no credentials); the host allowlist is the server's."""
    if url is None:
        return None
    try:
        parts = urlsplit(url)
        host, _port = parts.hostname, parts.port  # .port raises on a port that is not a number
    except ValueError:
        raise ValueError("webhook_url is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ValueError("webhook_url must be an absolute http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        raise ValueError("webhook_url must not carry credentials")
    if parts.fragment:
        raise ValueError("webhook_url must not have a #fragment")
    return url


class MessageRequest(m.MessageSend):
    """``POST /v1/sessions/{id}/messages``: a ``message.send`` without ``type``, plus ``webhook_url``.

    Every field of ``MessageSend`` (``client_msg_id``, ``content``, ``response_format``,
    ``profile``, ``metadata``, and ``tools`` once messages declare them) is inherited, with its
    bounds; ``webhook_url`` names where a job's result is POSTed, signed (docs/http.md).
    """

    type: SkipJsonSchema[Literal["message.send"]] = "message.send"
    webhook_url: Annotated[str, Field(max_length=MAX_URL_LENGTH)] | None = None

    @field_validator("webhook_url")
    @classmethod
    def _url_shape(cls, url: str | None) -> str | None:
        return checked_webhook_url(url)

    def as_send(self) -> m.MessageSend:
        """The WebSocket message this body stands for (what the session core handles)."""
        return m.MessageSend(**{name: getattr(self, name) for name in m.MessageSend.model_fields})


class FeedbackRequest(m.Feedback):
    """``POST /v1/sessions/{id}/feedback``: a ``feedback`` message without ``type``."""

    type: SkipJsonSchema[Literal["feedback"]] = "feedback"

    def as_feedback(self) -> m.Feedback:
        return m.Feedback(**{name: getattr(self, name) for name in m.Feedback.model_fields})


class ToolResultRequest(m.ToolResult):
    """``POST /v1/sessions/{id}/tool-results``: a ``tool.result`` message without ``type``."""

    type: SkipJsonSchema[Literal["tool.result"]] = "tool.result"

    def as_message(self) -> m.ToolResult:
        return m.ToolResult(**{name: getattr(self, name) for name in m.ToolResult.model_fields})


class ToolApproveRequest(m.ToolApprove):
    """``POST /v1/sessions/{id}/tool-approvals``: a ``tool.approve`` message without ``type``."""

    type: SkipJsonSchema[Literal["tool.approve"]] = "tool.approve"

    def as_message(self) -> m.ToolApprove:
        return m.ToolApprove(**{name: getattr(self, name) for name in m.ToolApprove.model_fields})


# ------------------------------------------------------------------ answers


class SessionCreated(_Answer):
    """201 to ``POST /v1/sessions``; send ``resume_token`` as ``Parley-Resume-Token`` from now on."""

    session_id: str
    resume_token: str


class ResponseResult(_Answer):
    """A finished turn: the synchronous answer, and a completed job's ``result``.

    ``first_seq``..``last_seq`` are the log entries of the turn (``message.accepted`` to
    ``response.completed``), so a caller can fetch its events from ``/events?after=``.
    """

    response_id: str
    text: str
    finish_reason: m.FinishReason
    usage: m.Usage
    trace_id: str
    first_seq: int
    last_seq: int
    output: Any = None  # the parsed JSON of a json_schema response
    error: m.ErrorInfo | None = None  # why a response ended with finish_reason "error"


class JobStatus(StrEnum):
    """Where an async job is; terminal states never change again."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)

    def can_become(self, other: JobStatus) -> bool:
        """Forward only: queued -> running -> a terminal state (a queued job may also end at once)."""
        if self.terminal:
            return False
        if self is JobStatus.QUEUED:
            return other is not JobStatus.QUEUED
        return other.terminal

    def to(self, other: JobStatus) -> JobStatus:
        """``other``, or ValueError for a transition the job cannot make."""
        if not self.can_become(other):
            raise ValueError(f"a {self.value} job cannot become {other.value}")
        return other

    @classmethod
    def of_finish(cls, finish_reason: str) -> JobStatus:
        """The terminal status of a turn that ended with ``finish_reason``.

        ``length`` and ``content_filter`` are answers (the result says why they are short);
        ``interrupted`` (its process died) and ``error`` are failures.
        """
        if finish_reason == "cancelled":
            return cls.CANCELLED
        if finish_reason in ("error", "interrupted"):
            return cls.FAILED
        return cls.COMPLETED


class WebhookState(StrEnum):
    """A job's webhook delivery: waiting for the job, then pending until delivered or given up."""

    WAITING = "waiting"  # the job is still running
    PENDING = "pending"  # armed: being attempted, or waiting for its next retry
    DELIVERED = "delivered"  # a 2xx came back
    FAILED = "failed"  # every attempt failed, or the URL is no longer allowed

    @property
    def terminal(self) -> bool:
        return self in (WebhookState.DELIVERED, WebhookState.FAILED)

    def can_become(self, other: WebhookState) -> bool:
        if self is WebhookState.WAITING:
            return other in (WebhookState.PENDING, WebhookState.FAILED)
        if self is WebhookState.PENDING:
            return other in (WebhookState.PENDING, WebhookState.DELIVERED, WebhookState.FAILED)
        return False

    def to(self, other: WebhookState) -> WebhookState:
        if not self.can_become(other):
            raise ValueError(f"a {self.value} webhook delivery cannot become {other.value}")
        return other


class WebhookStatus(_Answer):
    """A job's webhook as the poll shows it (the delivery record's public part)."""

    state: WebhookState
    attempts: int
    last_status: int | None = None  # HTTP status of the last attempt; None: no answer (timeout, refused)
    last_error: str | None = None  # why the last attempt failed, in a few words
    delivered_at: datetime | None = None


class Job(_Answer):
    """``GET /v1/sessions/{id}/responses/{rid}``: an async job (any turn can be polled)."""

    session_id: str
    response_id: str
    status: JobStatus
    result: ResponseResult | None = None  # once terminal
    webhook: WebhookStatus | None = None  # when the job named a webhook_url


class CancelResult(_Answer):
    """``POST .../responses/{rid}/cancel``: idempotent; the job ends as ``cancelled`` when it was running."""

    response_id: str
    outcome: Literal["cancelling", "finished"]


class FeedbackResult(_Answer):
    response_id: str
    rating: Literal["up", "down"]
    seq: int  # the logged feedback.recorded


class ToolResultReceipt(_Answer):
    """``POST .../tool-results``: ``accepted`` (``tool.result.accepted`` follows in the log), or
    ``duplicate``: this call's result was already logged at ``accepted_seq`` (the WebSocket's
    ``tool.result.duplicate``); nothing changed, so a retried POST is safe."""

    call_id: str
    outcome: Literal["accepted", "duplicate"]
    response_id: str | None = None  # duplicate: the response that made the call
    accepted_seq: int | None = None  # duplicate: the logged tool.result.accepted


class ToolApprovalReceipt(_Answer):
    """``POST .../tool-approvals``: the decision was taken (an approved call runs, a denied one is
    logged as its error result; ``tool.result.accepted`` follows in the log either way)."""

    call_id: str
    approved: bool


WEBHOOK_EVENT_TYPE = "response.completed"


class WebhookPayload(_Answer):
    """The body POSTed to a job's ``webhook_url`` (Standard Webhooks: ``type``, ``timestamp``, ``data``)."""

    type: Literal["response.completed"] = WEBHOOK_EVENT_TYPE
    timestamp: datetime  # when the job finished
    data: Job


# ------------------------------------------------------------------ a turn as the log tells it


class TurnFold:
    """Folds one turn's logged events into its ``Job`` and ``ResponseResult``: the sync answer and a
    job's poll are this fold over the log from the turn's ``message.accepted`` (pure: feed it JSON).

    Events of other responses (feedback on older turns, say) are skipped. ``first_seq`` is the
    ``message.accepted`` logged right before ``response.started`` (one store script logs both), or
    ``response.started`` itself for a turn that no user message opened.
    """

    def __init__(self, response_id: str) -> None:
        self.response_id = response_id
        self.status = JobStatus.QUEUED
        self.first_seq: int | None = None
        self.last_seq: int | None = None
        self.trace_id = ""
        self._accepted_seq: int | None = None
        self._text: list[str] = []
        self._completed: m.ResponseCompleted | None = None

    def feed(self, data: str) -> bool:
        """Take one logged event's JSON (with its seq); True once the turn's terminal event is in."""
        if self.status.terminal:
            return True
        event = json.loads(data)
        kind, seq = event.get("type"), int(event["seq"])
        if kind == "message.accepted":
            self._accepted_seq = seq
            return False
        if event.get("response_id") != self.response_id or not str(kind).startswith("response."):
            return False  # another turn's event, or not the response's own (feedback.recorded on it)
        if kind == "response.started":
            self.first_seq = self._accepted_seq if self._accepted_seq == seq - 1 else seq
            self.trace_id = str(event.get("trace_id", ""))
            self.status = self.status.to(JobStatus.RUNNING)
        elif kind == "response.delta":
            self._text.append(event["text"])
        elif kind == "response.completed":
            event.pop("seq", None)
            self._completed = m.ResponseCompleted.model_validate(event)
            self.status = self.status.to(JobStatus.of_finish(self._completed.finish_reason))
        self.last_seq = seq
        return self.status.terminal

    @property
    def text(self) -> str:
        return "".join(self._text)

    def result(self) -> ResponseResult | None:
        """The finished turn, or None while it runs."""
        done = self._completed
        if done is None:
            return None
        first = self.first_seq if self.first_seq is not None else self.last_seq
        return ResponseResult(
            response_id=self.response_id,
            text=self.text,
            finish_reason=done.finish_reason,
            usage=done.usage,
            trace_id=self.trace_id,
            first_seq=first or 0,
            last_seq=self.last_seq or 0,
            output=done.output,
            error=done.error,
        )

    def job(self, session_id: str, webhook: WebhookStatus | None = None) -> Job:
        return Job(
            session_id=session_id,
            response_id=self.response_id,
            status=self.status,
            result=self.result(),
            webhook=webhook,
        )


# ------------------------------------------------------------------ errors


class ErrorDetail(_Answer):
    code: ErrorCode
    message: str
    retryable: bool
    retry_after_ms: int | None = None
    trace_id: str
    ref: dict[str, Any] | None = None


class ErrorBody(_Answer):
    """Every HTTP error: the WebSocket ``error`` event's fields plus the trace id."""

    error: ErrorDetail


#: Each wire code's one HTTP status. A foreign session is ``session_not_found`` like an unknown
#: one (404 for both: a caller cannot learn that someone else's session exists).
HTTP_STATUS: dict[ErrorCode, HTTPStatus] = {
    ErrorCode.INVALID_MESSAGE: HTTPStatus.BAD_REQUEST,
    ErrorCode.UNSUPPORTED_VERSION: HTTPStatus.BAD_REQUEST,
    ErrorCode.UNAUTHORIZED: HTTPStatus.UNAUTHORIZED,
    ErrorCode.FORBIDDEN: HTTPStatus.FORBIDDEN,
    ErrorCode.SESSION_NOT_FOUND: HTTPStatus.NOT_FOUND,
    ErrorCode.SESSION_LOST: HTTPStatus.GONE,  # the store lost the session: start a new one
    ErrorCode.BUSY: HTTPStatus.CONFLICT,
    ErrorCode.PAYLOAD_TOO_LARGE: HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    ErrorCode.POLICY_REFUSAL: HTTPStatus.UNPROCESSABLE_ENTITY,
    ErrorCode.SCHEMA_VALIDATION_FAILED: HTTPStatus.UNPROCESSABLE_ENTITY,
    ErrorCode.TOOL_TIMEOUT: HTTPStatus.GATEWAY_TIMEOUT,  # like a gateway, the tools behind it did not answer
    ErrorCode.RATE_LIMITED: HTTPStatus.TOO_MANY_REQUESTS,
    ErrorCode.INTERNAL: HTTPStatus.INTERNAL_SERVER_ERROR,
    ErrorCode.UPSTREAM_UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
    ErrorCode.OVERLOADED: HTTPStatus.SERVICE_UNAVAILABLE,
    ErrorCode.UPSTREAM_TIMEOUT: HTTPStatus.GATEWAY_TIMEOUT,
}

#: Statuses that always carry Retry-After (with ``DEFAULT_RETRY_AFTER_S`` when the error has no hint).
ALWAYS_RETRY_AFTER = frozenset({HTTPStatus.TOO_MANY_REQUESTS, HTTPStatus.SERVICE_UNAVAILABLE})


def http_status(code: ErrorCode) -> int:
    return int(HTTP_STATUS[code])


def error_body(exc: ParleyError, trace_id: str) -> ErrorBody:
    """The body of an HTTP error answer: the same fields as the WebSocket's ``error`` event."""
    return ErrorBody(
        error=ErrorDetail(
            code=exc.code,
            message=exc.message,
            retryable=exc.retryable,
            retry_after_ms=exc.retry_after_ms,
            trace_id=trace_id,
            ref=exc.ref,
        )
    )


def error_headers(exc: ParleyError, trace_id: str) -> dict[str, str]:
    """``X-Request-Id`` always; ``Retry-After`` (whole seconds, rounded up) when a retry can help."""
    headers = {REQUEST_ID_HEADER: trace_id}
    status = HTTP_STATUS[exc.code]
    if exc.retry_after_ms is not None and exc.retryable:
        headers[RETRY_AFTER_HEADER] = str(max(1, math.ceil(exc.retry_after_ms / 1000)))
    elif status in ALWAYS_RETRY_AFTER:
        headers[RETRY_AFTER_HEADER] = str(DEFAULT_RETRY_AFTER_S)
    if status == HTTPStatus.UNAUTHORIZED:
        headers["WWW-Authenticate"] = 'Bearer realm="parley"'
    return headers


# ------------------------------------------------------------------ trace ids

_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,64}")


def trace_id_of(traceparent: str | None, request_id: str | None) -> str | None:
    """The trace id a caller asks for: a W3C ``traceparent``'s trace id (not all zeros), else an
    ``X-Request-Id`` of at most 64 safe characters (it is echoed in a header and logged); None: make one."""
    if traceparent is not None:
        match = _TRACEPARENT.fullmatch(traceparent.strip().lower())
        if match is not None and match.group(1) != "0" * 32:
            return match.group(1)
    if request_id is not None and _REQUEST_ID.fullmatch(request_id.strip()):
        return request_id.strip()
    return None


# ------------------------------------------------------------------ which pattern answers a POST

Mode = Literal["sse", "sync", "async"]


def _media_types(accept: str) -> dict[str, float]:
    """``Accept`` as media type -> q (a malformed q counts as 1: be liberal in what we accept)."""
    out: dict[str, float] = {}
    for item in accept.split(","):
        media, *params = (p.strip() for p in item.split(";"))
        if not media:
            continue
        q = 1.0
        for p in params:
            name, _, value = p.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 1.0
        out[media.lower()] = max(q, out.get(media.lower(), 0.0))
    return out


def prefers_async(prefer: str | None) -> bool:
    """Whether a ``Prefer`` header (RFC 7240, possibly several preferences) says ``respond-async``."""
    if not prefer:
        return False
    return any(p.split(";")[0].split("=")[0].strip().lower() == "respond-async" for p in prefer.split(","))


def choose_mode(accept: str | None, prefer: str | None) -> Mode:
    """How ``POST .../messages`` answers: ``Prefer: respond-async`` wins, then an ``Accept`` that
    ranks ``text/event-stream`` above JSON streams; anything else waits for the JSON result."""
    if prefers_async(prefer):
        return "async"
    types = _media_types(accept or "")
    sse = types.get(EVENT_STREAM, 0.0)
    json_q = max(types.get(JSON, 0.0), types.get("application/*", 0.0), types.get("*/*", 0.0))
    return "sse" if sse > 0 and sse >= json_q else "sync"


def job_location(session_id: str, response_id: str) -> str:
    """The ``Location`` of a job: where it is polled."""
    return f"/v1/sessions/{session_id}/responses/{response_id}"


# ------------------------------------------------------------------ SSE framing

_TYPE_AFTER_SEQ = re.compile(r'\{"seq":\d+,"type":"([a-z_.]+)"')
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def sse_frame(data: str, *, event: str | None = None, id: int | None = None) -> bytes:
    """One SSE event. ``data`` is the WebSocket frame's JSON (one line; a line break, which JSON
    never holds unescaped, would still be framed as several ``data:`` lines, as the spec says)."""
    parts = []
    if id is not None:
        parts.append(f"id: {id}\n")
    if event is not None:
        parts.append(f"event: {event}\n")
    parts.extend(f"data: {line}\n" for line in _LINE_BREAK.split(data))
    parts.append("\n")
    return "".join(parts).encode()


def sse_logged(data: str) -> bytes:
    """A logged event (``{"seq":N,"type":...}``, as stored) as SSE: ``id`` = seq, ``event`` = type."""
    match = _TYPE_AFTER_SEQ.match(data)
    if match is None:
        raise ValueError("not a logged event: it must start with its seq and type")
    return sse_frame(data, event=match.group(1), id=seq_of(data))


def sse_event(event: m._Server, *, id: int | None = None) -> bytes:
    """An ephemeral event (snapshot, duplicate, error) as SSE. Only a snapshot moves the cursor:
    pass ``id=snapshot.last_seq`` so a reconnect resumes after it; others keep the last id."""
    name = str(type(event).model_fields["type"].default)
    return sse_frame(encode(event), event=name, id=id)


def sse_comment(text: str = "heartbeat") -> bytes:
    """A comment line: keeps proxies from timing the stream out; EventSource ignores it."""
    return f": {_LINE_BREAK.sub(' ', text)}\n\n".encode()


def sse_retry(ms: int) -> bytes:
    """Tells EventSource how long to wait before it reconnects."""
    return f"retry: {int(ms)}\n\n".encode()


_DIGITS = re.compile(r"[0-9]{1,16}")


def _parse_cursor(value: str, where: str) -> int:
    text = value.strip()
    if not _DIGITS.fullmatch(text):
        raise InvalidMessage(f"{where} must be a seq: a whole number from 0 to {m.MAX_SEQ}")
    seq = int(text)
    if seq > m.MAX_SEQ:
        raise InvalidMessage(f"{where} must be a seq: a whole number from 0 to {m.MAX_SEQ}")
    return seq


def parse_cursor(last_event_id: str | None, after: str | None) -> int | None:
    """The seq an SSE tail resumes after: ``Last-Event-ID``, else ``?after=``, else None (from now).

    The header wins: EventSource sends it on every reconnect while the URL keeps the first
    connection's ``?after=``. An empty header is no header (the spec's "no last event id").
    Anything but a whole number in range is ``InvalidMessage`` naming where it came from.
    """
    if last_event_id is not None and last_event_id.strip():
        return _parse_cursor(last_event_id, "Last-Event-ID")
    if after is not None:
        return _parse_cursor(after, "after")
    return None


# ------------------------------------------------------------------ OpenAPI 3.1

REQUEST_MODELS: list[type[BaseModel]] = [
    SessionCreate,
    MessageRequest,
    FeedbackRequest,
    ToolResultRequest,
    ToolApproveRequest,
]
RESPONSE_MODELS: list[type[BaseModel]] = [
    SessionCreated,
    ResponseResult,
    Job,
    CancelResult,
    FeedbackResult,
    ToolResultReceipt,
    ToolApprovalReceipt,
    WebhookPayload,
    ErrorBody,
]

#: The SSE event types a stream carries (named in the document; each ``data`` is the WebSocket's JSON).
#: A tail (``/events``) opens with ``session.ready`` (``recovered``, ``last_seq``), as the WebSocket does.
SSE_EVENT_TYPES = sorted(m.LOGGED_TYPES | {"session.ready", "session.snapshot", "message.duplicate", "error"})


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(model: type[BaseModel]) -> dict[str, Any]:
    return {JSON: {"schema": _ref(model)}}


_SSE_CONTENT = {
    EVENT_STREAM: {
        "schema": {
            "type": "string",
            "description": (
                "Server-sent events: `id:` = the event's seq, `event:` = its type, `data:` = the same JSON "
                "as the WebSocket frame; heartbeats are comment lines (`: heartbeat`)."
            ),
        },
        "x-parley-events": SSE_EVENT_TYPES,
    }
}


def _header(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "schema": schema or {"type": "string"}}


_ANSWER_HEADERS = {
    REQUEST_ID_HEADER: _header(REQUEST_ID_HEADER, "The trace id of this answer (also in logs and errors)."),
}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "headers": _ANSWER_HEADERS, "content": _json(ErrorBody)}


def _retryable_error(description: str) -> dict[str, Any]:
    headers = {
        **_ANSWER_HEADERS,
        RETRY_AFTER_HEADER: _header(
            RETRY_AFTER_HEADER, "Seconds to wait before retrying.", {"type": "integer"}
        ),
    }
    return {"description": description, "headers": headers, "content": _json(ErrorBody)}


def _status_description(status: HTTPStatus) -> str:
    codes = ", ".join(f"`{c.value}`" for c, s in HTTP_STATUS.items() if s == status)
    return f"{status.phrase}: error code {codes}."


def _errors(*statuses: HTTPStatus) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status in statuses:
        retry = status in ALWAYS_RETRY_AFTER or any(
            c.retryable for c, s in HTTP_STATUS.items() if s == status
        )
        make = _retryable_error if retry else _error
        out[str(int(status))] = make(_status_description(status))
    return out


_COMMON_ERRORS = (
    HTTPStatus.UNAUTHORIZED,
    HTTPStatus.FORBIDDEN,
    HTTPStatus.TOO_MANY_REQUESTS,
    HTTPStatus.INTERNAL_SERVER_ERROR,
    HTTPStatus.SERVICE_UNAVAILABLE,
)
_SESSION_ERRORS = (HTTPStatus.BAD_REQUEST, HTTPStatus.NOT_FOUND, HTTPStatus.GONE, *_COMMON_ERRORS)


def _param(name: str, where: str, description: str, schema: dict[str, Any], required: bool = False) -> Any:
    return {"name": name, "in": where, "required": required, "description": description, "schema": schema}


_TRACE_PARAMS = [
    _param(
        TRACEPARENT_HEADER,
        "header",
        "W3C trace context; its trace id becomes this answer's.",
        {"type": "string"},
    ),
    _param(
        REQUEST_ID_HEADER, "header", "A caller's request id, echoed back as the trace id.", {"type": "string"}
    ),
]
_SESSION_ID = _param("session_id", "path", "The session.", {"type": "string"}, required=True)
_RESPONSE_ID = _param("response_id", "path", "A response (a job) of the session.", {"type": "string"}, True)
_CREATED_HEADERS = {
    **_ANSWER_HEADERS,
    "Location": _header("Location", "Where the job is polled: /v1/sessions/{id}/responses/{response_id}."),
}


def _ok(description: str, content: dict[str, Any], headers: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "headers": headers or _ANSWER_HEADERS, "content": content}


def _paths() -> dict[str, Any]:
    session_params = [_SESSION_ID, *_TRACE_PARAMS]
    return {
        "/v1/sessions": {
            "post": {
                "operationId": "createSession",
                "summary": "Open a session",
                "parameters": _TRACE_PARAMS,
                "requestBody": {"required": False, "content": _json(SessionCreate)},
                "responses": {
                    "201": _ok("The session; keep its resume_token.", _json(SessionCreated)),
                    **_errors(HTTPStatus.BAD_REQUEST, *_COMMON_ERRORS),
                },
            }
        },
        "/v1/sessions/{session_id}/messages": {
            "post": {
                "operationId": "sendMessage",
                "summary": "Send a turn; answered as SSE, a synchronous result, or a job",
                "description": (
                    "`Accept: text/event-stream` streams the turn's events until its terminal event. "
                    "`Accept: application/json` waits and answers the result; past PARLEY_SYNC_TIMEOUT_MS "
                    "it answers 202 with the job's Location instead. `Prefer: respond-async` answers 202 "
                    "with the job's Location at once. The same client_msg_id again never starts a second "
                    "turn: it answers the first turn's stream, result or job."
                ),
                "parameters": [
                    *session_params,
                    _param(
                        PREFER_HEADER,
                        "header",
                        "`respond-async` asks for a job (RFC 7240).",
                        {"type": "string"},
                    ),
                ],
                "requestBody": {"required": True, "content": _json(MessageRequest)},
                "responses": {
                    "200": _ok(
                        "The finished turn (JSON), or its events (SSE).",
                        {**_json(ResponseResult), **_SSE_CONTENT},
                    ),
                    "202": _ok("A job: poll its Location.", _json(Job), _CREATED_HEADERS),
                    **_errors(
                        *_SESSION_ERRORS,
                        HTTPStatus.CONFLICT,
                        HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                        HTTPStatus.UNPROCESSABLE_ENTITY,
                        HTTPStatus.GATEWAY_TIMEOUT,
                    ),
                },
            }
        },
        "/v1/sessions/{session_id}/events": {
            "get": {
                "operationId": "tailEvents",
                "summary": "The session's log as SSE: replay after the cursor, then live",
                "description": (
                    "Resumes after `Last-Event-ID` (or `?after=`; the header wins). A cursor past the log's "
                    "retention gets a `session.snapshot` first (`recovered: false`), as on the WebSocket."
                ),
                "parameters": [
                    *session_params,
                    _param(
                        LAST_EVENT_ID_HEADER, "header", "The last seq the caller has.", {"type": "string"}
                    ),
                    _param(
                        "after",
                        "query",
                        "The last seq the caller has (first connection).",
                        {"type": "integer", "minimum": 0, "maximum": m.MAX_SEQ},
                    ),
                ],
                "responses": {"200": _ok("The event stream.", _SSE_CONTENT), **_errors(*_SESSION_ERRORS)},
            }
        },
        "/v1/sessions/{session_id}/responses/{response_id}": {
            "get": {
                "operationId": "getJob",
                "summary": "Poll a job (any response of the session)",
                "parameters": [_SESSION_ID, _RESPONSE_ID, *_TRACE_PARAMS],
                "responses": {"200": _ok("The job.", _json(Job)), **_errors(*_SESSION_ERRORS)},
            }
        },
        "/v1/sessions/{session_id}/responses/{response_id}/cancel": {
            "post": {
                "operationId": "cancelResponse",
                "summary": "Stop a running response (idempotent)",
                "parameters": [_SESSION_ID, _RESPONSE_ID, *_TRACE_PARAMS],
                "responses": {
                    "200": _ok("What the cancel did.", _json(CancelResult)),
                    **_errors(*_SESSION_ERRORS),
                },
            }
        },
        "/v1/sessions/{session_id}/feedback": {
            "post": {
                "operationId": "sendFeedback",
                "summary": "Rate a response (the last rating wins)",
                "parameters": session_params,
                "requestBody": {"required": True, "content": _json(FeedbackRequest)},
                "responses": {"200": _ok("Recorded.", _json(FeedbackResult)), **_errors(*_SESSION_ERRORS)},
            }
        },
        "/v1/sessions/{session_id}/tool-results": {
            "post": {
                "operationId": "sendToolResult",
                "summary": "Answer a client tool call (logged once per call_id)",
                "description": (
                    "The same as the WebSocket's `tool.result`. The last result a response waits for starts "
                    "its continuation, seen on the turn's stream or `/events`. The same call_id again "
                    "changes nothing: it answers `outcome: duplicate` with the original `accepted_seq`. "
                    "A call the session does not have, or no longer waits for, is 400 `invalid_message`."
                ),
                "parameters": session_params,
                "requestBody": {"required": True, "content": _json(ToolResultRequest)},
                "responses": {
                    "200": _ok("Accepted, or already accepted.", _json(ToolResultReceipt)),
                    **_errors(*_SESSION_ERRORS, HTTPStatus.REQUEST_ENTITY_TOO_LARGE),
                },
            }
        },
        "/v1/sessions/{session_id}/tool-approvals": {
            "post": {
                "operationId": "approveToolCall",
                "summary": "Approve or deny a server tool call that asked (`tool.approval_requested`)",
                "description": (
                    "The same as the WebSocket's `tool.approve`: approved runs the call, denied logs it as "
                    "its error result. A call already decided, or not waiting for approval, is 400 "
                    "`invalid_message`."
                ),
                "parameters": session_params,
                "requestBody": {"required": True, "content": _json(ToolApproveRequest)},
                "responses": {
                    "200": _ok("Decided.", _json(ToolApprovalReceipt)),
                    **_errors(*_SESSION_ERRORS),
                },
            }
        },
        "/v1/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "security": [],
                "responses": {
                    "200": {"description": "OpenAPI 3.1", "content": {JSON: {"schema": {"type": "object"}}}}
                },
            }
        },
    }


def _webhooks() -> dict[str, Any]:
    """OpenAPI 3.1 ``webhooks``: what Parley POSTs to a job's ``webhook_url``."""
    sig = {
        "webhook-id": "The delivery's id: the same on every retry (deduplicate on it).",
        "webhook-timestamp": "Unix seconds of this attempt.",
        "webhook-signature": 'Space-separated "v1,<base64 HMAC-SHA256 of id.timestamp.body>".',
    }
    return {
        "responseCompleted": {
            "post": {
                "summary": "A job finished (Standard Webhooks; retried until a 2xx)",
                "parameters": [
                    _param(k, "header", v, {"type": "string"}, required=True) for k, v in sig.items()
                ],
                "requestBody": {"required": True, "content": _json(WebhookPayload)},
                "responses": {"2XX": {"description": "Delivered: no more attempts."}},
            }
        }
    }


def openapi_document() -> dict[str, Any]:
    """A complete OpenAPI 3.1 document for the HTTP API, from the models above (never by hand)."""
    pairs = [(model, "validation") for model in REQUEST_MODELS] + [
        (model, "serialization") for model in RESPONSE_MODELS
    ]
    _, defs = models_json_schema(pairs, ref_template="#/components/schemas/{model}")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Parley HTTP API",
            "version": m.PROTOCOL_VERSION,
            "description": (
                "The HTTP patterns over Parley's session log: SSE with Last-Event-ID, synchronous "
                "request/response, async jobs with signed webhooks. Same codes, limits and tenants as "
                'the WebSocket (/v1/asyncapi.json). Errors are `{"error": {code, message, retryable, '
                "retry_after_ms?, trace_id}}`."
            ),
            "x-error-statuses": {code.value: int(status) for code, status in HTTP_STATUS.items()},
        },
        "servers": [{"url": "http://127.0.0.1:8000"}],
        "security": [{"bearer": []}, {"resumeToken": []}],
        "paths": _paths(),
        "webhooks": _webhooks(),
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "With auth on: `Authorization: Bearer <JWT>` on every call.",
                },
                "resumeToken": {
                    "type": "apiKey",
                    "in": "header",
                    "name": RESUME_TOKEN_HEADER,
                    "description": "Anonymous callers: the session's resume_token (never in the URL).",
                },
            },
        },
    }
