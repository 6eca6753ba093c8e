"""The HTTP patterns under ``/v1/sessions``: SSE, synchronous calls and async jobs, thin over the core.

Each route proves who calls and which session (``SessionService.prove``: the
``Parley-Resume-Token`` header, or with auth on the ``Authorization: Bearer`` JWT), hands the
request to the same handler table as the WebSocket (``message.send``: limits, idempotency,
the turn), and answers from the session's log: as SSE through a ``SessionReader``
(``sse.py``), as the turn's result once its reader saw the end, or as a job (``server/jobs.py``).
Refusals are the WebSocket's ``ParleyError``s mapped to statuses (``protocol/http.py``); every
answer carries ``X-Request-Id``. The contract is ``docs/http.md`` and ``/v1/openapi.json``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import uuid4

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from parley.protocol import PROTOCOL_VERSION
from parley.protocol.errors import (
    InternalError,
    InvalidMessage,
    Overloaded,
    ParleyError,
    PayloadTooLarge,
    Unauthorized,
)
from parley.protocol.http import (
    LAST_EVENT_ID_HEADER,
    PREFER_HEADER,
    REQUEST_ID_HEADER,
    RESUME_TOKEN_HEADER,
    TRACEPARENT_HEADER,
    CancelResult,
    FeedbackRequest,
    FeedbackResult,
    Job,
    MessageRequest,
    SessionCreate,
    SessionCreated,
    ToolApprovalReceipt,
    ToolApproveRequest,
    ToolResultReceipt,
    ToolResultRequest,
    choose_mode,
    error_body,
    error_headers,
    http_status,
    job_location,
    openapi_document,
    parse_cursor,
    sse_event,
    sse_retry,
    trace_id_of,
)
from parley.protocol.messages import Hello, MessageDuplicate, SessionReady

from .. import logs
from ..core import refusal_error
from ..core.admission import Ticket
from ..core.reader import Opening
from ..service import Principal
from .sse import EventStream, TurnWatch

if TYPE_CHECKING:
    from ..runtime import Runtime

log = logging.getLogger("parley.http")

#: What EventSource waits before reconnecting a stream that ended or broke (the ``retry:`` field).
SSE_RETRY_MS = 1000

M = TypeVar("M", bound=BaseModel)


class HttpCall:
    """One request's caller, as the handlers see it (``core.Caller``): who, which session, its trace."""

    __slots__ = ("duplicate", "last_seq", "resume_token", "session_id", "ticket")

    def __init__(
        self, ticket: Ticket, session_id: str | None = None, last_seq: int = 0, resume_token: str = ""
    ) -> None:
        self.ticket = ticket
        self.resume_token = resume_token
        self.session_id = session_id
        self.last_seq = last_seq  # the session's newest seq when the call was proven
        self.duplicate: MessageDuplicate | None = None

    @property
    def trace_id(self) -> str:
        return self.ticket.trace_id

    @property
    def who(self) -> Principal | None:
        return self.ticket.who

    async def reply(self, text: str) -> None:
        """The handlers' one ephemeral answer to an HTTP call: ``message.duplicate``."""
        event = json.loads(text)
        if event.get("type") == "message.duplicate":
            event.pop("type")
            self.duplicate = MessageDuplicate(**event)

    async def send_error(self, exc: ParleyError) -> None:
        raise exc

    async def close(self, code: int, reason: str = "") -> None:
        return None


# ------------------------------------------------------------------ answers


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.parley
    return runtime


