"""Python client for Parley: connect, send, stream, cancel, rate, and resume transparently.

Two layers on one connection:

* the typed API: ``async with c.stream("Hi") as turn: async for ev in turn`` yields the
  protocol's models (``ResponseDelta``, ``ResponseCompleted``, ...) for one turn;
  ``await c.ask("Hi")`` returns the whole ``Reply``; refusals raise the classes of
  ``parley.protocol.errors``; timeouts bound the wait for a turn's first event and the
  gap between its events, never the length of a healthy reply;
* the low-level API the tests and tools use: ``send``, ``send_json``, ``events()`` (every
  server event as a dict), ``next_event``, ``collect``, ``drop``.

``events()`` deduplicates by ``seq``; when the socket drops (not closed by us) it resumes with
``hello{session_id, resume_token, last_seq}`` and goes on, so callers see one unbroken stream.
A ``message.send`` (and a cancel or a rating) made while disconnected waits in the outbox and
is sent once the resume has replayed what the server already had, with its original
``client_msg_id``: never lost, never doubled (a repeat is answered by ``message.duplicate``).

Tools (``tools=[...]``, ``approve=callback``; see ``client/tools.py``) are declared in ``hello``
and run when the model calls them, while events are being read (a turn's iteration, ``ask``,
``events()``); their results go through the same outbox, resent after a resume until logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from parley.protocol import PROTOCOL_VERSION, ParleyError
from parley.protocol.messages import ResponseCompleted
from parley.protocol.tools import ToolSpec

from .errors import ParleyClosed, error_event_to_exception, error_from_close, resumable_close
from .events import (
    ACCEPTED,
    CANCEL,
    COMPLETED,
    DELTA,
    DUPLICATE,
    ERROR,
    FEEDBACK,
    HEARTBEAT,
    HELLO,
    PING,
    REASONING_DELTA,
    SEND,
    SNAPSHOT,
    STARTED,
    TOOL_CALLS_FINISH,
    TOOL_RESULT_DUPLICATE,
    to_model,
)
from .tools import (
    DENIED,
    ApprovalCallback,
    CallState,
    PendingCall,
    ToolCalls,
    ToolLike,
    call_maybe_async,
    spec_of,
)

if TYPE_CHECKING:
    from .sync import SyncParleyClient
    from .turn import TurnStream

#: Kept for callers of the first version of this module; the value is the protocol's own.
PROTOCOL = PROTOCOL_VERSION

Rating = Literal["up", "down"] | int

#: Defaults of the timeouts that bound a turn (seconds); see ``ParleyClient``.
FIRST_EVENT_TIMEOUT_S = 30.0
IDLE_TIMEOUT_S = 120.0  # above the server's own first-token bound (30 s x retries): it answers first


def rating_of(rating: Rating) -> Literal["up", "down"]:
    """``+1``/``-1`` (any sign) or ``"up"``/``"down"`` as the wire's rating."""
    if rating == "up" or rating == "down":
        return rating
    if isinstance(rating, int) and not isinstance(rating, bool) and rating != 0:
        return "up" if rating > 0 else "down"
    raise ValueError(f'rating must be +1, -1, "up" or "down", not {rating!r}')


@dataclass
class Reply:
    """A finished response as the client saw it."""

    response_id: str
    text: str
    completed: dict[str, Any]  # the response.completed event as on the wire
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def finish_reason(self) -> str:
        return str(self.completed.get("finish_reason"))

    @property
    def usage(self) -> dict[str, int]:
        return dict(self.completed.get("usage") or {})

    @property
    def output(self) -> Any:
        """The parsed JSON of a structured (``json_schema``) reply, else None."""
        return self.completed.get("output")

    @property
    def error(self) -> ParleyError | None:
        """Why the reply ended badly (``finish_reason`` ``error``/``interrupted``), as an exception."""
        done = to_model(self.completed)
        if not isinstance(done, ResponseCompleted) or done.error is None:
            return None
        return error_event_to_exception(done.error.model_dump())


