"""The ``/v1/ws`` endpoint: speaks the protocol over one WebSocket and nothing else.

A connection is a reader of its session's log plus a handler of client frames.
Once caught up it is *live*: the fan-out hands it each new event and it writes the
frame into the transport at once (``server/inline.py``), with no task of its own.
Everything else — the replay on open, events that arrive while another frame is
being written, a hole in live delivery, a peer that pushes back — goes to a
catch-up task that lives only until the connection is live again. Frames that
could wait (errors, pongs) go through ``_send`` under one lock, which live
delivery respects. Every blocked write has a deadline (``send_timeout_ms``): a
client that stops reading is a slow consumer and is closed with 4009, like one
whose bounded event buffer overflowed; its session and generation go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any

from starlette.responses import JSONResponse, PlainTextResponse
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from parley.protocol import PROTOCOL_VERSION, encode, error_event, parse_client
from parley.protocol.errors import (
    CloseCode,
    ErrorCode,
    InvalidMessage,
    ParleyError,
    RateLimited,
    SessionNotFound,
    Unauthorized,
    UnsupportedVersion,
)
from parley.protocol.messages import (
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
from parley.sessions import LogEntry, LogGap, SlowConsumer, fresh, replay
from parley.sessions.fanout import Subscriber
from parley.sessions.keys import REPLAY_CHUNK

from . import logs
from .auth import Authenticator, Identity
from .handshake import credential_in_url, header, origin_allowed
from .inline import Direct, direct_transport, send_now, writable, write_some
from .metrics import Metrics
from .ratelimit import Limiter, Refusal
from .service import OpenedSession, Principal, SessionService
from .settings import Settings

log = logging.getLogger("parley.ws")

#: How long the close handshake may take before the connection is abandoned to the server.
CLOSE_TIMEOUT_S = 2.0
#: A reader whose store reads fail retries this often, for up to this long, before closing (1001).
STORE_RETRY_S = 0.2
STORE_OUTAGE_GRACE_S = 30.0
#: The window in which ``abuse_strikes`` rate_limited answers close the connection (4029).
STRIKE_WINDOW_S = 60.0


class SlowPeer(Exception):
    """A frame could not be written within ``send_timeout_ms``: the client stopped reading."""


class FrameBudget:
    """Per-connection token bucket over every frame after hello (``frames_per_minute``)."""

    __slots__ = ("level", "limit", "ts")

    def __init__(self, per_minute: int) -> None:
        self.limit = per_minute
        self.level = float(per_minute)
        self.ts = time.monotonic()

    def take(self) -> int:
        """0 when the frame may be handled, else the milliseconds until one may."""
        now = time.monotonic()
        self.level = min(self.limit, self.level + (now - self.ts) * self.limit / 60.0)
        self.ts = now
        if self.level >= 1:
            self.level -= 1
            return 0
        return max(1, int((1 - self.level) * 60_000 / self.limit))


def refusal_error(refusal: Refusal, ref: dict[str, Any] | None = None) -> RateLimited:
    what = {
        "messages": "messages per minute",
        "tokens": "generated tokens per minute",
        "connections": "open connections",
        "sessions": "new sessions per session lifetime",
    }[refusal.kind]
    return RateLimited(
        f"{refusal.scope} limit reached: {refusal.limit} {what}",
        retry_after_ms=refusal.retry_after_ms,
        ref=ref,
    )


def trace_id_from(metadata: dict[str, Any], traceparent: str | None) -> str:
    """hello.metadata.trace_id, else a W3C traceparent (header or metadata), else a new one."""
    tid = metadata.get("trace_id")
    if isinstance(tid, str) and 0 < len(tid) <= 64:
        return tid
    tp = metadata.get("traceparent") or traceparent
    if isinstance(tp, str):
        parts = tp.split("-")
        if len(parts) == 4 and len(parts[1]) == 32:
            return parts[1]
    return uuid.uuid4().hex


class Connection:
    """One client's WebSocket: its session's reader (a fan-out ``Listener``) and its requests' handler."""

    # slotted: 10,000 idle connections are 10,000 of these (docs/benchmarks.md, B5)
    __slots__ = (
        "_abandoned", "_catcher", "_closing", "_direct", "_frames", "_hb_interval", "_last_sent", "_lock",
        "_main", "_must_read", "_pending_write", "_retrying", "_send_timeout", "_stalled", "_started",
        "_strikes", "_sub", "_watcher", "_write_deadline", "_writing", "auth", "charges", "closed", "conn_id",
        "holds_slot", "identity", "last_seq", "limiter", "metrics", "registry", "service", "session_id",
        "settings", "slow", "store", "trace_id", "who", "ws",
    )  # fmt: skip

    def __init__(
        self,
        ws: WebSocket,
        service: SessionService,
        settings: Settings,
        registry: set[Connection],
        *,
        direct: Direct | None = None,
        auth: Authenticator | None = None,
        limiter: Limiter | None = None,
        metrics: Metrics | None = None,
        charges: dict[str, asyncio.Task[None]] | None = None,
    ):
        self.ws = ws
        self._direct = direct  # uvicorn's transport, when frames may be written to it directly
        self.service = service
        self.store = service.store
        self.settings = settings
        self.registry = registry
        self.auth = auth
        self.limiter = limiter
        self.metrics = metrics or Metrics()
        self.charges = charges if charges is not None else {}
        self.conn_id = uuid.uuid4().hex if limiter is not None else ""  # names its slot in the limiter
        self.session_id: str | None = None
        self.trace_id = ""
        self.last_seq = 0
        self.who: Principal | None = None
        self.identity: Identity | None = None
        self.holds_slot = False  # counted against the user's open connections
        self.slow = False  # declared a slow consumer; closing with 4009
        self._lock = asyncio.Lock()
        self._last_sent = time.monotonic()
        self._send_timeout = settings.send_timeout_ms / 1000
        self._write_deadline: float | None = None  # loop time by which the frame being written must leave
        self._writing: asyncio.Task[Any] | None = None
        self._stalled: asyncio.Task[Any] | None = None  # the writer the ticker interrupted
        self._hb_interval = settings.heartbeat_interval_ms / 1000
        self._started = False  # session.ready is out: log events may follow
        self._catcher: asyncio.Task[None] | None = None  # while set, live delivery waits for it
        self._must_read = False  # the catch-up task must read the log (open, hole, resync)
        self._pending_write: Any = None  # a live write the peer pushed back on; the catcher finishes it
        self._retrying = False  # the catch-up task waits out a store outage (heartbeats go on meanwhile)
        self._watcher: asyncio.Task[None] | None = None
        self._main: asyncio.Task[Any] | None = None
        self._abandoned = False
        self._closing: asyncio.Future[None] | None = None
        self._sub: Subscriber | None = None
        self._frames = FrameBudget(settings.frames_per_minute) if settings.frames_per_minute else None
        self._strikes: list[float] | None = None  # rate_limited answers in the strike window (rare)
        self.closed = False

    # --------------------------------------------------------------- sending

    async def _send(self, text: str) -> None:
        async with self._lock:
            await self._write([text])

    async def _write(self, frames: list[str]) -> None:
        """Write frames (lock held); each must leave within the send timeout, else ``SlowPeer``."""
        i = 0
        while i < len(frames):
            if writable(self._direct):  # many frames in one transport write (a replay chunk: one or a few)
                i = write_some(self._direct, frames, i)
                self._last_sent = time.monotonic()
            else:
                await self._guarded(self.ws.send_text(frames[i]))
                i += 1

    async def _guarded(self, write: Any) -> None:
        """Await one frame write under the send deadline.

        No timer per frame (that would cost more than the write): the app's ticker calls
        ``interrupt_stalled_write`` for writes past their deadline.
        """
        loop = asyncio.get_running_loop()
        me = self._writing = asyncio.current_task()
        self._write_deadline = loop.time() + self._send_timeout
        try:
            await write
        except asyncio.CancelledError:
            if self._stalled is None or self._stalled is not me:
                raise
            me.uncancel()  # type: ignore[union-attr]
            self.slow = True
            raise SlowPeer() from None
        finally:
            self._write_deadline = None
            self._writing = None
        self._last_sent = time.monotonic()

    def interrupt_stalled_write(self, now: float) -> bool:
        """Watchdog hook: interrupt a frame write stuck past its deadline (the client stopped reading)."""
        deadline, task = self._write_deadline, self._writing
        if deadline is None or task is None or now <= deadline or self._stalled is not None:
            return False
        self._stalled = task
        task.cancel()
        return True

    async def send_error(self, exc: ParleyError) -> None:
        """Tell the client; a client gone meanwhile is no error, one that stopped reading is (SlowPeer)."""
        self.metrics.errors.labels(exc.code.value).inc()
        try:
            await self._send(encode(error_event(exc)))
        except SlowPeer:
            raise
        except Exception:
            pass

    async def close(self, code: int, reason: str = "", wait: float = CLOSE_TIMEOUT_S) -> None:
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
        self.metrics.closes.labels(str(int(code))).inc()
        log.info("closing connection", extra={"fields": {"close_code": int(code), "reason": reason}})
        sent = False
        try:
            await asyncio.wait_for(self.ws.close(code, reason), wait)
            sent = True
        except Exception:
            pass
        finally:
            self._closing.set_result(None)
        main = self._main
        if not sent and main is not None and main is not asyncio.current_task() and not main.done():
            self._abandoned = True
            main.cancel()

    async def _close_slow(self) -> None:
        """4009 once the client takes the close frame (within the send timeout), else abandon it."""
        self.slow = True
        if not self.closed:
            log.warning("slow consumer", extra={"fields": {"last_seq": self.last_seq}})
        await self.close(
            CloseCode.SLOW_CONSUMER, "slow consumer; resume to catch up", wait=self._send_timeout
        )

    # --------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        self._main = asyncio.current_task()
        self.registry.add(self)
        self.metrics.connections_opened.inc()
        try:
            if await self._start():
                if self.identity is not None and self.auth is not None:
                    self._watcher = asyncio.create_task(self._watch_token(), name="ws-auth")
                while not self.closed:  # the receive loop, inline: one coroutine frame less per socket
                    if not await self._on_frame(self._text(await self.ws.receive())):
                        break
        except WebSocketDisconnect:
            pass
        except SlowPeer:
            await self._close_slow()
        except asyncio.CancelledError:
            if not self._abandoned:
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
        finally:
            self._started = False  # no more live delivery
            if self._sub is not None:
                self._sub.listener = None
                self.store.unsubscribe(self._sub)
            for task in (self._catcher, self._watcher):
                if task is not None and task is not asyncio.current_task():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
            if self._pending_write is not None:
                self._pending_write.close()
                self._pending_write = None
            if self.holds_slot and self.limiter is not None and self.who is not None:
                with contextlib.suppress(Exception):
                    await self.limiter.close_connection(self.who, self.conn_id)
            self.registry.discard(self)  # last: leaving the registry means fully released
            if self.session_id is not None:
                log.info("connection ended", extra={"fields": {"last_seq": self.last_seq, "slow": self.slow}})

    async def _start(self) -> bool:
        """hello, then session.ready: True when the connection is open for requests.

        A method of its own so the parsed hello is not kept for the connection's lifetime.
        """
        hello = await self._await_hello()
        if hello is None:
            return False
        await self._open(hello)
        return not self.closed

    async def _watch_token(self) -> None:
        """Close with 4001 (after an ``unauthorized`` error) once the token expires."""
        assert self.identity is not None and self.auth is not None
        interval = self.settings.auth_revalidate_ms / 1000
        while not self.closed:
            remaining = self.identity.expires_at + self.auth.leeway - time.time()
            await asyncio.sleep(max(0.0, min(interval, remaining)))
            if self.closed:
                return
            if not self.auth.still_valid(self.identity):
                self.metrics.auth_failures.inc()
                try:
                    await self.send_error(Unauthorized("token expired; reconnect with a fresh token"))
                except SlowPeer:
                    await self._close_slow()
                    return
                await self.close(CloseCode.UNAUTHORIZED, "token expired")
                return

    @staticmethod
    def _text(msg: Any) -> str | None:
        """A received ASGI message's text; None for a binary frame (answered as invalid)."""
        if msg["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(msg.get("code", 1000))
        text: str | None = msg.get("text")
        return text

    async def _await_hello(self) -> Hello | None:
        try:
            async with asyncio.timeout(self.settings.hello_timeout_ms / 1000):  # no task, unlike wait_for
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

    def _principal(self, hello: Hello) -> Principal:
        """With auth on, the verified token alone says who this is; ``hello.metadata`` never does."""
        if self.auth is not None:
            self.identity = self.auth.verify(hello.token)
            return self.identity.principal
        if self.settings.auth_enabled:
            from .auth import principal_from_token

            return principal_from_token(hello.token, self.settings)
        tenant = hello.metadata.get("tenant_id")
        user = hello.metadata.get("user_id")
        return Principal(
            tenant if isinstance(tenant, str) and tenant else "default",
            user if isinstance(user, str) and user else "anonymous",
        )

    async def _open(self, hello: Hello) -> None:
        self.trace_id = trace_id_from(hello.metadata, header(self.ws, b"traceparent"))
        logs.bind(trace_id=self.trace_id)
        resuming = bool(hello.session_id)
        try:
            who = self.who = self._principal(hello)
            if self.limiter is not None:
                refusal = await self.limiter.open_connection(who, self.conn_id)
                if refusal is not None:
                    self.metrics.rate_limited.labels(refusal.kind, refusal.scope).inc()
                    raise refusal_error(refusal, ref={"type": "hello"})
                self.holds_slot = True
            if hello.session_id:
                opened = await self.service.resume(who, hello.session_id, hello.resume_token)
            else:
                if self.limiter is not None:
                    refusal = await self.limiter.new_session(who)
                    if refusal is not None:
                        self.metrics.rate_limited.labels(refusal.kind, refusal.scope).inc()
                        raise refusal_error(refusal, ref={"type": "hello"})
                opened = await self.service.open(who)
                self.metrics.sessions_created.inc()
            self.session_id = opened.session_id
            logs.bind(session_id=opened.session_id)
            self._sub = await self.store.subscribe(opened.session_id, self.settings.send_buffer_events)
            self._sub.listener = self  # declines (buffers) until the catch-up task has replayed
            after = (hello.last_seq or 0) if opened.resumed else 0
            if after > opened.last_seq:
                raise InvalidMessage(
                    f"last_seq {after} is ahead of the session ({opened.last_seq})", ref={"type": "hello"}
                )
            # One read, after the subscription: the first replay chunk, whether the log still holds it,
            # and (when shorter than a chunk) all that was logged before live delivery took over.
            # A new session has nothing logged yet.
            chunk = await self.store.read(opened.session_id, after, REPLAY_CHUNK) if opened.resumed else []
            recovered = chunk[0].seq == after + 1 if chunk else after >= opened.last_seq
            newest = max(opened.last_seq, chunk[-1].seq) if chunk else opened.last_seq
        except ParleyError as exc:
            if isinstance(exc, Unauthorized):
                self.metrics.auth_failures.inc()
            if resuming:
                outcome = "not_found" if isinstance(exc, SessionNotFound) else "refused"
                self.metrics.resumes.labels(outcome).inc()
            await self.send_error(exc)
            code = {
                ErrorCode.UNAUTHORIZED: CloseCode.UNAUTHORIZED,
                ErrorCode.SESSION_NOT_FOUND: CloseCode.SESSION_NOT_FOUND,
                ErrorCode.RATE_LIMITED: CloseCode.POLICY_VIOLATION,
            }.get(exc.code, CloseCode.BAD_HANDSHAKE if exc.code == ErrorCode.INVALID_MESSAGE else None)
            if code is None:  # store outage and the like: tell, then let the client retry
                code = CloseCode.GOING_AWAY
            await self.close(code, exc.code)
            return
        if resuming:
            self.metrics.resumes.labels("replayed" if recovered else "snapshot").inc()
        log.info(
            "session ready",
            extra={
                "fields": {
                    "tenant": who.tenant,
                    "user": who.user,
                    "resumed": opened.resumed,
                    "recovered": recovered,
                    "last_seq": newest,
                }
            },
        )
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
            self._must_read = True  # the log after the snapshot
        elif chunk:
            async with self._lock:
                await self._write([entry.data for entry in chunk])
            after = chunk[-1].seq
            self._must_read = len(chunk) >= REPLAY_CHUNK  # a full chunk: the log may hold more
        self.last_seq = after
        self._started = True
        if self._must_read or not self._sub.idle:  # events arrived meanwhile: catch up, then go live
            self.wake()

    async def _send_snapshot(self, opened: OpenedSession) -> int:
        snap = await self.store.snapshot(opened.session_id)
        event = SessionSnapshot(
            last_seq=snap.last_seq,
            turns=[Turn(**t) for t in snap.turns],
            in_flight=Turn(**snap.in_flight) if snap.in_flight else None,
        )
        await self._send(encode(event))
        return snap.last_seq

    # --------------------------------------------------------------- log events

    def deliver(self, entries: list[LogEntry]) -> bool:
        """Fan-out hook: write new events straight into the socket, or decline (False) to have them
        buffered for the catch-up task: while it runs, while ``_send`` holds the socket, after a hole."""
        if self._catcher is not None or not self._started or self._lock.locked():
            return False
        frames, hole = fresh(entries, self.last_seq)
        try:
            for entry in frames:
                pending = send_now(self.ws, self._direct, entry.data)
                self.last_seq = entry.seq
                if pending is not None:  # the peer pushes back: the catcher finishes this frame first
                    self._pending_write = pending
                    return False
        except Exception as exc:  # the socket is gone: the receive loop ends it; the client resumes
            self._gone(exc)
            return True
        if frames:
            self._last_sent = time.monotonic()
        if hole:
            self._must_read = True
            return False
        return True

    def _gone(self, exc: Exception) -> None:
        """A live write failed: stop live delivery (the receive loop sees the disconnect and cleans up)."""
        self._started = False
        if not isinstance(exc, (WebSocketDisconnect, RuntimeError, OSError)):
            log.error("live delivery failed", exc_info=exc)

    def wake(self) -> None:
        """Fan-out hook: entries were buffered (or a resync or overflow is due): start catching up."""
        if self._started and self._catcher is None:
            self._catcher = asyncio.get_running_loop().create_task(
                self._catch_up(), name=f"ws-catch-up-{self.session_id}"
            )

    async def _catch_up(self) -> None:
        """Write what live delivery could not, from the log where needed, until live again."""
        sub = self._sub
        assert sub is not None and self.session_id is not None
        outage_since: float | None = None
        try:
            while True:
                try:
                    async with self._lock:
                        if self._pending_write is not None:
                            pending, self._pending_write = self._pending_write, None
                            await self._guarded(pending)
                        if sub.overflowed:
                            raise SlowConsumer(self.session_id)
                        buffered = sub.take()
                        frames, hole = fresh(buffered, self.last_seq)
                        if hole or self._must_read or sub.resync:
                            self._must_read, sub.resync = True, False
                            async for batch in replay(self.store, self.session_id, self.last_seq):
                                await self._write([entry.data for entry in batch])
                                self.last_seq = batch[-1].seq
                            self._must_read = False
                            frames, hole = fresh(buffered, self.last_seq)
                            if hole:  # the log ends before an entry that was delivered live: it lost events
                                raise LogGap(f"missing events before {hole}")
                        if frames:
                            await self._write([entry.data for entry in frames])
                            self.last_seq = frames[-1].seq
                        if sub.idle and not self._must_read and self._pending_write is None:
                            self._catcher = None  # live again: no await between this check and here
                            return
                    outage_since = None
                except ParleyError as exc:
                    # the store is unreachable: keep the socket and re-read from last_seq once it is back;
                    # only an outage longer than STORE_OUTAGE_GRACE_S closes (the client then resumes)
                    self._must_read = True
                    now = time.monotonic()
                    outage_since = outage_since or now
                    if now - outage_since < STORE_OUTAGE_GRACE_S:
                        self._retrying = True
                        try:
                            await asyncio.sleep(STORE_RETRY_S)
                        finally:
                            self._retrying = False
                        continue
                    await self.send_error(exc)
                    await self.close(CloseCode.GOING_AWAY, exc.code)
                    return
        except (SlowPeer, SlowConsumer, LogGap):
            await self._close_slow()
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass

    def tick(self, now: float, loop_now: float) -> None:
        """The app's ticker, every quarter heartbeat interval: stalled writes, then heartbeats."""
        self.interrupt_stalled_write(loop_now)
        if (
            now - self._last_sent < self._hb_interval * 0.9
            or (self._catcher is not None and not self._retrying)
            or not self._started
            or self.closed
            or self._lock.locked()
            or self._pending_write is not None  # a pushed-back write is not finished yet
        ):
            return
        self._last_sent = now
        hb = encode(Heartbeat(ts=int(time.time() * 1000), last_seq=self.last_seq))
        try:
            self._pending_write = send_now(self.ws, self._direct, hb)
        except Exception as exc:
            self._gone(exc)
            return
        if self._pending_write is not None:
            self.wake()  # (a catch-up task waiting out an outage finishes it on its next round)

    # --------------------------------------------------------------- requests

    async def _on_frame(self, text: str | None) -> bool:
        """Handle one client frame; False when the connection is to close."""
        try:
            if self._frames is not None and (wait := self._frames.take()):
                self.metrics.rate_limited.labels("frames", "connection").inc()
                raise RateLimited(
                    f"connection limit reached: {self.settings.frames_per_minute} frames per minute",
                    retry_after_ms=wait,
                )
            if text is None:
                raise InvalidMessage("frames must be text (JSON)")
            await self._handle(parse_client(text))
        except ParleyError as exc:
            await self.send_error(exc)
            if isinstance(exc, RateLimited) and self._strike():
                await self.close(CloseCode.POLICY_VIOLATION, "rate limits exceeded again and again")
                return False
        return True

    def _strike(self) -> bool:
        """Count a rate_limited answer; True once there were ``abuse_strikes`` within the window."""
        now = time.monotonic()
        self._strikes = [t for t in self._strikes or () if now - t < STRIKE_WINDOW_S]
        self._strikes.append(now)
        return len(self._strikes) >= self.settings.abuse_strikes

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
            if self.limiter is not None and self.who is not None:
                pending = self.charges.get(self.session_id)
                if pending is not None:  # the previous response's tokens count before this turn does
                    with contextlib.suppress(Exception):
                        await asyncio.shield(pending)
                refusal = await self.limiter.take_message(self.who)
                if refusal is not None:
                    self.metrics.rate_limited.labels(refusal.kind, refusal.scope).inc()
                    raise refusal_error(
                        refusal, ref={"type": "message.send", "client_msg_id": msg.client_msg_id}
                    )
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


async def websocket_endpoint(scope: Scope, receive: Receive, send: Send) -> None:
    """``/v1/ws`` as an ASGI app: it keeps the server's own ``send``, the way to its transport (inline.py)."""
    ws = WebSocket(scope, receive, send)
    state = ws.app.state.parley
    settings: Settings = state.settings
    if credential_in_url(ws):
        # refused even with auth off: a URL ends up in proxy, browser and server logs
        state.metrics.auth_failures.inc()
        body = error_event(
            Unauthorized("tokens are accepted only in hello.token, never in the URL")
        ).model_dump(exclude_none=True)
        await ws.send_denial_response(JSONResponse(body, status_code=401))
        return
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
    conn = Connection(
        ws,
        state.service,
        settings,
        state.connections,
        direct=direct_transport(send),
        auth=state.auth,
        limiter=state.limiter,
        metrics=state.metrics,
        charges=state.charges,
    )
    await conn.run()
