"""What a connection can ask of a session, independent of the WebSocket that asks.

Each operation validates against the session's owner, performs one atomic store
change, and raises a ``ParleyError`` (mapped 1:1 to a wire error) when refused.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

from parley.protocol import encode
from parley.protocol.errors import Busy, InvalidMessage, PayloadTooLarge, SessionNotFound
from parley.protocol.messages import FeedbackRecorded, MessageAccepted, MessageDuplicate, ResponseStarted
from parley.sessions import AcceptResult, SessionStore

from .generation import Generations, interrupted_event, now_ms
from .profiles import ProfileSet, build_context
from .providers.base import ChatMessage, ModelProvider, ModelRequest, Profile
from .settings import Settings

#: Shortest busy ``retry_after_ms``: a lease about to lapse still takes a round trip to be ended.
BUSY_RETRY_MIN_MS = 100


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def hash_token(token: str) -> str:
    """Stores keep only a digest of the resume token: a leaked store dump cannot resume sessions."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is connected: sessions belong to a (tenant, user) pair."""

    tenant: str
    user: str


@dataclass(slots=True)
class OpenedSession:
    session_id: str
    resume_token: str
    resumed: bool
    last_seq: int


class ModelCatalog:
    """Profiles by name and the provider instance each one uses."""

    def __init__(self, profiles: ProfileSet, providers: dict[str, ModelProvider]) -> None:
        self.profiles = profiles
        self.providers = providers

    def resolve(self, name: str | None) -> tuple[Profile, ModelProvider]:
        profile = self.profiles.resolve(name)  # unknown name: InvalidMessage
        return profile, self.providers[profile.provider]


def build_messages(profile: Profile, turns: list[dict[str, Any]]) -> list[ChatMessage]:
    """The conversation as the model sees it: finished turns (with partial replies), trimmed to budget."""
    return build_context(profile, [ChatMessage(t["role"], t["content"]) for t in turns if t.get("content")])


