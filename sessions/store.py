"""The ``SessionStore`` contract: one interface, a memory and a Redis backend.

A store owns a session's event log and the state derived with it, and performs
every multi-step change atomically (one Lua script in Redis), so two instances
can never both start a response, log after a terminal event, or lose a seq.
Stores know nothing of WebSockets: readers subscribe through ``fanout``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol

from .fanout import Fanout, Subscriber
from .outage import StoreHealth


class LogEntry(NamedTuple):
    """One logged event: its seq and its JSON text (which carries the seq too)."""

    seq: int
    data: str


@dataclass(slots=True)
class SessionRecord:
    session_id: str
    tenant: str
    user: str
    token_hash: str
    last_seq: int
    active_response: str | None


@dataclass(slots=True)
class AcceptResult:
    """Outcome of ``accept``: a new turn, a repeat of an old one, or a refusal.

    ``stale`` means another response is marked active but its lease expired: the
    caller should end it as interrupted (``finish(..., expired_before=now)``) and retry.
    ``busy`` carries that response's lease deadline: unless renewed (its process is alive),
    the turn can be accepted from then on.
    """

    status: Literal["accepted", "duplicate", "busy", "stale"]
    entries: list[LogEntry] = field(default_factory=list)
    duplicate_seq: int = 0
    message_id: str = ""
    response_id: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)  # accepted: the turns the model sees
    lease_deadline_ms: int = 0  # busy: when the running response's lease lapses unless renewed


@dataclass(slots=True)
class DeltaWrite:
    session_id: str
    response_id: str
    text: str
    body: str  # encoded response.delta without seq


#: ``append_deltas`` result per write: the logged entry, or why the response may not log any more
#: ("gone" also when the store lost the session: the store has then told its readers, ``Fanout.lose``).
DeltaOutcome = LogEntry | Literal["gone", "cancel"]


@dataclass(slots=True)
class Snapshot:
    last_seq: int
    turns: list[dict[str, Any]]
    in_flight: dict[str, Any] | None


CancelOutcome = Literal["cancelling", "finished", "idle", "unknown"]
LeaseOutcome = Literal["ok", "cancel", "gone"]


# ------------------------------------------------------------------ webhook deliveries
# Records of server/webhooks.py, kept by the store so deliveries survive a restart (on Redis) and
# any instance can make the next attempt. A record is a flat map of strings; the store reads one
# field only, ``state``, to arm a waiting delivery exactly once.


class WebhookClaim(NamedTuple):
    """A due delivery taken by one worker: ``fence`` is the claim's deadline, needed to settle it."""

    delivery_id: str
    fence: int
    fields: dict[str, str]


class WebhookStore(Protocol):
    """The webhook part of ``SessionStore`` (both backends; tests/test_webhooks.py holds them to it)."""

    async def webhook_create(
        self, delivery_id: str, fields: Mapping[str, str], *, due_ms: int, ttl_ms: int
    ) -> bool:
        """Store a new record due at ``due_ms``, kept ``ttl_ms``; False (nothing changed) if it exists."""
        ...

    async def webhook_get(self, delivery_id: str) -> dict[str, str] | None: ...

    async def webhook_arm(
        self, delivery_id: str, fields: Mapping[str, str], *, due_ms: int, from_state: str
    ) -> bool:
        """If the record's ``state`` is ``from_state``: update ``fields`` and make it due at ``due_ms``."""
        ...

    async def webhook_claim(self, now_ms: int, lease_ms: int, limit: int) -> list[WebhookClaim]:
        """Atomically take up to ``limit`` records due at ``now_ms``: each becomes due again only at
        ``now_ms + lease_ms`` (its fence), so no other worker takes it while this one works on it."""
        ...

    async def webhook_settle(
        self, delivery_id: str, fields: Mapping[str, str], *, due_ms: int | None, fence: int
    ) -> bool:
        """Write a claimed record's outcome and next due time (None: never again), if the claim
        ``fence`` still holds; False (nothing written) when it was lost or the record expired."""
        ...


class SessionStore(WebhookStore, Protocol):
    """What the server needs from session storage; both backends pass one test suite.

    A write to a session whose state is gone (expired, or lost by Redis) announces the loss
    through ``fanout.lose`` before it returns "gone" / None; ``accept`` raises ``SessionNotFound``.
    """

    instance_id: str
    fanout: Fanout
    health: StoreHealth

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> None: ...

    async def create_session(self, session_id: str, tenant: str, user: str, token_hash: str) -> None: ...
    async def get_session(self, session_id: str) -> SessionRecord | None: ...

    async def accept(
        self,
        session_id: str,
        *,
        client_msg_id: str,
        message_id: str,
        response_id: str,
        content: str,
        accepted_body: str,
        started_body: str,
        now_ms: int,
        lease_ms: int,
    ) -> AcceptResult: ...

    async def append_deltas(self, writes: Sequence[DeltaWrite]) -> list[DeltaOutcome]: ...
    async def renew(self, leases: Sequence[tuple[str, str]], deadline_ms: int) -> list[LeaseOutcome]:
        """Extend the leases of running responses ``(session_id, response_id)``, all in one round trip."""

    async def finish(
        self,
        session_id: str,
        response_id: str,
        *,
        body: str,
        finish_reason: str,
        expired_before: int | None = None,
    ) -> LogEntry | None: ...
    async def expired_leases(self, now_ms: int, limit: int = 100) -> list[tuple[str, str]]: ...
    async def request_cancel(self, session_id: str, response_id: str | None) -> tuple[CancelOutcome, str]: ...
    async def record_feedback(
        self, session_id: str, response_id: str, *, feedback: dict[str, Any], body: str
    ) -> LogEntry | None: ...
    async def feedback(self, session_id: str) -> dict[str, dict[str, Any]]: ...
    async def list_sessions(self, since_ms: int, offset: int = 0, limit: int = 1000) -> list[str]:
        """Ids of sessions last active at or after ``since_ms``, least recently active first.

        Creating a session and recording feedback count as activity (other writes may too).
        An id may name a session that expired meanwhile: ``get_session`` then says None.
        """
        ...

    async def read(self, session_id: str, after_seq: int, limit: int) -> list[LogEntry]: ...
    async def snapshot(self, session_id: str) -> Snapshot: ...
    async def history(self, session_id: str) -> list[dict[str, Any]]: ...

    async def subscribe(self, session_id: str, max_pending: int = 4096) -> Subscriber:
        """Register a live reader; once this returns, every later append reaches it."""
        ...

    def unsubscribe(self, sub: Subscriber) -> None: ...
    def on_cancel(self, callback: Callable[[str, str], None]) -> None:
        """Called with (session_id, response_id) when any instance asks to cancel."""
        ...