def answer(
    model: BaseModel, ticket: Ticket, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return JSONResponse(
        model.model_dump(mode="json", exclude_none=True),
        status_code=status,
        headers={REQUEST_ID_HEADER: ticket.trace_id, **(headers or {})},
    )


def refusal(exc: ParleyError, trace_id: str) -> Response:
    return JSONResponse(
        error_body(exc, trace_id).model_dump(mode="json", exclude_none=True),
        status_code=http_status(exc.code),
        headers=error_headers(exc, trace_id),
    )


Endpoint = Callable[[Request, Ticket], Awaitable[Response]]


def endpoint(fn: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    """A route: its trace id first, then any ``ParleyError`` as its status and body, never a traceback."""

    async def run(request: Request) -> Response:
        runtime = _runtime(request)
        ticket = runtime.admission.ticket()
        ticket.trace_id = (
            trace_id_of(request.headers.get(TRACEPARENT_HEADER), request.headers.get(REQUEST_ID_HEADER))
            or uuid4().hex
        )
        logs.bind(trace_id=ticket.trace_id)
        try:
            if runtime.draining:
                raise Overloaded("server restarting; retry on another instance", retry_after_ms=1000)
            return await fn(request, ticket)
        except ParleyError as exc:
            if isinstance(exc, Unauthorized):
                runtime.metrics.auth_failures.inc()
            runtime.metrics.errors.labels(exc.code.value).inc()
            return refusal(exc, ticket.trace_id)
        except Exception:
            log.exception("HTTP request failed", extra={"fields": {"path": request.url.path}})
            return refusal(InternalError(), ticket.trace_id)

    run.__name__ = fn.__name__
    return run


# ------------------------------------------------------------------ requests


async def body_of(request: Request, model: type[M], runtime: Runtime, *, required: bool = True) -> M | None:
    """The JSON body as ``model``: 413 past ``PARLEY_MAX_FRAME_BYTES``, 400 naming what is wrong."""
    limit = runtime.settings.max_frame_bytes
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body larger than {limit} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        if required:
            raise InvalidMessage("a JSON body is required")
        return None
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        raise InvalidMessage(f"{where}: {first.get('msg', 'invalid')}") from None


def bearer(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


def identify(
    runtime: Runtime, request: Request, ticket: Ticket, metadata: dict[str, Any] | None = None
) -> None:
    """Who calls: the verified JWT with auth on; with auth off, ``metadata`` (a new session's only)."""
    if runtime.settings.auth_enabled or metadata is not None:
        hello = Hello(type="hello", protocol=PROTOCOL_VERSION, token=bearer(request), metadata=metadata or {})
        ticket.who = runtime.admission.principal(ticket, hello)


async def session_call(request: Request, ticket: Ticket) -> HttpCall:
    """Prove the session of the path: the resume token, or (auth on) the caller's identity."""
    runtime = _runtime(request)
    session_id = request.path_params["session_id"]
    identify(runtime, request, ticket)
    token = request.headers.get(RESUME_TOKEN_HEADER) or None
    if ticket.who is None and token is None:
        raise Unauthorized(f"send the session's resume_token in the {RESUME_TOKEN_HEADER} header")
    owner, opened = await runtime.service.prove(session_id, who=ticket.who, resume_token=token)
    ticket.who = owner
    ticket.session_id = session_id
    logs.bind(session_id=session_id)
    return HttpCall(ticket, session_id, opened.last_seq, token or "")


async def hold_slot(runtime: Runtime, ticket: Ticket) -> None:
    """A stream or a waiting call is an open connection: it counts against the user's limit."""
    if runtime.limiter is None or ticket.who is None:
        return
    refused = await runtime.limiter.open_connection(ticket.who, ticket.conn_id)
    if refused is not None:
        runtime.metrics.rate_limited.labels(refused.kind, refused.scope).inc()
        raise refusal_error(refused)
    ticket.holds_slot = True


async def open_stream(
    runtime: Runtime, call: HttpCall, after: int, watch: TurnWatch | None, sse: bool
) -> tuple[EventStream, Opening]:
    """A reader on the call's session from ``after`` (subscribed and first chunk read, not started)."""
    assert call.session_id is not None
    stream = EventStream(runtime, call.ticket, watch=watch, sse=sse)
    try:
        await hold_slot(runtime, call.ticket)
        opening = await stream.reader.open(call.session_id, after, call.last_seq, resumed=True)
    except BaseException:
        await stream.finish()
        raise
    return stream, opening


class EventStreamResponse(Response):
    """The SSE answer: runs ``EventStream.respond`` (its own loop) as the ASGI response."""

    def __init__(self, stream: EventStream, opening: Opening, first: bytes = b"") -> None:
        self.stream, self.opening, self.first = stream, opening, first
        self.status_code = 200
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.stream.respond(scope, receive, send, self.opening, self.first)


# ------------------------------------------------------------------ routes


@endpoint
async def create_session(request: Request, ticket: Ticket) -> Response:
    runtime = _runtime(request)
    body = await body_of(request, SessionCreate, runtime, required=False)
    identify(runtime, request, ticket, dict(getattr(body, "metadata", None) or {}))
    assert ticket.who is not None
    if runtime.limiter is not None:
        refused = await runtime.limiter.new_session(ticket.who)
        if refused is not None:
            runtime.metrics.rate_limited.labels(refused.kind, refused.scope).inc()
            raise refusal_error(refused)
    opened = await runtime.service.open(ticket.who)
    runtime.metrics.sessions_created.inc()
    logs.bind(session_id=opened.session_id)
    created = SessionCreated(session_id=opened.session_id, resume_token=opened.resume_token)
    return answer(created, ticket, 201)


def _job_answer(job: Job, ticket: Ticket) -> Response:
    return answer(job, ticket, 202, {"Location": job_location(job.session_id, job.response_id)})


@endpoint
async def post_message(request: Request, ticket: Ticket) -> Response:
    runtime = _runtime(request)
    call = await session_call(request, ticket)
    body = await body_of(request, MessageRequest, runtime)
    assert body is not None and call.session_id is not None
    sid = call.session_id
    mode = choose_mode(request.headers.get("accept"), request.headers.get(PREFER_HEADER))
    hook = body.webhook_url or runtime.catalog.profiles.resolve(body.profile).webhook_url
    if hook is not None:
        await runtime.webhooks.check_url(
            hook
        )  # a URL no attempt could reach is the job's 400, before the turn
    await runtime.handler_table["message.send"](call, body.as_send())
    dup = call.duplicate
    rid: str | None = None
    if dup is not None:
        rid, cursor = dup.response_id, dup.accepted_seq - 1
        runtime.jobs.remember(rid, dup.accepted_seq)
    else:
        cursor = call.last_seq
    if mode == "async" or hook is not None:
        if rid is None:
            found = await runtime.jobs.locate(sid, cursor, body.client_msg_id)
            if found is None:
                raise InternalError("the turn was accepted but is not in the log")
            rid = found[0]
        if hook is not None:
            await runtime.jobs.hook(sid, rid, hook)
        if mode == "async":
            return _job_answer(await _job(runtime, sid, rid), ticket)
    if mode == "sse":
        watch = TurnWatch(body.client_msg_id, rid)
        stream, opening = await open_stream(runtime, call, cursor, watch, sse=True)
        first = sse_retry(SSE_RETRY_MS) + (sse_event(dup) if dup is not None else b"")
        return EventStreamResponse(stream, opening, first)
    # synchronous: wait for the turn's end, up to PARLEY_SYNC_TIMEOUT_MS, then answer with its job
    watch = TurnWatch(body.client_msg_id, rid, fold=True)
    stream, opening = await open_stream(runtime, call, cursor, watch, sse=False)
    try:
        await stream.begin(opening)
        async with asyncio.timeout(runtime.settings.sync_timeout_ms / 1000):
            await stream.ended.wait()
    except TimeoutError:
        pass
    finally:
        await stream.finish()
    result = watch.fold.result() if watch.fold is not None and watch.done and not watch.lost else None
    if result is not None:
        return answer(result, ticket)
    rid = rid or watch.response_id
    if rid is None:
        found = await runtime.jobs.locate(sid, cursor, body.client_msg_id)
        if found is None:
            raise InternalError("the turn was accepted but is not in the log")
        rid = found[0]
    job = await _job(runtime, sid, rid)
    if job.status.terminal and job.result is not None:
        return answer(job.result, ticket)
    return _job_answer(job, ticket)


async def _job(runtime: Runtime, session_id: str, response_id: str) -> Job:
    job = await runtime.jobs.poll(session_id, response_id)
    if job is None:
        raise InvalidMessage(
            "no such response in this session", ref={"type": "response", "response_id": response_id}
        )
    return job


@endpoint
async def tail_events(request: Request, ticket: Ticket) -> Response:
    runtime = _runtime(request)
    call = await session_call(request, ticket)
    cursor = parse_cursor(request.headers.get(LAST_EVENT_ID_HEADER), request.query_params.get("after"))
    after = call.last_seq if cursor is None else cursor
    stream, opening = await open_stream(runtime, call, after, None, sse=True)
    assert call.session_id is not None
    ready = SessionReady(
        session_id=call.session_id,
        resume_token=call.resume_token,
        heartbeat_interval_ms=runtime.settings.heartbeat_interval_ms,
        resumed=True,
        recovered=opening.recovered,
        last_seq=opening.newest,
    )
    return EventStreamResponse(stream, opening, sse_retry(SSE_RETRY_MS) + sse_event(ready))


@endpoint
async def get_job(request: Request, ticket: Ticket) -> Response:
    runtime = _runtime(request)
    call = await session_call(request, ticket)
    assert call.session_id is not None
    job = await _job(runtime, call.session_id, request.path_params["response_id"])
    return answer(job, ticket)


@endpoint
async def cancel_response(request: Request, ticket: Ticket) -> Response:
    runtime = _runtime(request)
    call = await session_call(request, ticket)
    assert call.session_id is not None
    rid = request.path_params["response_id"]
    outcome = await runtime.service.cancel(call.session_id, rid, finished_ok=True)
    return answer(CancelResult(response_id=rid, outcome=outcome), ticket)  # type: ignore[arg-type]


@endpoint
async def post_feedback(request: Request, ticket: Ticket) -> Response:
    runtime = _runtime(request)
    call = await session_call(request, ticket)
    body = await body_of(request, FeedbackRequest, runtime)
    assert body is not None and call.session_id is not None
    seq = await runtime.service.feedback(
        call.session_id, body.response_id, body.rating, body.comment, body.tags
    )
    return answer(FeedbackResult(response_id=body.response_id, rating=body.rating, seq=seq), ticket)


@endpoint
async def post_tool_result(request: Request, ticket: Ticket) -> Response:
    """A client tool's result: the WebSocket's ``tool.result``, its duplicate answered in the body."""
    runtime = _runtime(request)
    call = await session_call(request, ticket)
    body = await body_of(request, ToolResultRequest, runtime)
    assert body is not None and call.session_id is not None
    msg = body.as_message()
    dup = await runtime.service.tool_result(call.session_id, msg.call_id, msg.output, msg.is_error)
    if dup is None:
        return answer(ToolResultReceipt(call_id=msg.call_id, outcome="accepted"), ticket)
    receipt = ToolResultReceipt(
        call_id=msg.call_id, outcome="duplicate", response_id=dup.response_id, accepted_seq=dup.accepted_seq
    )
    return answer(receipt, ticket)


@endpoint
async def post_tool_approval(request: Request, ticket: Ticket) -> Response:
    """The person's decision on a server tool call: the WebSocket's ``tool.approve``."""
    runtime = _runtime(request)
    call = await session_call(request, ticket)
    body = await body_of(request, ToolApproveRequest, runtime)
    assert body is not None and call.session_id is not None
    msg = body.as_message()
    await runtime.service.tool_approve(call.session_id, msg.call_id, msg.approved)
    return answer(ToolApprovalReceipt(call_id=msg.call_id, approved=msg.approved), ticket)


async def openapi(request: Request) -> Response:
    return JSONResponse(openapi_document())


def routes() -> list[Route]:
    """The HTTP API's routes (``server/app.py`` mounts them); the OpenAPI document lists exactly these."""
    return [
        Route("/v1/openapi.json", openapi, methods=["GET"]),
        Route("/v1/sessions", create_session, methods=["POST"]),
        Route("/v1/sessions/{session_id}/messages", post_message, methods=["POST"]),
        Route("/v1/sessions/{session_id}/events", tail_events, methods=["GET"]),
        Route("/v1/sessions/{session_id}/responses/{response_id}", get_job, methods=["GET"]),
        Route("/v1/sessions/{session_id}/responses/{response_id}/cancel", cancel_response, methods=["POST"]),
        Route("/v1/sessions/{session_id}/feedback", post_feedback, methods=["POST"]),
        Route("/v1/sessions/{session_id}/tool-results", post_tool_result, methods=["POST"]),
        Route("/v1/sessions/{session_id}/tool-approvals", post_tool_approval, methods=["POST"]),
    ]


__all__ = ["EventStreamResponse", "HttpCall", "routes"]
