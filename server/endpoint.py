"""The ``/v1/ws`` endpoint: speaks the protocol over one WebSocket and nothing else.

A connection is a reader of its session's log plus a handler of client frames.
All frames leave through ``_send`` under one lock, so log events, heartbeats and
errors never interleave mid-frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

from starlette.responses import JSONResponse, PlainTextResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from protocol import PROTOCOL_VERSION, encode, error_event, parse_client
from protocol.errors import (
    CloseCode,
    ErrorCode,
    InvalidMessage,
    ParleyError,
    UnsupportedVersion,
)
from protocol.messages import (
    Feedback,
    Heartbeat,
    Hello,
    MessageSend,
    Ping,
    Pong,
    ResponseCancel,
    SessionReady,
    SessionSnapshot,
    Turn,
)
from sessions import LogGap, SlowConsumer, tail
from sessions.fanout import Subscriber

from .service import OpenedSession, Principal, SessionService
from .settings import Settings

log = logging.getLogger("parley.ws")


def origin_allowed(ws: WebSocket, settings: Settings) -> bool:
    """No Origin (non-browser client), the server's own origin, or one listed in settings."""
    origin = ws.headers.get("origin")
    if origin is None:
        return True
    origin = origin.rstrip("/")
    if origin in settings.allowed_origin_list:
        return True
    parts = urlsplit(origin)
    host = ws.headers.get("host", "")
    return parts.scheme in ("http", "https") and bool(parts.netloc) and parts.netloc == host


def trace_id_from(metadata: dict[str, Any], headers: Any) -> str:
    """hello.metadata.trace_id, else a W3C traceparent (header or metadata), else a new one."""
    tid = metadata.get("trace_id")
    if isinstance(tid, str) and 0 < len(tid) <= 64:
        return tid
    tp = metadata.get("traceparent") or headers.get("traceparent")
    if isinstance(tp, str):
        parts = tp.split("-")
        if len(parts) == 4 and len(parts[1]) == 32:
            return parts[1]
    return uuid.uuid4().hex


