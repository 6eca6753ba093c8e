"""The embedded default store: everything in this process, gone when it exits.

It has the same semantics as ``RedisStore`` (seq, trimming, TTL, leases,
idempotency) so one test suite holds both to the contract. Every method runs
without awaiting in the middle, which on one event loop makes each atomic.
"""

from __future__ import annotations

import functools
import json
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from parley.protocol import with_seq
from parley.protocol.errors import SessionNotFound

from .fanout import Fanout, Subscriber
from .keys import HISTORY_MAX_TURNS, LOG_MAX_LEN, SESSION_TTL_MS
from .outage import StoreHealth
from .store import (
    AcceptResult,
    CallRecord,
    CallsOutcome,
    CancelOutcome,
    Continuation,
    DeltaOutcome,
    DeltaWrite,
    LeaseOutcome,
    LogEntry,
    SessionRecord,
    Snapshot,
    ToolRun,
    WebhookClaim,
    fill_response_id,
)


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(slots=True)
class _Session:
    tenant: str
    user: str
    token_hash: str
    expires_ms: int
    seq: int = 0
    log: deque[LogEntry] = field(default_factory=deque)
    history: list[dict[str, Any]] = field(default_factory=list)
    msgids: dict[str, tuple[int, str, str]] = field(default_factory=dict)
    responses: dict[str, str] = field(default_factory=dict)
    feedback: dict[str, dict[str, Any]] = field(default_factory=dict)
    active: str | None = None
    lease: int = 0
    cancel: str | None = None
    partial: list[str] = field(default_factory=list)
    calls: dict[str, _Call] = field(default_factory=dict)  # tool calls by call_id (keys.CALLS)
    wait: _Wait | None = None  # the response waiting for tool results, if one does


@dataclass(slots=True)
class _Call:
    response_id: str
    kind: str  # "client", "server", "approval"
    spec: str
    state: str = "w"  # w waiting for the client, q queued to run, r run started, d done (result at seq)
    seq: int = 0


@dataclass(slots=True)
class _Wait:
    response_id: str
    left: int
    deadline_ms: int
    continuation: Continuation
    call_ids: list[str]


