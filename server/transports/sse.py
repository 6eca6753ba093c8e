"""Server-sent events over HTTP: the ``Sink`` a ``SessionReader`` writes to when a client reads the log
as an SSE stream (``GET /v1/sessions/{id}/events``, ``POST .../messages`` with ``Accept:
text/event-stream``), or waits for one turn's end (the synchronous answer).

Each logged frame becomes ``id: <seq>``, ``event: <type>``, ``data: <the WebSocket's JSON>``
(``protocol/http.py``'s framing); a heartbeat becomes a comment line; a snapshot carries its
``last_seq`` as its id, so a reconnect resumes after it. Frames are turned into bytes as the
reader hands them over and kept until one loop (the ASGI response) sends them: ``try_write``
takes frames while fewer than ``HIGH_WATER`` bytes wait, else the reader's catch-up task waits
for room under the send deadline (a client that stops reading is a slow consumer, as on the
WebSocket). A ``TurnWatch`` narrows the stream to one turn: from its ``message.accepted`` to
its terminal event, after which the stream ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from starlette.types import Receive, Scope, Send

from parley.protocol.errors import CloseCode, ParleyError, Unauthorized
from parley.protocol.http import EVENT_STREAM, REQUEST_ID_HEADER, TurnFold, sse_comment, sse_frame

from ..core import SinkClosed, WriteDeadline
from ..core.admission import Ticket
from ..core.reader import Opening

if TYPE_CHECKING:
    from ..runtime import Runtime

log = logging.getLogger("parley.sse")

#: Bytes a stream may hold unsent before the reader has to wait (bounded memory per slow client).
HIGH_WATER = 256 * 1024

_LOGGED = re.compile(r'\{"seq":(\d+),"type":"([a-z_.]+)"')
_EPHEMERAL = re.compile(r'\{"type":"([a-z_.]+)"')


class TurnWatch:
    """One turn's events in a session's log: from the ``message.accepted`` of ``client_msg_id`` to the
    terminal event of the response it started (``response_id`` when known already: a duplicate)."""

    __slots__ = ("client_msg_id", "done", "fold", "lost", "response_id", "started")

    def __init__(self, client_msg_id: str, response_id: str | None = None, *, fold: bool = False) -> None:
        self.client_msg_id = client_msg_id
        self.response_id = response_id
        self.started = False
        self.done = False
        self.lost = False  # a snapshot replaced the turn's events (the log no longer held them)
        self.fold = TurnFold(response_id) if fold and response_id else None
        if fold and response_id is None:
            self.fold = TurnFold("")

    def see(self, kind: str, data: str) -> bool:
        """Whether a logged event (of type ``kind``) is one of the turn's; marks ``done`` at its end."""
        if self.done:
            return False
        if not self.started:
            if kind != "message.accepted":
                return False
            event = json.loads(data)
            if event.get("client_msg_id") != self.client_msg_id:
                return False
            self.started = True
        elif kind == "response.started" and self.response_id is None:
            self.response_id = str(json.loads(data)["response_id"])
            if self.fold is not None:
                self.fold.response_id = self.response_id
        elif kind == "response.completed" and self.response_id is not None:
            self.done = json.loads(data).get("response_id") == self.response_id
        if self.fold is not None:
            self.fold.feed(data)
        return True

    def snapshot(self, data: str) -> None:
        """The reader sent a snapshot instead of the turn's events: the watch cannot follow it."""
        if not self.started:
            self.lost = True
            self.done = True


