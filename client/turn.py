"""One turn as an async iterator of typed events: what ``ParleyClient.stream`` returns.

::

    async with client.stream("Hi") as turn:
        async for ev in turn:                     # MessageAccepted, ResponseStarted, ResponseDelta...,
            if isinstance(ev, ResponseDelta):     # ResponseCompleted (the protocol's models)
                print(ev.text, end="")
    print(turn.finish_reason, turn.usage)
    await turn.feedback(+1, comment="spot on")

Leaving the ``async with`` block before the reply completed cancels the reply and waits for
its ``response.completed`` (so the session is free for the next turn).

A reply that calls tools goes on: the calls, their results (run by the client's tools while the
turn is iterated) and the continuation are all this turn's events; ``response_id`` and ``text``
follow the newest response, ``tool_calls`` lists every call with its result.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from parley.protocol import ErrorCode, ParleyError
from parley.protocol.messages import FeedbackRecorded, ResponseCompleted, Usage
from parley.protocol.tools import ToolSpec

from .errors import ParleyClosed, ResponseTimeout, error_event_to_exception
from .events import (
    ACCEPTED,
    COMPLETED,
    DELTA,
    DUPLICATE,
    ERROR,
    FEEDBACK,
    REASONING_DELTA,
    RECORDED,
    SNAPSHOT,
    STARTED,
    TOOL_APPROVAL_REQUESTED,
    TOOL_CALL,
    TOOL_CALL_DELTA,
    TOOL_CALLS_FINISH,
    TOOL_RESULT_ACCEPTED,
    Event,
    to_model,
)

if TYPE_CHECKING:
    from .client import ParleyClient, Rating, Reply
    from .tools import CallState, ToolLike

#: Codes that refuse one request (not the session); a newer server's unknown code is taken as terminal.
_REQUEST_CODES = frozenset(
    {
        ErrorCode.INVALID_MESSAGE,
        ErrorCode.PAYLOAD_TOO_LARGE,
        ErrorCode.RATE_LIMITED,
        ErrorCode.BUSY,
        ErrorCode.POLICY_REFUSAL,
        ErrorCode.SCHEMA_VALIDATION_FAILED,
    }
)
_KNOWN_CODES = frozenset(ErrorCode)

#: Events of a turn that a stream yields (others, such as heartbeats, are the connection's business).
_TURN_TYPES = frozenset(
    {
        ACCEPTED,
        DUPLICATE,
        STARTED,
        DELTA,
        COMPLETED,
        RECORDED,
        SNAPSHOT,
        # tool calls and reasoning (issue 17)
        TOOL_CALL_DELTA,
        TOOL_CALL,
        TOOL_APPROVAL_REQUESTED,
        TOOL_RESULT_ACCEPTED,
        REASONING_DELTA,
    }
)


class TurnStream:
    """A user turn being answered; iterate it once for its events, read the reply from it after."""

    def __init__(
        self,
        client: ParleyClient,
        content: str,
        *,
        client_msg_id: str | None,
        profile: str | None,
        response_format: dict[str, Any] | None,
        metadata: dict[str, Any] | None,
        first_event_timeout: float,
        idle_timeout: float,
        tools: Sequence[ToolLike | ToolSpec | dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
    ) -> None:
        self._client = client
        self._content = content
        self._send_args: dict[str, Any] = {
            "client_msg_id": client_msg_id,
            "profile": profile,
            "response_format": response_format,
            "metadata": metadata,
            "tools": tools,
            "tool_choice": tool_choice,
        }
        self.first_event_timeout = first_event_timeout
        self.idle_timeout = idle_timeout
        self.client_msg_id: str | None = None
        self.events: list[dict[str, Any]] = []  # this turn's events as on the wire, in order
        self._cancel_wanted = False
        self._heard = False  # the server said something about this turn (accepted/duplicate)
        self.response_ids: list[str] = []  # the reply, then a continuation per round of tool results

    # ------------------------------------------------------------ state

    @property
    def message_id(self) -> str | None:
        return self._client.message_ids.get(self.client_msg_id) if self.client_msg_id else None

    @property
    def response_id(self) -> str | None:
        """The reply's id, once ``response.started`` (or ``message.duplicate``) said it."""
        return self._client._response_for(self.client_msg_id)

    @property
    def text(self) -> str:
        """The reply's text so far (rebuilt from a snapshot if the log could not replay a gap)."""
        rid = self.response_id
        return "".join(self._client.texts.get(rid, [])) if rid else ""

    @property
    def completed(self) -> ResponseCompleted | None:
        """The reply's ``response.completed``, once it arrived."""
        rid = self.response_id
        raw = self._client.completed.get(rid) if rid else None
        model = to_model(raw) if raw is not None else None
        return model if isinstance(model, ResponseCompleted) else None

    @property
    def done(self) -> bool:
        """The reply ended (a response waiting for tool results has not: its continuation follows)."""
        rid = self.response_id
        if rid is None or rid not in self._client.completed:
            return False
        return bool(self._client.completed[rid].get("finish_reason") != TOOL_CALLS_FINISH)

    @property
    def tool_calls(self) -> list[CallState]:
        """Every call this turn's responses made, in order, with its result once logged."""
        return [c for rid in self.response_ids for c in self._client.calls_of(rid)]

    @property
    def reasoning(self) -> str:
        """The model's reasoning for this turn so far (profiles with ``reasoning = "stream"``)."""
        return "".join(self._client.reasoning.get(rid, "") for rid in self.response_ids)

    @property
    def finish_reason(self) -> str | None:
        done = self.completed
        return done.finish_reason if done is not None else None

    @property
    def usage(self) -> Usage | None:
        done = self.completed
        return done.usage if done is not None else None

    @property
    def error(self) -> ParleyError | None:
        """Why the reply ended badly (``finish_reason`` ``error`` or ``interrupted``), else None."""
        done = self.completed
        if done is None or done.error is None:
            return None
        return error_event_to_exception(done.error.model_dump())

    def reply(self) -> Reply:
        """The finished reply in the low-level form (``Reply``); only once ``done``."""
        assert self.client_msg_id is not None
        reply = self._client.reply_for(self.client_msg_id, self.events)
        if reply is None:
            raise RuntimeError("the reply has not completed yet")
        return reply

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Send the message (once); iterating or entering the block does it for you."""
        if self.client_msg_id is None:
            if self._client._ws is None:
                await self._client.connect()
            self.client_msg_id = await self._client.send(self._content, **self._send_args)

    async def __aenter__(self) -> TurnStream:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if (self._heard and self.done) or self.client_msg_id is None:
            return
        if exc_type is None:  # left early on purpose: stop the reply and wait for its end
            await self.cancel()
            async for _ in self:
                pass
        elif not isinstance(exc, ParleyError | ResponseTimeout | ParleyClosed):
            with contextlib.suppress(Exception):  # the caller's own failure: stop the reply, best effort
                async with asyncio.timeout(1):
                    await self.cancel()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        await self.start()
        assert self.client_msg_id is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.idle_timeout if self._heard else self.first_event_timeout)
        while not (self._heard and self.done):  # the server answered this send, and the reply ended
            try:
                async with asyncio.timeout_at(deadline):
                    event = await self._next_raw()
            except TimeoutError:
                if self._client.tool_calls.busy:  # a handler or a person is at work: not a stall
                    deadline = loop.time() + self.idle_timeout
                    continue
                if self._heard:
                    raise ResponseTimeout("idle", self.idle_timeout, self.client_msg_id) from None
                raise ResponseTimeout("first_event", self.first_event_timeout, self.client_msg_id) from None
            if event is None:
                continue
            self._heard = True
            deadline = loop.time() + self.idle_timeout
            self.events.append(event)
            if event["type"] in (STARTED, DUPLICATE):
                self._follow(event["response_id"])
            if event["type"] == STARTED and self._cancel_wanted:
                await self._client.cancel(event["response_id"])
            yield to_model(event)

    def _follow(self, response_id: str) -> None:
        """Count a response (and the continuations the client already knows of) as this turn's."""
        while response_id not in self.response_ids:
            self.response_ids.append(response_id)
            response_id = self._client.continuations.get(response_id, response_id)

    async def _next_raw(self) -> dict[str, Any] | None:
        """The next event of the connection if it is about this turn, else None; raises refusals."""
        try:
            async for event in self._client.events():
                return event if self._mine(event) else None
        except ParleyClosed as exc:
            raise exc.error from exc
        raise exc_closed()

    def _mine(self, event: dict[str, Any]) -> bool:
        kind = event["type"]
        if kind == ERROR:
            ref = event.get("ref") or {}
            if ref.get("client_msg_id") == self.client_msg_id:
                raise error_event_to_exception(event)
            if not ref:
                code = event.get("code")
                if not self._heard and code in _REQUEST_CODES:
                    # some refusals are sent without a ref (the frame budget refuses before reading the
                    # frame): while this send is unanswered, it is the frame refused; it is not resent
                    assert self.client_msg_id is not None
                    self._client._answered(self.client_msg_id)
                    raise error_event_to_exception(event)
                if not event.get("retryable") and code not in _KNOWN_CODES:
                    raise error_event_to_exception(event)  # a newer server's terminal error: session over
            return False
        if kind not in _TURN_TYPES:
            return False
        if kind == SNAPSHOT:
            return True  # the conversation was rebuilt: ``text`` may have jumped
        if kind in (ACCEPTED, DUPLICATE):
            return bool(event["client_msg_id"] == self.client_msg_id)
        if kind == STARTED:
            continues = event.get("continues")
            return bool(event["in_reply_to"] == self.message_id or continues in self.response_ids)
        return bool(event["response_id"] in self.response_ids or event["response_id"] == self.response_id)

    # ------------------------------------------------------------ requests

    async def cancel(self) -> None:
        """Stop the reply; iteration goes on to its ``response.completed`` (``finish_reason`` cancelled)."""
        if self.done:
            return
        self._cancel_wanted = True
        rid = self.response_id
        if rid is not None:
            await self._client.cancel(rid)
        # not started yet: the cancel is sent the moment response.started names the reply

    async def feedback(
        self, rating: Rating, *, comment: str | None = None, tags: list[str] | None = None
    ) -> FeedbackRecorded:
        """Rate the reply (+1/-1 or "up"/"down"); returns once the server logged it."""
        rid = self.response_id
        if rid is None:
            raise RuntimeError("the reply has not started yet; rate it once it has")
        await self._client.feedback(rid, rating, comment=comment, tags=tags)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.idle_timeout
        try:
            async with asyncio.timeout_at(deadline):
                async for event in self._client.events():
                    kind = event["type"]
                    if kind == RECORDED and event["response_id"] == rid:
                        model = to_model(event)
                        assert isinstance(model, FeedbackRecorded)
                        return model
                    ref = event.get("ref") or {}
                    mine = ref.get("type") == FEEDBACK and ref.get("response_id") == rid
                    if kind == ERROR and (mine or (not ref and not event.get("retryable"))):
                        raise error_event_to_exception(event)  # (a refusal may come without a ref)
        except ParleyClosed as exc:
            raise exc.error from exc
        except TimeoutError:
            raise ResponseTimeout("idle", self.idle_timeout, self.client_msg_id or "") from None
        raise exc_closed()


def exc_closed() -> ParleyClosed:
    """The connection was closed by this client while a turn was waiting."""
    return ParleyClosed(None, "closed by the client")