class SessionService:
    def __init__(
        self, store: SessionStore, generations: Generations, catalog: ModelCatalog, settings: Settings
    ):
        self.store = store
        self.generations = generations
        self.catalog = catalog
        self.settings = settings

    async def open(self, who: Principal) -> OpenedSession:
        session_id = new_id("s")
        token = secrets.token_urlsafe(24)
        await self.store.create_session(session_id, who.tenant, who.user, hash_token(token))
        return OpenedSession(session_id, token, resumed=False, last_seq=0)

    async def resume(self, who: Principal, session_id: str, resume_token: str | None) -> OpenedSession:
        """Another tenant's session, a wrong token and a missing session are indistinguishable."""
        rec = await self.store.get_session(session_id)
        presented = hash_token(resume_token or "")
        ok = (
            rec is not None
            and hmac.compare_digest(rec.token_hash, presented)
            and hmac.compare_digest(rec.tenant, who.tenant)
            and hmac.compare_digest(rec.user, who.user)
        )
        if not ok or rec is None:
            raise SessionNotFound("no such session (or not yours)")
        return OpenedSession(session_id, resume_token or "", resumed=True, last_seq=rec.last_seq)

    async def send(
        self,
        session_id: str,
        msg_content: str,
        client_msg_id: str,
        *,
        profile: str | None,
        response_format: dict[str, Any] | None,
        trace_id: str,
    ) -> MessageDuplicate | None:
        """Log the user turn and start its response; a repeated ``client_msg_id`` starts nothing."""
        if len(msg_content) > self.settings.max_message_chars:
            raise PayloadTooLarge(
                f"message longer than {self.settings.max_message_chars} characters",
                ref={"type": "message.send", "client_msg_id": client_msg_id},
            )
        prof, provider = self.catalog.resolve(profile)
        message_id, response_id = new_id("m"), new_id("r")
        accepted = encode(
            MessageAccepted(client_msg_id=client_msg_id, message_id=message_id, content=msg_content)
        )
        started = encode(
            ResponseStarted(
                response_id=response_id, in_reply_to=message_id, profile=prof.label, trace_id=trace_id
            )
        )
        self.generations.expect(session_id, response_id)
        ref = {"type": "message.send", "client_msg_id": client_msg_id}
        try:
            result = await self._accept(
                session_id, client_msg_id, message_id, response_id, msg_content, accepted, started
            )
            if result.status != "accepted":
                self.generations.forget(session_id, response_id)
            if result.status == "duplicate":
                return MessageDuplicate(
                    client_msg_id=client_msg_id,
                    message_id=result.message_id,
                    response_id=result.response_id,
                    accepted_seq=result.duplicate_seq,
                )
            if result.status != "accepted":
                raise Busy(retry_after_ms=self._busy_for(result), ref=ref)
        except SessionNotFound as exc:  # expired, or lost by the store: like any unknown session
            self.generations.forget(session_id, response_id)
            exc.ref = exc.ref or ref
            raise
        except BaseException:
            self.generations.forget(session_id, response_id)
            raise
        request = ModelRequest(
            messages=build_messages(prof, result.history),
            profile=prof,
            trace_id=trace_id,
            response_format=response_format,
        )
        self.generations.launch(session_id, response_id, request, provider)
        return None

    def _busy_for(self, result: AcceptResult) -> int:
        """``retry_after_ms`` for busy: until the running response's lease lapses unless renewed.

        A live response renews its lease (the next try may be busy again, with a new hint); one
        whose process died is ended as interrupted by the first ``message.send`` after the lapse,
        so the wait is bounded by the lease (``PARLEY_LEASE_MS``), never open-ended.
        """
        left = result.lease_deadline_ms - now_ms() if result.lease_deadline_ms else self.settings.lease_ms
        return max(BUSY_RETRY_MIN_MS, min(left, self.settings.lease_ms))

    async def _accept(
        self,
        session_id: str,
        client_msg_id: str,
        message_id: str,
        response_id: str,
        content: str,
        accepted: str,
        started: str,
    ) -> AcceptResult:
        for _ in range(2):  # a second try only after ending a stale (crashed) response
            now = now_ms()
            result = await self.store.accept(
                session_id,
                client_msg_id=client_msg_id,
                message_id=message_id,
                response_id=response_id,
                content=content,
                accepted_body=accepted,
                started_body=started,
                now_ms=now,
                lease_ms=self.settings.lease_ms,
            )
            if result.status == "stale":
                await self.store.finish(
                    session_id,
                    result.response_id,
                    body=encode(interrupted_event(result.response_id)),
                    finish_reason="interrupted",
                    expired_before=now,
                )
                continue
            break
        return result

    async def cancel(self, session_id: str, response_id: str | None, *, finished_ok: bool = False) -> str:
        """Ask the running response to stop; a cancel that finds nothing running is told so.

        ``invalid_message`` (not retryable) with ``ref.type == "response.cancel"``: no response is
        running, or the one named has already finished (its ``response.completed`` is in the log).
        Repeating a cancel changes nothing either way (idempotent); only the answer says why.
        """
        outcome, rid = await self.store.request_cancel(session_id, response_id)
        ref: dict[str, Any] = {"type": "response.cancel"}
        if rid:
            ref["response_id"] = rid
        if outcome == "unknown":
            raise InvalidMessage("no such response in this session", ref=ref)
        if outcome == "idle":
            raise InvalidMessage("nothing to cancel: no response is running", ref=ref)
        if outcome == "finished":
            if finished_ok:  # HTTP's cancel is idempotent: a finished job is an answer, not an error
                return outcome
            raise InvalidMessage("nothing to cancel: that response has already finished", ref=ref)
        return outcome

    async def feedback(
        self, session_id: str, response_id: str, rating: str, comment: str | None, tags: list[str]
    ) -> int:
        """Log the rating; the seq of its ``feedback.recorded``."""
        body = encode(FeedbackRecorded(response_id=response_id, rating=rating))  # type: ignore[arg-type]
        record = {"rating": rating, "comment": comment, "tags": tags, "ts": now_ms()}
        entry = await self.store.record_feedback(session_id, response_id, feedback=record, body=body)
        if entry is None:
            raise InvalidMessage(
                "no such response in this session", ref={"type": "feedback", "response_id": response_id}
            )
        return entry.seq

    # ------------------------------------------------------------ HTTP callers (issue 18)

    async def prove(
        self, session_id: str, *, who: Principal | None, resume_token: str | None
    ) -> tuple[Principal, OpenedSession]:
        """An HTTP call's claim on a session: the resume token (anonymous callers), or the verified
        identity (``who``, auth on) owning it, a token sent along must match too. Answers whose
        session it is; unknown, foreign and wrong-token sessions are alike ``SessionNotFound``."""
        rec = await self.store.get_session(session_id)
        ok = rec is not None and (who is not None or resume_token is not None)
        if rec is not None and resume_token is not None:
            ok = ok and hmac.compare_digest(rec.token_hash, hash_token(resume_token))
        if rec is not None and who is not None:
            ok = (
                ok and hmac.compare_digest(rec.tenant, who.tenant) and hmac.compare_digest(rec.user, who.user)
            )
        if not ok or rec is None:
            raise SessionNotFound("no such session (or not yours)")
        owner = Principal(rec.tenant, rec.user)
        return owner, OpenedSession(session_id, resume_token or "", resumed=True, last_seq=rec.last_seq)