class MemoryStore:
    """In-process ``SessionStore``."""

    def __init__(
        self,
        *,
        log_max_len: int = LOG_MAX_LEN,
        session_ttl_ms: int = SESSION_TTL_MS,
        history_max_turns: int = HISTORY_MAX_TURNS,
    ) -> None:
        self.instance_id = uuid.uuid4().hex[:12]
        self.fanout = Fanout()
        self.health = StoreHealth("session store", "memory")  # never unreachable: nothing to report
        self.log_max_len = log_max_len
        self.session_ttl_ms = session_ttl_ms
        self.history_max_turns = history_max_turns
        self._sessions: dict[str, _Session] = {}
        self._cancel_callbacks: list[Callable[[str, str], None]] = []

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._sessions.clear()

    async def ping(self) -> None:
        return None

    def _get(self, session_id: str) -> _Session | None:
        s = self._sessions.get(session_id)
        if s is not None and s.expires_ms <= _now_ms():
            del self._sessions[session_id]
            return None
        return s

    def _touch(self, s: _Session) -> None:
        s.expires_ms = _now_ms() + self.session_ttl_ms

    def _append(self, session_id: str, s: _Session, body: str) -> LogEntry:
        s.seq += 1
        entry = LogEntry(s.seq, with_seq(s.seq, body))
        s.log.append(entry)
        if len(s.log) > self.log_max_len:
            s.log.popleft()
        return entry

    def _push_turn(self, s: _Session, turn: dict[str, Any]) -> None:
        s.history.append(turn)
        del s.history[: -self.history_max_turns]

    async def create_session(self, session_id: str, tenant: str, user: str, token_hash: str) -> None:
        if len(self._sessions) % 1024 == 0:  # amortized sweep of expired sessions
            now = _now_ms()
            for sid in [sid for sid, s in self._sessions.items() if s.expires_ms <= now]:
                del self._sessions[sid]
        self._sessions[session_id] = _Session(tenant, user, token_hash, _now_ms() + self.session_ttl_ms)

    async def get_session(self, session_id: str) -> SessionRecord | None:
        s = self._get(session_id)
        if s is None:
            return None
        return SessionRecord(session_id, s.tenant, s.user, s.token_hash, s.seq, s.active)

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
    ) -> AcceptResult:
        s = self._get(session_id)
        if s is None:  # expired: readers still tailing it must hear so
            self.fanout.lose(session_id)
            raise SessionNotFound("no such session (or it was lost)")
        dup = s.msgids.get(client_msg_id)
        if dup is not None:
            return AcceptResult("duplicate", duplicate_seq=dup[0], message_id=dup[1], response_id=dup[2])
        if s.active is not None:
            if s.lease > now_ms:
                return AcceptResult("busy", response_id=s.active, lease_deadline_ms=s.lease)
            return AcceptResult("stale", response_id=s.active)
        if s.wait is not None:
            return AcceptResult(
                "waiting", response_id=s.wait.response_id, lease_deadline_ms=s.wait.deadline_ms
            )
        accepted = self._append(session_id, s, accepted_body)
        started = self._append(session_id, s, started_body)
        s.msgids[client_msg_id] = (accepted.seq, message_id, response_id)
        s.active, s.lease, s.cancel = response_id, now_ms + lease_ms, None
        s.responses[response_id] = "running"
        s.partial = []
        self._push_turn(s, {"role": "user", "id": message_id, "content": content})
        self._touch(s)
        entries = [accepted, started]
        self.fanout.publish(session_id, entries)
        return AcceptResult(
            "accepted",
            entries,
            message_id=message_id,
            response_id=response_id,
            history=[dict(t) for t in s.history],
        )

    async def append_deltas(self, writes: Sequence[DeltaWrite]) -> list[DeltaOutcome]:
        out: list[DeltaOutcome] = []
        for w in writes:
            s = self._get(w.session_id)
            if s is None:
                self.fanout.lose(w.session_id)
                out.append("gone")
            elif s.active != w.response_id:
                out.append("gone")
            elif s.cancel == w.response_id:
                out.append("cancel")
            else:
                s.partial.append(w.text)
                entry = self._append(w.session_id, s, w.body)
                self.fanout.publish(w.session_id, [entry])
                out.append(entry)
        return out

    async def renew(self, leases: Sequence[tuple[str, str]], deadline_ms: int) -> list[LeaseOutcome]:
        return [self._renew(sid, rid, deadline_ms) for sid, rid in leases]

    def _renew(self, session_id: str, response_id: str, deadline_ms: int) -> LeaseOutcome:
        s = self._get(session_id)
        if s is None:
            self.fanout.lose(session_id)
            return "gone"
        if s.active != response_id:
            return "gone"
        if s.cancel == response_id:
            return "cancel"
        s.lease = deadline_ms
        return "ok"

    async def finish(
        self,
        session_id: str,
        response_id: str,
        *,
        body: str,
        finish_reason: str,
        expired_before: int | None = None,
    ) -> LogEntry | None:
        s = self._get(session_id)
        if s is None:
            self.fanout.lose(session_id)
            return None
        if s.active != response_id:
            return None
        if expired_before is not None and s.lease > expired_before:
            return None
        self._push_turn(
            s,
            {
                "role": "assistant",
                "id": response_id,
                "content": "".join(s.partial),
                "finish_reason": finish_reason,
            },
        )
        s.active, s.cancel, s.partial = None, None, []
        s.responses[response_id] = finish_reason
        entry = self._append(session_id, s, body)
        self._touch(s)
        self.fanout.publish(session_id, [entry])
        return entry

    async def expired_leases(self, now_ms: int, limit: int = 100) -> list[tuple[str, str]]:
        found = [
            (sid, s.active) for sid, s in self._sessions.items() if s.active is not None and s.lease <= now_ms
        ]
        return found[:limit]

    async def request_cancel(self, session_id: str, response_id: str | None) -> tuple[CancelOutcome, str]:
        s = self._get(session_id)
        if s is None:
            return "unknown", response_id or ""
        if s.wait is not None and response_id in (None, s.wait.response_id):
            return "waiting", s.wait.response_id
        rid = response_id or s.active
        if rid is None:
            return "idle", ""
        if s.active == rid:
            s.cancel = rid
            for cb in self._cancel_callbacks:
                cb(session_id, rid)
            return "cancelling", rid
        if rid in s.responses:
            return "finished", rid
        return "unknown", rid

    async def record_feedback(
        self, session_id: str, response_id: str, *, feedback: dict[str, Any], body: str
    ) -> LogEntry | None:
        s = self._get(session_id)
        if s is None or response_id not in s.responses:
            return None
        s.feedback[response_id] = feedback
        entry = self._append(session_id, s, body)
        self._touch(s)
        self.fanout.publish(session_id, [entry])
        return entry

    async def feedback(self, session_id: str) -> dict[str, dict[str, Any]]:
        s = self._get(session_id)
        return dict(s.feedback) if s else {}

    async def list_sessions(self, since_ms: int, offset: int = 0, limit: int = 1000) -> list[str]:
        now = _now_ms()
        active = sorted(
            (s.expires_ms - self.session_ttl_ms, sid)  # last touch: create, accept, finish, feedback
            for sid, s in self._sessions.items()
            if s.expires_ms > now and s.expires_ms - self.session_ttl_ms >= since_ms
        )
        return [sid for _, sid in active[offset : offset + limit]]

    async def read(self, session_id: str, after_seq: int, limit: int) -> list[LogEntry]:
        s = self._get(session_id)
        if s is None or not s.log:
            return []
        first = s.log[0].seq
        start = max(after_seq + 1 - first, 0)
        return [s.log[i] for i in range(start, min(start + limit, len(s.log)))]

    async def snapshot(self, session_id: str) -> Snapshot:
        s = self._get(session_id)
        if s is None:
            return Snapshot(0, [], None)
        in_flight = None
        if s.active is not None:
            in_flight = {"role": "assistant", "id": s.active, "content": "".join(s.partial)}
        return Snapshot(s.seq, [dict(t) for t in s.history], in_flight)

    async def history(self, session_id: str) -> list[dict[str, Any]]:
        s = self._get(session_id)
        return [dict(t) for t in s.history] if s else []

    async def subscribe(self, session_id: str, max_pending: int = 4096) -> Subscriber:
        return self.fanout.subscribe(session_id, max_pending)

    def unsubscribe(self, sub: Subscriber) -> None:
        self.fanout.unsubscribe(sub)

    def on_cancel(self, callback: Callable[[str, str], None]) -> None:
        self._cancel_callbacks.append(callback)

    # ------------------------------------------------------------ tool calls (store.ToolCallStore)

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
        s = self._get(session_id)
        if s is None:
            self.fanout.lose(session_id)
            return CallsOutcome("gone")
        if s.active != response_id:
            return CallsOutcome("gone")
        if s.cancel == response_id:
            return CallsOutcome("cancel")
        entries = [self._append(session_id, s, b) for b in call_bodies]
        left = 0
        for c in calls:
            queued = c.kind == "server"
            left += not queued
            s.calls[c.call_id] = _Call(response_id, c.kind, c.spec, "q" if queued else "w")
        self._push_turn(s, {"content": "".join(s.partial), **json.loads(turn)})
        s.active, s.cancel, s.partial = None, None, []
        s.responses[response_id] = "tool_calls"
        entries.append(self._append(session_id, s, body))
        s.wait = _Wait(response_id, left, wait_deadline_ms, continuation, [c.call_id for c in calls])
        self._touch(s)
        if left == 0:
            return self._continue(session_id, s, now_ms, lease_ms, entries)
        self.fanout.publish(session_id, entries)
        return CallsOutcome("ended", entries, response_id=response_id)

    def _continue(
        self, session_id: str, s: _Session, now_ms: int, lease_ms: int, entries: list[LogEntry]
    ) -> CallsOutcome:
        """Every answer is in: the continuation becomes the active response, with a lease."""
        wait = s.wait
        assert wait is not None
        cont = wait.continuation
        entries.append(self._append(session_id, s, cont.started_body))
        s.wait = None
        s.active, s.lease, s.cancel, s.partial = cont.response_id, now_ms + lease_ms, None, []
        s.responses[cont.response_id] = "running"
        runs = [ToolRun(cid, s.calls[cid].spec) for cid in wait.call_ids if s.calls[cid].state == "q"]
        self.fanout.publish(session_id, entries)
        return CallsOutcome(
            "continue",
            entries,
            response_id=cont.response_id,
            continues=wait.response_id,
            context=cont.context,
            history=[dict(t) for t in s.history],
            runs=runs,
        )

    async def answer_call(
        self,
        session_id: str,
        call_id: str,
        *,
        mode: str,
        body: str,
        turn: str,
        now_ms: int,
        lease_ms: int,
        runner: str = "",
    ) -> CallsOutcome:
        s = self._get(session_id)
        if s is None:
            self.fanout.lose(session_id)
            return CallsOutcome("gone")
        call = s.calls.get(call_id)
        if call is None:
            return CallsOutcome("unknown")
        rid = call.response_id
        waiting = s.wait is not None and s.wait.response_id == rid
        if mode == "server":
            if call.state == "d":
                return CallsOutcome("duplicate", response_id=rid, accepted_seq=call.seq)
            if s.cancel == runner:
                return CallsOutcome("cancel", response_id=rid)
            if call.kind == "client" or call.state != "r" or s.active != runner:
                return CallsOutcome("gone", response_id=rid)
        elif mode == "result":
            if call.state == "d":
                return CallsOutcome("duplicate", response_id=rid, accepted_seq=call.seq)
            if call.kind != "client":
                return CallsOutcome("closed", response_id=rid)
            if not waiting:
                return CallsOutcome("closed", response_id=rid)
        else:
            if call.kind != "approval" or not waiting:
                return CallsOutcome("closed", response_id=rid)
            if call.state != "w":
                return CallsOutcome("same", response_id=rid)
        entries: list[LogEntry] = []
        if mode == "approve":
            call.state = "q"
        else:
            entry = self._append(session_id, s, fill_response_id(body, rid))
            entries.append(entry)
            call.state, call.seq = "d", entry.seq
            self._push_turn(s, json.loads(fill_response_id(turn, rid)))
        self._touch(s)
        if mode != "server" and s.wait is not None:
            s.wait.left -= 1
            if s.wait.left <= 0:
                return self._continue(session_id, s, now_ms, lease_ms, entries)
        self.fanout.publish(session_id, entries)
        return CallsOutcome("answered", entries, response_id=rid)

    async def start_run(
        self, session_id: str, runner: str, call_id: str
    ) -> Literal["ok", "done", "gone", "cancel"]:
        s = self._get(session_id)
        if s is None or s.active != runner:
            return "gone"
        if s.cancel == runner:
            return "cancel"
        call = s.calls.get(call_id)
        if call is None or call.state != "q":
            return "done"
        call.state = "r"
        return "ok"

    async def end_wait(
        self,
        session_id: str,
        response_id: str,
        *,
        body: str,
        finish_reason: str,
        expired_before: int | None = None,
    ) -> list[LogEntry] | None:
        s = self._get(session_id)
        if s is None:
            self.fanout.lose(session_id)
            return None
        wait = s.wait
        if wait is None or wait.response_id != response_id:
            return None
        if expired_before is not None and wait.deadline_ms > expired_before:
            return None
        cont = wait.continuation
        entries = [
            self._append(session_id, s, cont.started_body),
            self._append(session_id, s, fill_response_id(body, cont.response_id)),
        ]
        self._push_turn(
            s, {"role": "assistant", "id": cont.response_id, "content": "", "finish_reason": finish_reason}
        )
        s.responses[cont.response_id] = finish_reason
        s.wait = None
        self._touch(s)
        self.fanout.publish(session_id, entries)
        return entries

    async def expired_waits(self, now_ms: int, limit: int = 100) -> list[tuple[str, str]]:
        found = [
            (sid, s.wait.response_id)
            for sid, s in self._sessions.items()
            if s.wait is not None and s.wait.deadline_ms <= now_ms
        ]
        return found[:limit]

    # ------------------------------------------------------------ webhook deliveries

    @functools.cached_property
    def _webhooks(self) -> _WebhookRecords:
        return _WebhookRecords()

    async def webhook_create(
        self, delivery_id: str, fields: Mapping[str, str], *, due_ms: int, ttl_ms: int
    ) -> bool:
        wh = self._webhooks
        if wh.get(delivery_id) is not None:
            return False
        wh.records[delivery_id] = (dict(fields), _now_ms() + ttl_ms)
        wh.due[delivery_id] = due_ms
        return True

    async def webhook_get(self, delivery_id: str) -> dict[str, str] | None:
        record = self._webhooks.get(delivery_id)
        return dict(record) if record is not None else None

    async def webhook_arm(
        self, delivery_id: str, fields: Mapping[str, str], *, due_ms: int, from_state: str
    ) -> bool:
        wh = self._webhooks
        record = wh.get(delivery_id)
        if record is None or record.get("state") != from_state:
            return False
        record.update(fields)
        wh.due[delivery_id] = due_ms
        return True

    async def webhook_claim(self, now_ms: int, lease_ms: int, limit: int) -> list[WebhookClaim]:
        wh = self._webhooks
        fence = now_ms + lease_ms
        claimed: list[WebhookClaim] = []
        for delivery_id, due in sorted(wh.due.items(), key=lambda item: item[1]):
            if due > now_ms or len(claimed) >= limit:
                break
            record = wh.get(delivery_id)
            if record is None:
                continue
            wh.due[delivery_id] = fence
            claimed.append(WebhookClaim(delivery_id, fence, dict(record)))
        return claimed

    async def webhook_settle(
        self, delivery_id: str, fields: Mapping[str, str], *, due_ms: int | None, fence: int
    ) -> bool:
        wh = self._webhooks
        if wh.due.get(delivery_id) != fence:
            return False
        record = wh.get(delivery_id)
        if record is None:
            return False
        record.update(fields)
        if due_ms is None:
            del wh.due[delivery_id]
        else:
            wh.due[delivery_id] = due_ms
        return True


class _WebhookRecords:
    """The memory store's delivery records (with their expiry) and their schedule (id -> due ms)."""

    def __init__(self) -> None:
        self.records: dict[str, tuple[dict[str, str], int]] = {}
        self.due: dict[str, int] = {}

    def get(self, delivery_id: str) -> dict[str, str] | None:
        """The live record, or None (an expired one is dropped, with its schedule)."""
        entry = self.records.get(delivery_id)
        if entry is None:
            return None
        if entry[1] <= _now_ms():
            del self.records[delivery_id]
            self.due.pop(delivery_id, None)
            return None
        return entry[0]
