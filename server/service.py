"""What a connection can ask of a session, independent of the WebSocket that asks.

Each operation validates against the session's owner, performs one atomic store
change, and raises a ``ParleyError`` (mapped 1:1 to a wire error) when refused.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from typing import Any

from parley.protocol import encode
from parley.protocol.errors import (
    Busy,
    InternalError,
    InvalidMessage,
    ParleyError,
    PayloadTooLarge,
    SessionNotFound,
)
from parley.protocol.messages import (
    ErrorInfo,
    FeedbackRecorded,
    MessageAccepted,
    MessageDuplicate,
    ResponseCompleted,
    ResponseStarted,
    ToolResultAccepted,
    ToolResultDuplicate,
)
from parley.protocol.tools import (
    InvalidToolDeclaration,
    ToolChoice,
    ToolSpec,
    check_tool_choice,
    combine_tools,
)
from parley.sessions import AcceptResult, SessionStore
from parley.sessions.store import CallsOutcome

from .generation import Generations, cancelled_wait_event, interrupted_event, now_ms
from .profiles import ProfileSet, build_context, history_messages
from .providers.base import ChatMessage, ModelProvider, ModelRequest, Profile
from .settings import Settings
from .tool_turns import DENIED_OUTPUT, TurnContext, choice_json, tool_turn
from .tools import ServerTools

#: Shortest busy ``retry_after_ms``: a lease about to lapse still takes a round trip to be ended.
BUSY_RETRY_MIN_MS = 100


def new_id(prefix: str) -> str:
    """``<prefix>_`` and 128 random bits in hex, like ``uuid4().hex`` at a quarter of its cost."""
    return f"{prefix}_{os.urandom(16).hex()}"


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
    """The conversation as the model sees it: finished turns (with partial replies, tool calls and
    their results), trimmed to budget."""
    return build_context(profile, history_messages(turns))


class SessionService:
    def __init__(
        self,
        store: SessionStore,
        generations: Generations,
        catalog: ModelCatalog,
        settings: Settings,
        server_tools: ServerTools | None = None,
    ):
        self.store = store
        self.generations = generations
        self.catalog = catalog
        self.settings = settings
        self.server_tools = server_tools or ServerTools({})
        generations.server_tools = self.server_tools
        generations.on_continue = self._continue

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
        tools: tuple[ToolSpec, ...] = (),
        turn_tools: tuple[ToolSpec, ...] = (),
        tool_choice: ToolChoice | None = None,
        tenant: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> MessageDuplicate | None:
        """Log the user turn and start its response; a repeated ``client_msg_id`` starts nothing.

        ``tools`` are the connection's (``hello.tools``), ``turn_tools`` this message's; the
        profile's server tools come first. While a response waits for tool results the session
        is busy (answer or cancel that response first).
        """
        ref = {"type": "message.send", "client_msg_id": client_msg_id}
        if len(msg_content) > self.settings.max_message_chars:
            raise PayloadTooLarge(
                f"message longer than {self.settings.max_message_chars} characters",
                ref=ref,
            )
        prof, provider = self.catalog.resolve(profile)
        try:
            toolbox = combine_tools(self.server_tools.specs(prof.name), tools, turn_tools)
            check_tool_choice(tool_choice, toolbox)
        except InvalidToolDeclaration as exc:
            raise InvalidMessage(str(exc), ref=ref) from None
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
            if result.status == "waiting":
                raise Busy(
                    f"response {result.response_id} is waiting for tool results: answer its calls "
                    "(tool.result, tool.approve) or cancel it (response.cancel)",
                    retry_after_ms=self._busy_for(result),
                    ref=ref,
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
        turn = TurnContext(
            message_id=message_id,
            profile=prof.name,
            trace_id=trace_id,
            tools=[t.model_dump() for t in (*tools, *turn_tools)],
            tool_choice=choice_json(tool_choice),
            response_format=response_format,
            tenant=tenant,
            metadata=dict(metadata or {}),
        )
        request = ModelRequest(
            messages=build_messages(prof, result.history),
            profile=prof,
            trace_id=trace_id,
            response_format=response_format,
            tools=toolbox,
            tool_choice=tool_choice,
        )
        self.generations.launch(session_id, response_id, request, provider, turn=turn)
        return None

    # ------------------------------------------------------------ tool calls (issue 17)

    def _continue(self, session_id: str, out: CallsOutcome) -> None:
        """Start the continuation the store just made active (here: this instance took the last answer)."""
        try:
            turn = TurnContext.from_json(out.context)
            prof, provider = self.catalog.resolve(turn.profile)
            toolbox = combine_tools(self.server_tools.specs(prof.name), turn.client_tools())
        except (ParleyError, InvalidToolDeclaration, ValueError, TypeError, KeyError):
            # the profile (or a server tool) is gone after a restart with other settings: say so
            self._end_continuation(session_id, out.response_id)
            return

        def rebuild(tool_turns: list[dict[str, Any]]) -> ModelRequest:
            return ModelRequest(
                messages=build_messages(prof, [*out.history, *tool_turns]),
                profile=prof,
                trace_id=turn.trace_id,
                response_format=turn.response_format,
                tools=toolbox,
                tool_choice=turn.choice(),
            )

        self.generations.launch(
            session_id, out.response_id, rebuild([]), provider, turn=turn, runs=out.runs, rebuild=rebuild
        )

    def _end_continuation(self, session_id: str, response_id: str) -> None:
        """A continuation that cannot run ends at once with ``internal`` (its lease would only lapse)."""
        body = encode(
            ResponseCompleted(
                response_id=response_id,
                finish_reason="error",
                error=ErrorInfo(
                    code=InternalError.code,
                    message="the turn's profile or tools are no longer configured on this server",
                    retryable=False,
                ),
            )
        )
        self.generations.spawn(self.store.finish(session_id, response_id, body=body, finish_reason="error"))

    async def tool_result(
        self, session_id: str, call_id: str, output: Any, is_error: bool
    ) -> ToolResultDuplicate | None:
        """Log one client tool result; the last one of a response starts its continuation here."""
        body = encode(ToolResultAccepted(response_id="", call_id=call_id, output=output, is_error=is_error))
        out = await self._answer(session_id, call_id, "result", body, tool_turn(call_id, output, is_error))
        ref = {"type": "tool.result", "call_id": call_id}
        if out.status == "duplicate":
            return ToolResultDuplicate(
                call_id=call_id, response_id=out.response_id, accepted_seq=out.accepted_seq
            )
        if out.status == "closed":
            raise InvalidMessage(
                f"response {out.response_id} takes no result for this call: its wait ended (cancelled or "
                "timed out), or it is a server tool's call",
                ref={**ref, "response_id": out.response_id},
            )
        self._answered(session_id, out, ref)
        return None

    async def tool_approve(self, session_id: str, call_id: str, approved: bool) -> None:
        """Approve (the call runs when the continuation starts) or deny (logged as its error result)."""
        body = encode(
            ToolResultAccepted(response_id="", call_id=call_id, output=DENIED_OUTPUT, is_error=True)
        )
        mode = "approve" if approved else "deny"
        out = await self._answer(session_id, call_id, mode, body, tool_turn(call_id, DENIED_OUTPUT, True))
        ref = {"type": "tool.approve", "call_id": call_id}
        if out.status == "same":
            raise InvalidMessage("this call was already decided", ref={**ref, "response_id": out.response_id})
        if out.status in ("closed", "duplicate"):
            raise InvalidMessage(
                f"response {out.response_id} has no call waiting for approval with this id (not a server "
                "tool that asks, or its wait ended)",
                ref={**ref, "response_id": out.response_id},
            )
        self._answered(session_id, out, ref)

    async def _answer(self, session_id: str, call_id: str, mode: str, body: str, turn: str) -> CallsOutcome:
        return await self.store.answer_call(
            session_id,
            call_id,
            mode=mode,  # type: ignore[arg-type]
            body=body,
            turn=turn,
            now_ms=now_ms(),
            lease_ms=self.settings.lease_ms,
        )

    def _answered(self, session_id: str, out: CallsOutcome, ref: dict[str, Any]) -> None:
        if out.status == "unknown":
            raise InvalidMessage("no such tool call in this session", ref=ref)
        if out.status == "gone":
            raise SessionNotFound("no such session (or it was lost)", ref=ref)
        if out.status == "continue":
            self._continue(session_id, out)

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

        A response waiting for tool results (named, or with none named) ends at once: its
        continuation is logged as started and completed with ``cancelled``, and its calls close.

        ``invalid_message`` (not retryable) with ``ref.type == "response.cancel"``: no response is
        running, or the one named has already finished (its ``response.completed`` is in the log).
        Repeating a cancel changes nothing either way (idempotent); only the answer says why.
        """
        for _ in range(2):  # a second look only if the wait ended (or continued) meanwhile
            outcome, rid = await self.store.request_cancel(session_id, response_id)
            if outcome != "waiting":
                break
            # a response waiting for tool results: its continuation is logged as started and cancelled
            body = encode(cancelled_wait_event())
            if await self.store.end_wait(session_id, rid, body=body, finish_reason="cancelled") is not None:
                return "cancelling"  # ended at once: its continuation is logged as cancelled
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
        # "waiting" only if the wait ended twice under us (it continued, and that is being cancelled)
        return "cancelling" if outcome == "waiting" else outcome

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