class EventStream:
    """A ``Sink`` for one HTTP client's reader, and the runtime's ``Client`` (ticker, drain)."""

    def __init__(
        self, runtime: Runtime, ticket: Ticket, *, watch: TurnWatch | None, sse: bool = True
    ) -> None:
        settings = runtime.settings
        self.runtime = runtime
        self.ticket = ticket
        self.watch = watch
        self.sse = sse  # False: a synchronous call, which only watches its turn
        self.deadline = WriteDeadline(settings.send_timeout_ms / 1000)
        self.reader = runtime.reader(self)
        self.ended = asyncio.Event()  # nothing more will be taken: the stream ends once sent
        self.gone = False  # the client disconnected
        self._out: list[bytes] = []
        self._size = 0
        self._wake = asyncio.Event()
        self._space = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None

    # --------------------------------------------------------------- the Sink

    @property
    def backlog(self) -> bool:
        return False  # frames are taken whole or not at all

    def try_write(self, frames: Sequence[str]) -> bool:
        if self.gone:
            raise SinkClosed()
        if self.ended.is_set():
            return True  # the stream is over: nothing more goes out
        if self._size >= HIGH_WATER:
            return False
        self._take(frames)
        return True

    async def write(self, frames: Sequence[str]) -> None:
        while self._size >= HIGH_WATER and not self.gone and not self.ended.is_set():
            self._space.clear()
            await self.deadline.run(self._space.wait())
        if self.gone:
            raise SinkClosed()
        if not self.ended.is_set():
            self._take(frames)

    async def close(self, code: int, reason: str = "", *, wait: float | None = None) -> None:
        """End the stream (the reader failed, the server drains): what was taken is still sent."""
        if not self.ended.is_set():
            self.runtime.metrics.closes.labels(str(int(code))).inc()
        self.reader.halt()
        self._end()

    def discard(self) -> None:
        self._out.clear()
        self._size = 0

    def _end(self) -> None:
        self.ended.set()
        self._wake.set()

    def _take(self, frames: Sequence[str]) -> None:
        for text in frames:
            chunk = self._frame(text)
            if chunk:
                self._out.append(chunk)
                self._size += len(chunk)
            if self.watch is not None and self.watch.done:
                self._end()
                break
        self._wake.set()

    def _frame(self, text: str) -> bytes | None:
        """One frame as SSE bytes (None: not this stream's)."""
        logged = _LOGGED.match(text)
        if logged is not None:
            kind = logged.group(2)
            if self.watch is not None and not self.watch.see(kind, text):
                return None
            return sse_frame(text, event=kind, id=int(logged.group(1))) if self.sse else None
        match = _EPHEMERAL.match(text)
        kind = match.group(1) if match else "message"
        if kind == "heartbeat":
            return sse_comment() if self.sse else None
        if kind == "session.snapshot":
            if self.watch is not None:
                self.watch.snapshot(text)
            return sse_frame(text, event=kind, id=int(json.loads(text)["last_seq"])) if self.sse else None
        return sse_frame(text, event=kind) if self.sse else None

    # --------------------------------------------------------------- the runtime's Client

    def tick(self, now: float, loop_now: float) -> None:
        if not self.ended.is_set():
            self.reader.tick(now, loop_now)
        else:
            self.deadline.interrupt(loop_now)

    # --------------------------------------------------------------- life

    async def begin(self, opening: Opening) -> None:
        """Registered with the runtime, then the replay (or snapshot) and live delivery."""
        runtime = self.runtime
        runtime.connections.add(self)
        runtime.metrics.connections_opened.inc()
        if self.ticket.identity is not None and runtime.auth is not None:
            self._watcher = asyncio.create_task(
                runtime.admission.watch_expiry(self.ticket, lambda: not self.ended.is_set(), self._expired),
                name="sse-auth",
            )
        await self.reader.start(opening)

    async def _expired(self) -> None:
        await self.reader.fail(
            Unauthorized("token expired; reconnect with a fresh token"),
            CloseCode.UNAUTHORIZED,
            "token expired",
        )

    async def finish(self) -> None:
        """Release everything: the reader, the connection slot, the registry entry."""
        self.reader.halt()
        await self.reader.aclose()
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher
        await self.runtime.admission.release(self.ticket)
        self.runtime.connections.discard(self)

    async def respond(
        self, scope: Scope, receive: Receive, send: Send, opening: Opening, first: bytes
    ) -> None:
        """The ASGI answer: headers, then the stream until it ends or the client goes."""
        headers = [
            (b"content-type", f"{EVENT_STREAM}; charset=utf-8".encode()),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),  # nginx and others: pass each event on at once
            (REQUEST_ID_HEADER.lower().encode(), self.ticket.trace_id.encode()),
        ]
        disconnect = asyncio.create_task(self._until_disconnect(receive), name="sse-disconnect")
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            if first:
                self._out.insert(0, first)
            try:
                await self.begin(opening)
            except ParleyError as exc:  # the store failed the replay or snapshot: an error event, the end
                await self.reader.fail(exc, CloseCode.GOING_AWAY)
            timeout = self.runtime.settings.send_timeout_ms / 1000
            while not self.gone:
                if not self._out:
                    if self.ended.is_set():
                        break
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                chunk = b"".join(self._out)
                self._out.clear()
                self._size = 0
                self._space.set()
                async with asyncio.timeout(timeout):  # a client that stops reading is let go
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if not self.gone:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except (TimeoutError, OSError, SinkClosed):
            self.gone = True
        finally:
            disconnect.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await disconnect
            await self.finish()

    async def _until_disconnect(self, receive: Receive) -> None:
        while True:
            message: Any = await receive()
            if message["type"] == "http.disconnect":
                self.gone = True
                self.reader.halt()
                self._space.set()
                self._wake.set()
                return
