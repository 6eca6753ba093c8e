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
    the turn can be accepted from then on. ``waiting``: a response waits for tool results
    (``response_id``); ``lease_deadline_ms`` is then when that wait times out.
    """

    status: Literal["accepted", "duplicate", "busy", "stale", "waiting"]
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


#: "waiting": the response named (or, with none named, the session's) waits for tool results;
#: ``end_wait`` ends it.
CancelOutcome = Literal["cancelling", "finished", "idle", "unknown", "waiting"]
LeaseOutcome = Literal["ok", "cancel", "gone"]


# ------------------------------------------------------------------ tool calls (issue 17)
# A response that called tools ends (``end_with_calls``) and the session waits, holding no lease:
# the store alone remembers the calls, who answers each, and the continuation to start. Each answer
# (``answer_call``) is one atomic step; the one that completes the set starts the continuation, so
# two instances racing on the last result start it once. Bodies that must name a response the
# caller cannot know yet carry ``"response_id":""``, which the store fills in (``fill_response_id``).

#: Who answers a call: the client (``tool.result``), the server at once, or the server once approved.
CallKind = Literal["client", "server", "approval"]


@dataclass(frozen=True, slots=True)
class CallRecord:
    call_id: str
    kind: CallKind
    spec: str  # JSON {"name", "arguments"}: returned verbatim to whoever runs a server call


@dataclass(frozen=True, slots=True)
class Continuation:
    """The response that follows a set of tool results, prepared when the calls are made."""

    response_id: str
    started_body: str  # its response.started (continues = the response that called)
    context: str  # opaque JSON: what the caller needs to build the model request again


@dataclass(slots=True)
class ToolRun:
    """A server call the continuation runs before calling the model."""

    call_id: str
    spec: str


@dataclass(slots=True)
class CallsOutcome:
    """``end_with_calls`` / ``answer_call``.

    ``ended`` (calls logged, the session waits), ``continue`` (that was the last answer: the
    continuation ``response_id`` is now active with a lease; run ``runs``, then the model, over
    ``history``), ``answered`` (logged; more answers to come), ``duplicate`` (this call's result was
    logged at ``accepted_seq``), ``same`` (the same approval again: nothing to do), ``unknown`` (no
    such call), ``closed`` (its response no longer waits: cancelled, timed out, or the call is not
    the caller's to answer), ``gone`` (the response is not the active one), ``cancel``.
    """

    status: Literal[
        "ended", "continue", "answered", "duplicate", "same", "unknown", "closed", "gone", "cancel"
    ]
    entries: list[LogEntry] = field(default_factory=list)
    response_id: str = ""  # the call's response (answers), or the continuation (continue)
    continues: str = ""  # continue: the response whose calls were answered
    accepted_seq: int = 0
    context: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)
    runs: list[ToolRun] = field(default_factory=list)


def fill_response_id(body: str, response_id: str) -> str:
    """``body`` with its first ``"response_id":""`` filled in (the Lua scripts do the same)."""
    marker = '"response_id":""'
    i = body.index(marker) + len(marker) - 1
    return body[:i] + response_id + body[i:]


class ToolCallStore(Protocol):
    """The tool-call part of ``SessionStore`` (both backends; tests/test_tool_store.py)."""

    async def end_with_calls(
        self,
        session_id: str,
        response_id: str,
        *,
        call_bodies: Sequence[str],
        calls: Sequence[CallRecord],
        turn: str,
        body: str,
        continuation: Continuation,
        now_ms: int,
        lease_ms: int,
        wait_deadline_ms: int,
    ) -> CallsOutcome:
        """If ``response_id`` is active and not cancelled: log ``call_bodies`` then ``body`` (its
        ``response.completed{tool_calls}``), keep ``turn`` (the assistant turn as JSON, without
        ``content``: the partial text is put first) in history, and either wait for the calls the
        client answers (``ended``) or, with none, start the continuation (``continue``)."""
        ...

    async def answer_call(
        self,
        session_id: str,
        call_id: str,
        *,
        mode: Literal["result", "approve", "deny", "server"],
        body: str,
        turn: str,
        now_ms: int,
        lease_ms: int,
        runner: str = "",
    ) -> CallsOutcome:
        """One answer: a client's result, an approval or a denial (while the call's response waits),
        or a server call's result by the running continuation ``runner``. ``body`` (the
        tool.result.accepted) and ``turn`` (the tool turn for history) have ``"response_id":""``."""
        ...

    async def start_run(
        self, session_id: str, runner: str, call_id: str
    ) -> Literal["ok", "done", "gone", "cancel"]:
        """Mark a queued server call started by the active response ``runner``; "done": it was
        started before (never run a call twice), "gone"/"cancel": ``runner`` may not go on."""
        ...

    async def end_wait(
        self,
        session_id: str,
        response_id: str,
        *,
        body: str,
        finish_reason: str,
        expired_before: int | None = None,
    ) -> list[LogEntry] | None:
        """End the wait of ``response_id`` without results: log its continuation's response.started
        and ``body`` (response.completed, ``"response_id":""``). With ``expired_before``, only if
        the wait timed out by then. None: it no longer waits (a race lost: nothing logged)."""
        ...

    async def expired_waits(self, now_ms: int, limit: int = 100) -> list[tuple[str, str]]:
        """(session_id, response_id) of waits whose deadline is at or before ``now_ms``."""
        ...


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


class SessionStore(WebhookStore, ToolCallStore, Protocol):
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
