"""``Admission``: who is asking (the token, or ``hello.metadata`` with auth off), whether their limits
let them in (an open-connection slot, new sessions), and which session they get (open or resume).

The same on every transport: a WebSocket's ``hello`` and an HTTP request's credentials
end in the same principal, the same ``rate_limited`` refusals and the same session
ownership check. What a refusal *looks like* (a close code, an HTTP status) is the
transport's business; the ``ParleyError`` raised here says what happened.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from parley.protocol import encode
from parley.protocol.errors import ParleyError, RateLimited, SessionNotFound, Unauthorized
from parley.protocol.messages import Hello, SessionReady
from parley.protocol.tools import ToolSpec

from .. import logs
from ..auth import Authenticator, Identity
from ..metrics import Metrics
from ..ratelimit import Limiter, Refusal
from ..service import Principal, SessionService
from ..settings import Settings
from .reader import Opening, SessionReader

log = logging.getLogger("parley.admission")


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


@dataclass(slots=True)
class Ticket:
    """One client's admission: who, the limiter slot it holds, the session it got."""

    conn_id: str = ""  # names its slot in the limiter ("" when limits are off)
    who: Principal | None = None
    identity: Identity | None = None  # the verified token (auth on)
    holds_slot: bool = False  # counted against the user's open connections
    trace_id: str = ""
    session_id: str | None = None
    tools: tuple[ToolSpec, ...] = ()  # hello.tools: the client tools this connection runs
    metadata: dict[str, Any] = field(default_factory=dict)  # hello.metadata (server tools see it)


class Admission:
    """One per process: the authenticator, the limiter and the service, behind one ``admit``."""

    def __init__(
        self,
        service: SessionService,
        settings: Settings,
        metrics: Metrics,
        auth: Authenticator | None = None,
        limiter: Limiter | None = None,
    ) -> None:
        self.service = service
        self.settings = settings
        self.metrics = metrics
        self.auth = auth
        self.limiter = limiter

    def ticket(self) -> Ticket:
        return Ticket(conn_id=uuid.uuid4().hex if self.limiter is not None else "")

    def principal(self, ticket: Ticket, hello: Hello) -> Principal:
        """With auth on, the verified token alone says who this is; ``hello.metadata`` never does."""
        if self.auth is not None:
            ticket.identity = self.auth.verify(hello.token)
            return ticket.identity.principal
        if self.settings.auth_enabled:
            from ..auth import principal_from_token

            return principal_from_token(hello.token, self.settings)
        tenant = hello.metadata.get("tenant_id")
        user = hello.metadata.get("user_id")
        return Principal(
            tenant if isinstance(tenant, str) and tenant else "default",
            user if isinstance(user, str) and user else "anonymous",
        )

    def _refused(self, refusal: Refusal | None, ref: dict[str, Any]) -> None:
        if refusal is not None:
            self.metrics.rate_limited.labels(refusal.kind, refusal.scope).inc()
            raise refusal_error(refusal, ref=ref)

    async def admit(
        self, ticket: Ticket, hello: Hello, reader: SessionReader, traceparent: str | None = None
    ) -> Opening:
        """Identify, take a connection slot, open or resume, and have ``reader`` read from the cursor.

        Raises the ``ParleyError`` that refused it (a slot already taken stays in the ticket:
        ``release`` frees it).
        """
        ticket.trace_id = trace_id_from(hello.metadata, traceparent)
        ticket.tools = hello.tools or ()
        ticket.metadata = dict(hello.metadata)
        logs.bind(trace_id=ticket.trace_id)
        resuming = bool(hello.session_id)
        ref = {"type": "hello"}
        try:
            who = ticket.who = self.principal(ticket, hello)
            if self.limiter is not None:
                self._refused(await self.limiter.open_connection(who, ticket.conn_id), ref)
                ticket.holds_slot = True
            if hello.session_id:
                opened = await self.service.resume(who, hello.session_id, hello.resume_token)
            else:
                if self.limiter is not None:
                    self._refused(await self.limiter.new_session(who), ref)
                opened = await self.service.open(who)
                self.metrics.sessions_created.inc()
            ticket.session_id = opened.session_id
            logs.bind(session_id=opened.session_id)
            after = (hello.last_seq or 0) if opened.resumed else 0
            opening = await reader.open(opened.session_id, after, opened.last_seq, resumed=opened.resumed)
            opening.session = opened
        except ParleyError as exc:
            if isinstance(exc, Unauthorized):
                self.metrics.auth_failures.inc()
            if resuming:
                outcome = "not_found" if isinstance(exc, SessionNotFound) else "refused"
                self.metrics.resumes.labels(outcome).inc()
            raise
        if resuming:
            self.metrics.resumes.labels("replayed" if opening.recovered else "snapshot").inc()
        log.info(
            "session ready",
            extra={
                "fields": {
                    "tenant": who.tenant,
                    "user": who.user,
                    "resumed": opened.resumed,
                    "recovered": opening.recovered,
                    "last_seq": opening.newest,
                }
            },
        )
        return opening

    def ready(self, opening: Opening) -> str:
        """The ``session.ready`` frame announcing an admitted opening."""
        opened = opening.session
        assert opened is not None
        return encode(
            SessionReady(
                session_id=opened.session_id,
                resume_token=opened.resume_token,
                heartbeat_interval_ms=self.settings.heartbeat_interval_ms,
                resumed=opened.resumed,
                recovered=opening.recovered,
                last_seq=opening.newest,
            )
        )

    async def release(self, ticket: Ticket) -> None:
        """Free the ticket's connection slot (the client is gone)."""
        if ticket.holds_slot and self.limiter is not None and ticket.who is not None:
            ticket.holds_slot = False
            try:
                await self.limiter.close_connection(ticket.who, ticket.conn_id)
            except Exception:
                pass

    async def watch_expiry(
        self, ticket: Ticket, alive: Callable[[], bool], expired: Callable[[], Awaitable[None]]
    ) -> None:
        """Run ``expired`` once the ticket's token is no longer valid (while ``alive()``)."""
        assert ticket.identity is not None and self.auth is not None
        interval = self.settings.auth_revalidate_ms / 1000
        while alive():
            remaining = ticket.identity.expires_at + self.auth.leeway - time.time()
            await asyncio.sleep(max(0.0, min(interval, remaining)))
            if not alive():
                return
            if not self.auth.still_valid(ticket.identity):
                self.metrics.auth_failures.inc()
                await expired()
                return
