"""``/v1/ws``: the protocol over one WebSocket, a thin adapter over the session core.

The connection is the ``Sink`` its ``SessionReader`` writes to (text frames, straight
into uvicorn's transport when ``server/fastpath/`` allows, else through the ASGI
``send``), and its receive loop hands every frame after ``hello`` to a ``Dispatcher``.
What is WebSocket-specific stays here: the handshake answers (HTTP 401/400/403/503
before accepting), the hello deadline, close codes for refusals, the close handshake
with a bound (a peer that does not take the close frame is abandoned).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from starlette.responses import JSONResponse, PlainTextResponse
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from parley.protocol import PROTOCOL_VERSION, error_event, parse_client
from parley.protocol.errors import (
    CloseCode,
    ErrorCode,
    InvalidMessage,
    ParleyError,
    Unauthorized,
    UnsupportedVersion,
)
from parley.protocol.messages import Hello
from parley.protocol.tools import ToolSpec

from .. import handshake
from ..core import Dispatcher, SinkClosed, SlowPeer, WriteDeadline
from ..core.admission import Ticket
from ..fastpath.uvicorn_ws import INLINE, Direct, direct_transport, send_now, writable, write_some
from ..guard import header
from ..service import Principal

if TYPE_CHECKING:
    from ..runtime import Runtime

log = logging.getLogger("parley.ws")

#: How long the close handshake may take before the connection is abandoned to the server.
CLOSE_TIMEOUT_S = 2.0

#: What a refused hello closes with (anything else: 1001, and the client retries).
REFUSAL_CLOSE = {
    ErrorCode.UNAUTHORIZED: CloseCode.UNAUTHORIZED,
    ErrorCode.SESSION_NOT_FOUND: CloseCode.SESSION_NOT_FOUND,
    ErrorCode.RATE_LIMITED: CloseCode.POLICY_VIOLATION,
    ErrorCode.INVALID_MESSAGE: CloseCode.BAD_HANDSHAKE,
}


class WebSocketConnection:
    """One client's WebSocket: a ``Sink`` for its reader and the ``Caller`` its handlers answer."""

    # slotted: 10,000 idle connections are 10,000 of these (docs/benchmarks.md, B5)
    __slots__ = (
        "_abandoned", "_backlog", "_closing", "_main", "_watcher", "closed", "deadline", "direct",
        "dispatcher", "reader", "runtime", "ticket", "ws",
    )  # fmt: skip

    def __init__(self, ws: WebSocket, runtime: Runtime, *, direct: Direct | None = None) -> None:
        settings = runtime.settings
        self.ws = ws
        self.runtime = runtime
        self.direct = direct  # uvicorn's transport, when frames may be written to it directly
        self.deadline = WriteDeadline(settings.send_timeout_ms / 1000)
        self.ticket: Ticket = runtime.admission.ticket()
        self.reader = runtime.reader(self)
        self.dispatcher = Dispatcher(
            runtime.handler_table,
            self,
            frames_per_minute=settings.frames_per_minute,
            abuse_strikes=settings.abuse_strikes,
            metrics=runtime.metrics,
        )
        # taken frames not written yet: a pushed-back write (or None) and the frames after it
        self._backlog: tuple[Any, Sequence[str]] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._main: asyncio.Task[Any] | None = None
        self._abandoned = False
        self._closing: asyncio.Future[None] | None = None
        self.closed = False

    # --------------------------------------------------------------- what handlers see (Caller)

    @property
    def session_id(self) -> str | None:
        return self.ticket.session_id

    @property
    def trace_id(self) -> str:
        return self.ticket.trace_id

    @property
    def who(self) -> Principal | None:
        return self.ticket.who

    @property
    def tools(self) -> tuple[ToolSpec, ...]:
        return self.ticket.tools

    @property
    def metadata(self) -> dict[str, Any]:
        return self.ticket.metadata

    @property
    def slow(self) -> bool:
        """Declared a slow consumer (closing, or closed, with 4009)."""
        return self.reader.slow

    async def reply(self, text: str) -> None:
        await self.reader.send(text)

    async def send_error(self, exc: ParleyError) -> None:
        await self.reader.send_error(exc)

    # --------------------------------------------------------------- the Sink

    @property
    def backlog(self) -> bool:
        return self._backlog is not None

    def try_write(self, frames: Sequence[str]) -> bool:
        if self._backlog is not None:
            return False
        direct, i = self.direct, 0
        try:
            while i < len(frames) and writable(direct):  # many frames in one transport write
                i = write_some(direct, frames, i)
            if i < len(frames) and not INLINE.on:  # the ordinary path: the reader's task writes them
                if i == 0:
                    return False
                self._backlog = (None, frames[i:])
                return True
            while i < len(frames):  # uvicorn's send, run inline: it suspends only on push-back
                pending = send_now(self.ws, None, frames[i])
                i += 1
                if pending is not None:  # the reader's catch-up finishes it (and the rest) under the deadline
                    self._backlog = (pending, frames[i:])
                    return True
        except WebSocketDisconnect as exc:
            raise SinkClosed() from exc
        return True

    async def write(self, frames: Sequence[str]) -> None:
        try:
            if self._backlog is not None:
                (pending, rest), self._backlog = self._backlog, None
                if pending is not None:
                    await self.deadline.run(pending)
                if rest:
                    frames = [*rest, *frames]
            i = 0
            while i < len(frames):
                if writable(self.direct):  # a replay chunk: one or a few transport writes
                    i = write_some(self.direct, frames, i)
                else:
                    await self.deadline.run(self.ws.send_text(frames[i]))
                    i += 1
        except WebSocketDisconnect as exc:
            raise SinkClosed() from exc

    def discard(self) -> None:
        if self._backlog is not None:
            if self._backlog[0] is not None:
                self._backlog[0].close()
            self._backlog = None

    async def close(self, code: int, reason: str = "", *, wait: float | None = None) -> None:
        """Close with ``code``; if the close frame cannot leave in ``wait`` s, abandon the socket.

        Abandoning means the connection's main task stops (it may be blocked reading a peer
        that sends nothing) and the socket is left to the server to tear down.
        """
        if self._closing is not None:  # another task is closing: wait for it to finish
            with contextlib.suppress(Exception):
                await asyncio.shield(self._closing)
            return
        self._closing = asyncio.get_running_loop().create_future()
        self.closed = True
        self.reader.halt()
        self.runtime.metrics.closes.labels(str(int(code))).inc()
        log.info("closing connection", extra={"fields": {"close_code": int(code), "reason": reason}})
        sent = False
        try:
            await asyncio.wait_for(self.ws.close(code, reason), CLOSE_TIMEOUT_S if wait is None else wait)
            sent = True
        except Exception:
            pass
        finally:
            self._closing.set_result(None)
        main = self._main
        if not sent and main is not None and main is not asyncio.current_task() and not main.done():
            self._abandoned = True
            main.cancel()

    def tick(self, now: float, loop_now: float) -> None:
        """The runtime's ticker: stalled writes, heartbeats (the reader's business)."""
        if not self.closed:
            self.reader.tick(now, loop_now)
        else:
            self.deadline.interrupt(loop_now)

    # --------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        self._main = asyncio.current_task()
        runtime = self.runtime
        runtime.connections.add(self)
        runtime.metrics.connections_opened.inc()
        try:
            if await self._start():
                if self.ticket.identity is not None and runtime.auth is not None:
                    self._watcher = asyncio.create_task(
                        runtime.admission.watch_expiry(self.ticket, lambda: not self.closed, self._expired),
                        name="ws-auth",
                    )
                dispatch = self.dispatcher.dispatch
                while not self.closed:  # the receive loop, inline: one coroutine frame less per socket
                    if not await dispatch(self._text(await self.ws.receive())):
                        break
        except (WebSocketDisconnect, SinkClosed):
            pass
        except SlowPeer:
            await self.reader.close_slow()
        except asyncio.CancelledError:
            if not self._abandoned:
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
        finally:
            await self.reader.aclose()
            watcher = self._watcher
            if watcher is not None and watcher is not asyncio.current_task():
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await watcher
            await runtime.admission.release(self.ticket)
            runtime.connections.discard(self)  # last: leaving the registry means fully released
            if self.ticket.session_id is not None:
                log.info(
                    "connection ended",
                    extra={"fields": {"last_seq": self.reader.last_seq, "slow": self.reader.slow}},
                )

    async def _start(self) -> bool:
        """hello, then session.ready: True when the connection is open for requests.

        A method of its own so the parsed hello is not kept for the connection's lifetime.
        """
        hello = await self._await_hello()
        if hello is None:
            return False
        try:
            opening = await self.runtime.admission.admit(
                self.ticket, hello, self.reader, header(self.ws.scope, b"traceparent")
            )
        except ParleyError as exc:
            await self.send_error(exc)
            # a store outage and the like: tell, then let the client retry (1001)
            await self.close(REFUSAL_CLOSE.get(exc.code, CloseCode.GOING_AWAY), exc.code)
            return False
        await self.reader.send(self.runtime.admission.ready(opening))
        handshake.admitted(self.ws.scope)  # no longer a pending handshake (server/handshake.py)
        try:
            await self.reader.start(opening)
        except ParleyError as exc:  # the store failed the replay or snapshot: say so, then 1001
            await self.reader.fail(exc, CloseCode.GOING_AWAY)
            return False
        return not self.closed

    async def _expired(self) -> None:
        """The token expired: ``unauthorized``, then 4001."""
        await self.reader.fail(
            Unauthorized("token expired; reconnect with a fresh token"),
            CloseCode.UNAUTHORIZED,
            "token expired",
        )

    @staticmethod
    def _text(msg: Any) -> str | None:
        """A received ASGI message's text; None for a binary frame (answered as invalid)."""
        if msg["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(msg.get("code", 1000))
        text: str | None = msg.get("text")
        return text

    async def _await_hello(self) -> Hello | None:
        try:
            async with asyncio.timeout(
                self.runtime.settings.hello_timeout_ms / 1000
            ):  # no task, unlike wait_for
                msg = await self.ws.receive()
            text = self._text(msg)
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


async def websocket_endpoint(scope: Scope, receive: Receive, send: Send) -> None:
    """``/v1/ws`` as an ASGI app: it keeps the server's own ``send``, the way to its transport (fastpath)."""
    ws = WebSocket(scope, receive, send)
    runtime: Runtime = ws.app.state.parley
    # credentials in the URL, the Host and the Origin were checked before any route (server/guard.py)
    offered = ws.scope.get("subprotocols") or []
    if offered and PROTOCOL_VERSION not in offered:
        body = error_event(UnsupportedVersion()).model_dump(exclude_none=True)
        await ws.send_denial_response(JSONResponse(body, status_code=400))
        return
    if runtime.draining:
        await ws.send_denial_response(PlainTextResponse("server restarting", status_code=503))
        return
    await ws.accept(subprotocol=PROTOCOL_VERSION if offered else None)
    await WebSocketConnection(ws, runtime, direct=direct_transport(send)).run()