class ParleyClient:
    """One Parley session over one WebSocket, resumed across drops.

    ``first_event_timeout``: seconds a turn may wait for its first event (the message's
    acceptance), including a reconnect. ``idle_timeout``: seconds allowed between two events of
    a turn (a model that stops mid-reply). ``heartbeat_misses``: heartbeat intervals of total
    silence after which the connection is taken for dead and resumed (None: never).
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        metadata: dict[str, Any] | None = None,
        session_id: str | None = None,
        resume_token: str | None = None,
        last_seq: int = 0,
        auto_resume: bool = True,
        max_resumes: int = 50,
        origin: str | None = None,
        subprotocols: list[str] | None = None,
        open_timeout: float = 10.0,
        first_event_timeout: float = FIRST_EVENT_TIMEOUT_S,
        idle_timeout: float = IDLE_TIMEOUT_S,
        heartbeat_misses: int | None = 2,
        tools: Iterable[ToolLike] = (),
        approve: ApprovalCallback | None = None,
    ) -> None:
        self.url = url
        self.token = token
        self.metadata = metadata or {}
        self.session_id = session_id
        self.resume_token = resume_token
        self.last_seq = last_seq
        self.auto_resume = auto_resume
        self.max_resumes = max_resumes  # consecutive failed attempts per outage before giving up
        self.origin = origin
        self.subprotocols = subprotocols if subprotocols is not None else [PROTOCOL_VERSION]
        self.open_timeout = open_timeout  # handshake, and again hello -> session.ready
        self.first_event_timeout = first_event_timeout
        self.idle_timeout = idle_timeout
        self.heartbeat_misses = heartbeat_misses
        self.ready: dict[str, Any] | None = None
        self.resumes = 0  # resume attempts
        self.duplicates_dropped = 0  # events the server sent twice (must stay 0)
        self.gaps = 0  # seq jumps seen (must stay 0)
        self.close_code: int | None = None  # the close that ended the session for good, if one did
        self._ws: ClientConnection | None = None
        self._closing = False
        self._dropped = False
        self._connections = 0  # successful opens; an outbox entry is written at most once per connection
        self._replay_until = 0  # session.ready.last_seq: the outbox waits until the replay reached it
        self._last_error: dict[str, Any] | None = None  # connection-level error, for the close that follows
        # the outbox: sends, cancels and ratings not yet answered, with the connection they were written on
        self._outbox: dict[str, dict[str, Any]] = {}  # client_msg_id -> message.send frame
        self._written_on: dict[str, int] = {}  # client_msg_id -> connection number
        self._controls: list[dict[str, Any]] = []  # cancels and ratings made while disconnected
        self.message_ids: dict[str, str] = {}  # client_msg_id -> message_id
        self.response_of: dict[str, str] = {}  # message_id -> response_id
        self.texts: dict[str, list[str]] = {}  # response_id -> text parts received
        self.completed: dict[str, dict[str, Any]] = {}  # response_id -> response.completed
        # tool calls (issue 17): declared tools, every call of the session, answers not yet logged
        self.continuations: dict[str, str] = {}  # response_id -> the continuation after its tool results
        self.reasoning: dict[str, str] = {}  # response_id -> reasoning text received
        self.tool_calls = ToolCalls()
        self.tool_calls.add(tools)
        self.approve = approve  # asked before a tool made with approve=True runs, and by server tools
        asking = [t.name for t in self.tool_calls.tools.values() if t.approve]
        if asking and approve is None:
            raise ValueError(f"tools {asking} ask for approval: pass approve=<callback>")
        self._flush_lock = asyncio.Lock()  # the reader and tool tasks both flush

    # ------------------------------------------------------------ connection

    async def connect(self) -> dict[str, Any]:
        """Open (or resume, when a session id is known) and return ``session.ready``."""
        self._closing = False
        self._ws = await connect(
            self.url,
            subprotocols=self.subprotocols,  # type: ignore[arg-type]
            compression=None,
            origin=self.origin,  # type: ignore[arg-type]
            max_size=2**22,
            ping_interval=None,
            open_timeout=self.open_timeout,
            close_timeout=2,
        )
        self._dropped = False
        self._last_error = None
        hello: dict[str, Any] = {"type": HELLO, "protocol": PROTOCOL_VERSION}
        if self.token:
            hello["token"] = self.token
        if self.metadata:
            hello["metadata"] = self.metadata
        if self.tool_calls.tools:
            hello["tools"] = self.tool_calls.specs()
        if self.session_id:
            hello.update(session_id=self.session_id, resume_token=self.resume_token, last_seq=self.last_seq)
        await self._ws.send(json.dumps(hello))
        try:
            async with asyncio.timeout(self.open_timeout):  # a server that never answers is a failed open
                first: dict[str, Any] = json.loads(await self._ws.recv())
        except TimeoutError:
            self._ws.transport.abort()
            raise
        except ConnectionClosed as exc:
            raise self._closed(exc) from None
        if first.get("type") == ERROR:
            with contextlib.suppress(ConnectionClosed):
                await self._ws.recv()
            code = self._ws.close_code
            self.close_code = code
            raise ParleyClosed(code, first.get("code", ""), error_event_to_exception(first))
        self.ready = first
        self.session_id = first["session_id"]
        self.resume_token = first["resume_token"]
        self._connections += 1
        self._replay_until = int(first.get("last_seq") or 0) if first.get("resumed") else 0
        return first

    async def close(self) -> None:
        self._closing = True
        for task in list(self.tool_calls.tasks):  # a handler or an approval still waiting: stop it
            task.cancel()
        if self._ws is not None:
            await self._ws.close()

    def drop(self) -> None:
        """Kill the TCP connection without a close handshake (tests: an abrupt network loss)."""
        if self._ws is not None:
            self._ws.transport.abort()
            self._dropped = True  # frames already buffered are lost too, as on a real network

    async def __aenter__(self) -> ParleyClient:
        try:
            await self.connect()
        except ParleyClosed as exc:
            raise exc.error from exc
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @classmethod
    def sync(cls, url: str, **kwargs: Any) -> SyncParleyClient:
        """A blocking facade for scripts and notebooks: ``with ParleyClient.sync(url) as c: c.ask("Hi")``."""
        from .sync import SyncParleyClient

        return SyncParleyClient(url, **kwargs)

    @property
    def connected(self) -> bool:
        """Whether frames written now reach the server (as far as this side knows)."""
        return self._ws is not None and not self._dropped and self._ws.close_code is None

    # ------------------------------------------------------------ typed API

    def stream(
        self,
        content: str,
        *,
        client_msg_id: str | None = None,
        profile: str | None = None,
        response_format: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        first_event_timeout: float | None = None,
        idle_timeout: float | None = None,
        tools: Sequence[ToolLike | ToolSpec | dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
    ) -> TurnStream:
        """One turn: ``async with c.stream("Hi") as turn: async for ev in turn: ...`` (typed events).

        A reply that calls tools goes on through the calls, their results and the continuation.
        """
        from .turn import TurnStream

        return TurnStream(
            self,
            content,
            client_msg_id=client_msg_id,
            profile=profile,
            response_format=response_format,
            metadata=metadata,
            tools=tools,
            tool_choice=tool_choice,
            first_event_timeout=first_event_timeout or self.first_event_timeout,
            idle_timeout=idle_timeout or self.idle_timeout,
        )

    async def ask(
        self,
        content: str,
        *,
        client_msg_id: str | None = None,
        profile: str | None = None,
        response_format: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        first_event_timeout: float | None = None,
        idle_timeout: float | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - an optional total cap on top of the two bounds
        tools: Sequence[ToolLike | ToolSpec | dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
    ) -> Reply:
        """Send a turn and return its whole reply (whatever its ``finish_reason``; see ``Reply.error``).

        Raises the ``ParleyError`` of a refusal, ``ResponseTimeout`` when the turn stalls.
        """
        turn = self.stream(
            content,
            client_msg_id=client_msg_id,
            profile=profile,
            response_format=response_format,
            metadata=metadata,
            first_event_timeout=first_event_timeout,
            idle_timeout=idle_timeout,
            tools=tools,
            tool_choice=tool_choice,
        )
        async with asyncio.timeout(timeout), turn:
            async for _ in turn:
                pass
        return turn.reply()

    # ------------------------------------------------------------ requests

    async def send_raw(self, data: str | bytes) -> None:
        assert self._ws is not None, "not connected"
        await self._ws.send(data)

    async def send_json(self, message: dict[str, Any]) -> None:
        await self.send_raw(json.dumps(message))

    async def send(
        self,
        content: str,
        *,
        client_msg_id: str | None = None,
        profile: str | None = None,
        response_format: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        tools: Sequence[ToolLike | ToolSpec | dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
    ) -> str:
        """Send a user turn; returns its ``client_msg_id`` (the idempotency key).

        Disconnected, the message waits in the outbox and goes out after the resume. ``tools``:
        declared for this turn only (a ``@tool`` or pair is also run here; a bare spec is answered
        by you with ``send_tool_result``); ``tool_choice``: "auto", "none", "required" or {"name": X}.
        """
        cid = client_msg_id or uuid.uuid4().hex
        msg: dict[str, Any] = {"type": SEND, "client_msg_id": cid, "content": content}
        if profile:
            msg["profile"] = profile
        if response_format:
            msg["response_format"] = response_format
        if metadata:
            msg["metadata"] = metadata
        if tools:
            msg["tools"] = [self._turn_tool(t) for t in tools]
        if tool_choice:
            msg["tool_choice"] = tool_choice
        self._outbox[cid] = msg
        self._written_on.pop(cid, None)  # an explicit resend is written again, even on this connection
        await self._flush()
        return cid

    async def cancel(self, response_id: str | None = None) -> None:
        """Stop the running response (or ``response_id``); queued while disconnected."""
        msg: dict[str, Any] = {"type": CANCEL}
        if response_id:
            msg["response_id"] = response_id
        await self._control(msg)

    async def feedback(
        self, response_id: str, rating: Rating, comment: str | None = None, tags: list[str] | None = None
    ) -> None:
        """Rate a response (``"up"``/``"down"`` or ``+1``/``-1``); queued while disconnected."""
        msg: dict[str, Any] = {"type": FEEDBACK, "response_id": response_id, "rating": rating_of(rating)}
        if comment is not None:
            msg["comment"] = comment
        if tags:
            msg["tags"] = tags
        await self._control(msg)

    # ------------------------------------------------------------ tool calls (issue 17)

    def _turn_tool(self, item: ToolLike | ToolSpec | dict[str, Any]) -> dict[str, Any]:
        """One ``message.send.tools`` entry; a tool with a handler is also registered to run here."""
        if isinstance(item, ToolSpec):
            return item.model_dump()
        if isinstance(item, dict):
            return spec_of(item).model_dump()
        (added,) = self.tool_calls.add([item])
        if added.approve and self.approve is None:
            raise ValueError(f"tool {added.name!r} asks for approval: pass approve=<callback> to the client")
        return added.spec.model_dump()

    @property
    def pending_calls(self) -> list[PendingCall]:
        """Calls still open: waiting for this client's result, the person's decision, or a server tool."""
        return self.tool_calls.pending_calls()

    def calls_of(self, response_id: str) -> list[CallState]:
        """The calls one response made, in order, with their results once logged."""
        return [c for c in self.tool_calls.calls.values() if c.response_id == response_id]

    async def send_tool_result(self, call_id: str, output: Any, *, is_error: bool = False) -> None:
        """Answer a call yourself (a tool declared without a handler); safe to repeat."""
        self.tool_calls.handling.add(call_id)
        self.tool_calls.answer(call_id, output, is_error=is_error)
        await self._flush()

    async def approve_tool(self, call_id: str, approved: bool) -> None:
        """Decide on a server tool that asked (``tool.approval_requested``) without a callback."""
        self.tool_calls.handling.add(call_id)
        self.tool_calls.decide(call_id, approved)
        await self._flush()

    def _start_tools(self) -> None:
        """Run or ask about every open call not yet handled here (only once the replay caught up)."""
        for call in self.tool_calls.due():
            self.tool_calls.handling.add(call.call_id)
            task = asyncio.get_running_loop().create_task(self._handle_call(call))
            self.tool_calls.tasks.add(task)
            task.add_done_callback(self.tool_calls.tasks.discard)

    async def _ask(self, call: CallState) -> bool | None:
        """The approval callback's answer (None: no callback, left to the application)."""
        if self.approve is None:
            return None
        return bool(await call_maybe_async(self.approve, call.pending()))

    async def _handle_call(self, call: CallState) -> None:
        calls = self.tool_calls
        try:
            if call.server:
                try:
                    approved = await self._ask(call)
                except Exception:  # a failing callback is a no, never a silent yes
                    approved = False
                if approved is None:
                    calls.handling.discard(call.call_id)
                    return
                calls.decide(call.call_id, approved)
            else:
                tool = calls.tools[call.name]
                try:
                    allowed = not tool.approve or bool(await self._ask(call))
                except Exception as exc:
                    calls.answer(call.call_id, f"{DENIED} (the approval failed: {exc})", is_error=True)
                else:
                    if not allowed:
                        calls.answer(call.call_id, DENIED, is_error=True)
                    else:
                        try:
                            output = await call_maybe_async(tool.handler, **(call.arguments or {}))
                        except Exception as exc:  # the model is told, as an error result
                            calls.answer(call.call_id, str(exc) or type(exc).__name__, is_error=True)
                        else:
                            calls.answer(call.call_id, output)
            await self._flush()
        except ConnectionClosed:
            pass  # the answer stays in the outbox; the reader resumes and resends it

    async def ping(self, nonce: str | None = None) -> None:
        await self.send_json({"type": PING, "nonce": nonce} if nonce else {"type": PING})

    async def _control(self, msg: dict[str, Any]) -> None:
        if self._caught_up() and await self._write(msg):
            return
        self._controls.append(msg)

    # ------------------------------------------------------------ outbox

    def _caught_up(self) -> bool:
        """Connected, and the resume's replay reached ``session.ready.last_seq``: safe to (re)send."""
        return self.connected and self.last_seq >= self._replay_until

    async def _write(self, msg: dict[str, Any]) -> bool:
        """Write one frame if the connection is up; False (nothing raised) if it is not."""
        if not self.connected:
            return False
        assert self._ws is not None
        try:
            await self._ws.send(json.dumps(msg))
        except ConnectionClosed:
            return False  # events() sees the close and resumes; the outbox keeps the frame
        return True

    async def _flush(self) -> None:
        """Write what the outbox holds and this connection has not carried yet; start due tools."""
        if not self._caught_up():
            return
        async with self._flush_lock:
            await self._flush_locked()
        self._start_tools()

    async def _flush_locked(self) -> None:
        for item in self.tool_calls.to_write(self._connections):
            if not await self._write(item.frame):
                return
            item.written_on = self._connections
        while self._controls:
            if not await self._write(self._controls[0]):
                return
            self._controls.pop(0)
        for cid, msg in list(self._outbox.items()):
            if self._written_on.get(cid) == self._connections:
                continue
            if not await self._write(msg):
                return
            self._written_on[cid] = self._connections

    def _answered(self, client_msg_id: str) -> None:
        self._outbox.pop(client_msg_id, None)
        self._written_on.pop(client_msg_id, None)

    # ------------------------------------------------------------ receiving

    def _closed(self, exc: ConnectionClosed) -> ParleyClosed:
        """The ``ParleyClosed`` for a close, carrying the error it stands for."""
        code = exc.rcvd.code if exc.rcvd else None
        reason = exc.rcvd.reason if exc.rcvd else ""
        self.close_code = code
        return ParleyClosed(code, reason, error_from_close(code, reason, self._last_error))

    async def _resume(self) -> None:
        delay = 0.05
        failures = 0
        while True:
            if failures >= self.max_resumes:
                raise ParleyClosed(None, "too many resumes")
            self.resumes += 1
            try:
                await self.connect()
                return
            except ParleyClosed as exc:
                if not resumable_close(exc.code):
                    raise
            except (OSError, ConnectionClosed, websockets.InvalidHandshake, TimeoutError):
                pass
            failures += 1
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 2.0)

    def _silence_limit(self) -> float | None:
        """Seconds of total silence after which the connection is taken for dead (heartbeats stopped)."""
        if self.heartbeat_misses is None or not self.ready:
            return None
        interval = float(self.ready.get("heartbeat_interval_ms") or 15_000) / 1000
        return max(1.0, self.heartbeat_misses * interval) + 0.5

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Every server event, deduplicated by seq, across transparent resumes."""
        if self._ws is None and not self._closing:
            await self.connect()
        while True:
            assert self._ws is not None, "not connected"
            if self._dropped:
                self._dropped = False
                await self._resume()
                await self._flush()
                continue
            try:
                async with asyncio.timeout(self._silence_limit()):
                    raw = await self._ws.recv()
            except TimeoutError:
                self.drop()  # heartbeats stopped: the connection is dead without having said so
                continue
            except ConnectionClosed as exc:
                if self._closing:
                    return
                code = exc.rcvd.code if exc.rcvd else None
                if not self.auto_resume or not resumable_close(code):
                    raise self._closed(exc) from None
                await self._resume()
                await self._flush()
                continue
            event = json.loads(raw)
            seq = event.get("seq")
            if seq is not None:
                if seq <= self.last_seq:
                    self.duplicates_dropped += 1  # already seen before a resume
                    continue
                if seq != self.last_seq + 1 and self.last_seq:
                    self.gaps += 1  # never expected: the server replays every missed event
                self.last_seq = seq
            elif event.get("type") == SNAPSHOT:
                self.last_seq = event["last_seq"]
            self._track(event)
            await self._flush()  # the outbox, answers of tool calls, and calls now due
            yield event

    async def next_event(self, *types: str, timeout: float = 10.0) -> dict[str, Any]:  # noqa: ASYNC109
        """The next event (of one of ``types``, if given), skipping heartbeats."""

        async def _next() -> dict[str, Any]:
            async for event in self.events():
                if types and event["type"] not in types:
                    continue
                if not types and event["type"] == HEARTBEAT:
                    continue
                return event
            raise ParleyClosed(None, "closed")

        return await asyncio.wait_for(_next(), timeout)

    def _track(self, event: dict[str, Any]) -> None:
        """Remember which response answers which message, its text and its end; settle the outbox."""
        kind = event["type"]
        if kind == ACCEPTED:
            self.message_ids[event["client_msg_id"]] = event["message_id"]
            self._answered(event["client_msg_id"])
        elif kind == DUPLICATE:
            self.message_ids[event["client_msg_id"]] = event["message_id"]
            self.response_of[event["message_id"]] = self.newest(event["response_id"])
            self._answered(event["client_msg_id"])
        elif kind == STARTED:
            previous = event.get("continues")
            if previous:  # a continuation after tool results: the message's reply is now this one
                self.continuations[previous] = event["response_id"]
                for mid, rid in list(self.response_of.items()):
                    if rid == previous:
                        self.response_of[mid] = event["response_id"]
            self.response_of[event["in_reply_to"]] = event["response_id"]
            self.texts.setdefault(event["response_id"], [])
        elif kind == DELTA:
            self.texts.setdefault(event["response_id"], []).append(event["text"])
        elif kind == REASONING_DELTA:
            rid = event["response_id"]
            self.reasoning[rid] = self.reasoning.get(rid, "") + event["text"]
        elif kind == COMPLETED:
            self.completed[event["response_id"]] = event
        elif kind == SNAPSHOT:
            self.texts = {t["id"]: [t["content"]] for t in event["turns"] if t["role"] == "assistant"}
            for t in event["turns"]:  # finished replies whose completion the gap swallowed
                if t["role"] == "assistant" and t["id"] not in self.completed:
                    self.completed[t["id"]] = {
                        "type": COMPLETED,
                        "response_id": t["id"],
                        "finish_reason": t.get("finish_reason") or "stop",
                    }
            if event.get("in_flight"):
                flight = event["in_flight"]
                self.texts[flight["id"]] = [flight["content"]]
        elif kind == TOOL_RESULT_DUPLICATE:
            self.tool_calls.settle(event["call_id"])  # logged already: nothing to resend
        elif kind == ERROR:
            ref = event.get("ref") or {}
            cid = ref.get("client_msg_id")
            if ref.get("call_id") and ref.get("call_id") in self.tool_calls.outbox:
                if not event.get("retryable"):
                    self.tool_calls.settle(ref["call_id"])  # an unknown or finished call: never taken
                else:  # sent again after the wait the server asked for (checked at the next event)
                    wait_ms = event.get("retry_after_ms") or 1000
                    self.tool_calls.outbox[ref["call_id"]].retry_at(wait_ms / 1000)
            elif ref.get("type") == SEND and cid:
                self._answered(cid)  # refused: the caller is told (collect/stream raise), never resent
            elif not ref or ref.get("type") == HELLO:
                self._last_error = event  # the close that follows means this
        self.tool_calls.track(event)

    def newest(self, response_id: str) -> str:
        """The last continuation of a response (itself if none followed its tool results)."""
        seen = {response_id}
        while response_id in self.continuations and self.continuations[response_id] not in seen:
            response_id = self.continuations[response_id]
            seen.add(response_id)
        return response_id

    def _response_for(self, client_msg_id: str | None) -> str | None:
        if client_msg_id is None:
            return None
        message_id = self.message_ids.get(client_msg_id)
        return self.response_of.get(message_id) if message_id else None

    def reply_for(self, client_msg_id: str, events: list[dict[str, Any]] | None = None) -> Reply | None:
        """The finished ``Reply`` to ``client_msg_id`` if it completed, else None."""
        rid = self._response_for(client_msg_id)
        if rid is None or rid not in self.completed:
            return None
        if self.completed[rid].get("finish_reason") == TOOL_CALLS_FINISH:
            return None  # waiting for tool results: a continuation follows
        return Reply(rid, "".join(self.texts.get(rid, [])), self.completed[rid], events or [])

    async def collect(self, client_msg_id: str, timeout: float = 30.0) -> Reply:  # noqa: ASYNC109
        """Read until the response to ``client_msg_id`` completes (even if its events were read already).

        ``timeout`` caps the whole wait (the low-level API); the typed ``stream``/``ask`` bound the
        gaps instead. A refusal of the message raises its ``ParleyError``.
        """

        async def _collect() -> Reply:
            seen: list[dict[str, Any]] = []
            while True:
                reply = self.reply_for(client_msg_id, seen)
                if reply is not None:
                    return reply
                async for ev in self.events():
                    seen.append(ev)
                    if ev["type"] in (COMPLETED, DUPLICATE, SNAPSHOT):
                        break
                    ref = ev.get("ref") or {}
                    if ev["type"] == ERROR and ref.get("client_msg_id") == client_msg_id:
                        raise error_event_to_exception(ev)
                else:
                    raise ParleyClosed(None, "closed before the response completed")

        return await asyncio.wait_for(_collect(), timeout)
