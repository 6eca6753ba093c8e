"""``Dispatcher``: a client's frames after hello, each to the handler its ``type`` names.

Transport-neutral in what it does, used by the WebSocket for every text frame (the HTTP
transport calls the same handler table per request, without a frame budget or strikes).
It applies the connection's frame budget (``frames_per_minute``), parses
(``parse_client``: one structured error per bad frame), looks the type up in the handler
table (``server/core/handlers.py``) and answers every ``ParleyError`` on the wire;
``abuse_strikes`` ``rate_limited`` answers within a minute close the connection (4029).
A new client message type is a model in ``protocol/messages.py`` plus one entry in the
table: nothing here changes.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from parley.protocol import parse_client
from parley.protocol.errors import CloseCode, InvalidMessage, ParleyError, RateLimited

from ..metrics import Metrics
from ..service import Principal

#: The window in which ``abuse_strikes`` rate_limited answers close the connection (4029).
STRIKE_WINDOW_S = 60.0


class Caller(Protocol):
    """What a handler may know of and do to the client that sent the message."""

    session_id: str | None
    trace_id: str

    @property
    def who(self) -> Principal | None: ...

    async def reply(self, text: str) -> None:
        """Send one ephemeral frame to this client, in order with its session's events."""
        ...

    async def send_error(self, exc: ParleyError) -> None: ...

    async def close(self, code: int, reason: str = "") -> None: ...


#: A handler: the caller and the parsed message; raises a ``ParleyError`` to refuse.
Handler = Callable[[Caller, Any], Awaitable[None]]


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


class Dispatcher:
    """One client's frames -> handlers, under its frame budget and strike count."""

    __slots__ = ("_budget", "_strikes", "caller", "handlers", "max_strikes", "metrics")

    def __init__(
        self,
        handlers: Mapping[str, Handler],
        caller: Caller,
        *,
        frames_per_minute: int,
        abuse_strikes: int,
        metrics: Metrics,
    ) -> None:
        self.handlers = handlers
        self.caller = caller
        self.max_strikes = abuse_strikes
        self.metrics = metrics
        self._budget = FrameBudget(frames_per_minute) if frames_per_minute else None
        self._strikes: list[float] | None = None  # rate_limited answers in the strike window (rare)

    async def dispatch(self, text: str | None) -> bool:
        """Handle one client frame (None: a binary one); False when the connection is to close."""
        try:
            if self._budget is not None and (wait := self._budget.take()):
                self.metrics.rate_limited.labels("frames", "connection").inc()
                raise RateLimited(
                    f"connection limit reached: {self._budget.limit} frames per minute",
                    retry_after_ms=wait,
                )
            if text is None:
                raise InvalidMessage("frames must be text (JSON)")
            msg = parse_client(text)
            handler = self.handlers.get(msg.type)
            if handler is None:  # a known type this transport does not take
                raise InvalidMessage(f"{msg.type} is not accepted here", ref={"type": msg.type})
            await handler(self.caller, msg)
        except ParleyError as exc:
            await self.caller.send_error(exc)
            if isinstance(exc, RateLimited) and self._strike():
                await self.caller.close(CloseCode.POLICY_VIOLATION, "rate limits exceeded again and again")
                return False
        return True

    def _strike(self) -> bool:
        """Count a rate_limited answer; True once there were ``abuse_strikes`` within the window."""
        now = time.monotonic()
        self._strikes = [t for t in self._strikes or () if now - t < STRIKE_WINDOW_S]
        self._strikes.append(now)
        return len(self._strikes) >= self.max_strikes