class Connection:
    def __init__(self, ws: WebSocket, service: SessionService, settings: Settings, registry: set[Connection]):
        self.ws = ws
        self.service = service
        self.store = service.store
        self.settings = settings
        self.registry = registry
        self.session_id: str | None = None
        self.trace_id = ""
        self.last_seq = 0
        self._lock = asyncio.Lock()
        self._last_sent = time.monotonic()
        self._writer: asyncio.Task[None] | None = None
        self._sub: Subscriber | None = None
        self.closed = False

    # --------------------------------------------------------------- sending

    async def _send(self, text: str) -> None:
        async with self._lock:
            await self.ws.send_text(text)
            self._last_sent = time.monotonic()

    async def send_error(self, exc: ParleyError) -> None:
        with contextlib.suppress(Exception):
            await self._send(encode(error_event(exc)))

    async def close(self, code: int, reason: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(code, reason), 2.0)

    # --------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        self.registry.add(self)
        try:
            hello = await self._await_hello()
            if hello is None:
                return
            await self._open(hello)
            if self.closed:
                return
            await self._receive_loop()
        except WebSocketDisconnect:
            pass
        finally:
            self.registry.discard(self)
            if self._writer is not None:
                self._writer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._writer
            if self._sub is not None:
                self.store.unsubscribe(self._sub)

    async def _receive(self) -> str | None:
        """The next text frame; None when the client left. A binary frame is answered as invalid."""
        while True:
            msg = await self.ws.receive()
            if msg["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(msg.get("code", 1000))
            if msg.get("text") is not None:
                return msg["text"]
            if msg.get("bytes") is not None:
                return None

    async def _await_hello(self) -> Hello | None:
        try:
            text = await asyncio.wait_for(self._receive(), self.settings.hello_timeout_ms / 1000)
        except TimeoutError:
            await self.close(CloseCode.HELLO_TIMEOUT, "no hello in time")
            return None
        try:
            if text is None:
                raise InvalidMessage("frames must be text (JSON)")
            msg = parse_client(text)
            if not isinstance(msg, Hello):
                raise InvalidMessage("the first message must be hello", ref={"type": msg.type})
            if msg.protocol != PROTOCOL_VERSION:
                raise UnsupportedVersion(ref={"type": "hello"})
        except ParleyError as exc:
            await self.send_error(exc)
            code = (
                CloseCode.UNSUPPORTED_VERSION
                if isinstance(exc, UnsupportedVersion)
                else CloseCode.BAD_HANDSHAKE
            )
            await self.close(code, exc.code)
            return None
        return msg

    def _principal(self, hello: Hello) -> Principal:
        if self.settings.auth_jwt_secret or self.settings.auth_jwt_public_key:
            from .auth import principal_from_token

            return principal_from_token(hello.token, self.settings)
        tenant = hello.metadata.get("tenant_id")
        user = hello.metadata.get("user_id")
        return Principal(
            tenant if isinstance(tenant, str) and tenant else "default",
            user if isinstance(user, str) and user else "anonymous",
        )

    async def _open(self, hello: Hello) -> None:
        self.trace_id = trace_id_from(hello.metadata, self.ws.headers)
        try:
            who = self._principal(hello)
            if hello.session_id:
                opened = await self.service.resume(who, hello.session_id, hello.resume_token)
            else:
                opened = await self.service.open(who)
            self.session_id = opened.session_id
            self._sub = await self.store.subscribe(opened.session_id, self.settings.send_buffer_events)
            after = (hello.last_seq or 0) if opened.resumed else 0
            rec = await self.store.get_session(opened.session_id)
            newest = rec.last_seq if rec else 0
            if after > newest:
                raise InvalidMessage(
                    f"last_seq {after} is ahead of the session ({newest})", ref={"type": "hello"}
                )
            recovered = await self._replayable(opened.session_id, after, newest)
        except ParleyError as exc:
            await self.send_error(exc)
            code = {
                ErrorCode.UNAUTHORIZED: CloseCode.UNAUTHORIZED,
                ErrorCode.SESSION_NOT_FOUND: CloseCode.SESSION_NOT_FOUND,
            }.get(exc.code, CloseCode.BAD_HANDSHAKE if exc.code == ErrorCode.INVALID_MESSAGE else None)
            if code is None:  # store outage and the like: tell, then let the client retry
                code = CloseCode.GOING_AWAY
            await self.close(code, exc.code)
            return
        await self._send(
            encode(
                SessionReady(
                    session_id=opened.session_id,
                    resume_token=opened.resume_token,
                    heartbeat_interval_ms=self.settings.heartbeat_interval_ms,
                    resumed=opened.resumed,
                    recovered=recovered,
                    last_seq=newest,
                )
            )
        )
        if not recovered:
            after = await self._send_snapshot(opened)
        self.last_seq = after
        self._writer = asyncio.create_task(self._forward(after), name=f"ws-writer-{opened.session_id}")

    async def _replayable(self, session_id: str, after: int, newest: int) -> bool:
        """Whether the log still holds every event after ``after`` (else a snapshot is due)."""
        if after >= newest:
            return True
        first = await self.store.read(session_id, after, 1)
        return bool(first) and first[0].seq == after + 1

    async def _send_snapshot(self, opened: OpenedSession) -> int:
        snap = await self.store.snapshot(opened.session_id)
        event = SessionSnapshot(
            last_seq=snap.last_seq,
            turns=[Turn(**t) for t in snap.turns],
            in_flight=Turn(**snap.in_flight) if snap.in_flight else None,
        )
        await self._send(encode(event))
        return snap.last_seq

    async def _forward(self, after: int) -> None:
        """Tail the log to the socket; heartbeat when idle; close slow consumers."""
        assert self._sub is not None and self.session_id is not None
        interval = self.settings.heartbeat_interval_ms / 1000
        try:
            async for batch in tail(self.store, self._sub, after, idle_timeout=interval):
                if batch:
                    async with self._lock:
                        for entry in batch:
                            await self.ws.send_text(entry.data)
                        self._last_sent = time.monotonic()
                    self.last_seq = batch[-1].seq
                elif time.monotonic() - self._last_sent >= interval * 0.9:
                    hb = Heartbeat(ts=int(time.time() * 1000), last_seq=self.last_seq)
                    await self._send(encode(hb))
        except (SlowConsumer, LogGap):
            await self.close(CloseCode.SLOW_CONSUMER, "slow consumer; resume to catch up")
        except ParleyError as exc:  # store unreachable mid-tail: tell the client, let it resume
            await self.send_error(exc)
            await self.close(CloseCode.GOING_AWAY, exc.code)
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass

    # --------------------------------------------------------------- requests

    async def _receive_loop(self) -> None:
        while not self.closed:
            text = await self._receive()
            try:
                if text is None:
                    raise InvalidMessage("frames must be text (JSON)")
                await self._handle(parse_client(text))
            except ParleyError as exc:
                await self.send_error(exc)

    async def _handle(self, msg: Any) -> None:
        assert self.session_id is not None
        if isinstance(msg, MessageSend):
            fmt = None
            if msg.response_format is not None and msg.response_format.type == "json_schema":
                fmt = {
                    "type": "json_schema",
                    "name": msg.response_format.name,
                    "schema": msg.response_format.json_schema,
                }
            trace = msg.metadata.get("trace_id")
            dup = await self.service.send(
                self.session_id,
                msg.content,
                msg.client_msg_id,
                profile=msg.profile,
                response_format=fmt,
                trace_id=trace if isinstance(trace, str) and 0 < len(trace) <= 64 else self.trace_id,
            )
            if dup is not None:
                await self._send(encode(dup))
        elif isinstance(msg, ResponseCancel):
            await self.service.cancel(self.session_id, msg.response_id)
        elif isinstance(msg, Feedback):
            await self.service.feedback(self.session_id, msg.response_id, msg.rating, msg.comment, msg.tags)
        elif isinstance(msg, Ping):
            await self._send(encode(Pong(nonce=msg.nonce)))
        elif isinstance(msg, Hello):
            raise InvalidMessage("hello was already received on this connection", ref={"type": "hello"})


async def websocket_endpoint(ws: WebSocket) -> None:
    state = ws.app.state.parley
    settings: Settings = state.settings
    offered = ws.scope.get("subprotocols") or []
    if offered and PROTOCOL_VERSION not in offered:
        body = error_event(UnsupportedVersion()).model_dump(exclude_none=True)
        await ws.send_denial_response(JSONResponse(body, status_code=400))
        return
    if not origin_allowed(ws, settings):
        await ws.send_denial_response(PlainTextResponse("origin not allowed", status_code=403))
        return
    if state.draining:
        await ws.send_denial_response(PlainTextResponse("server restarting", status_code=503))
        return
    await ws.accept(subprotocol=PROTOCOL_VERSION if offered else None)
    conn = Connection(ws, state.service, settings, state.connections)
    await conn.run()
