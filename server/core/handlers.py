"""What each client message does: the type -> handler table the ``Dispatcher`` looks up.

One method per client message type, named after it; ``table()`` maps every type in
``parley.protocol.messages.CLIENT_TYPES`` to one (a test checks that none is missing).
Handlers speak to the session through ``SessionService`` and answer the caller
through ``Caller.reply``; they know no transport.
"""

from __future__ import annotations

from typing import Any

from parley.protocol import encode
from parley.protocol.errors import InvalidMessage
from parley.protocol.messages import (
    Feedback,
    Hello,
    MessageSend,
    Ping,
    Pong,
    ResponseCancel,
    ToolApprove,
    ToolResult,
)

from ..meter import TokenMeter
from ..metrics import Metrics
from ..ratelimit import Limiter
from ..service import SessionService
from .admission import refusal_error
from .dispatch import Caller, Handler
from .pacer import TurnPacer


class Handlers:
    """One per process: the service, the limiter and the token meter the handlers use."""

    def __init__(
        self,
        service: SessionService,
        metrics: Metrics,
        limiter: Limiter | None,
        meter: TokenMeter,
        *,
        turns_per_tick: int = 0,
    ) -> None:
        self.service = service
        self.metrics = metrics
        self.limiter = limiter
        self.meter = meter
        self.pacer = TurnPacer(turns_per_tick)  # a burst's first tokens do not wait for all of it

    def table(self) -> dict[str, Handler]:
        return {
            "hello": self.hello,
            "message.send": self.message_send,
            "tool.result": self.tool_result,
            "tool.approve": self.tool_approve,
            "response.cancel": self.response_cancel,
            "feedback": self.feedback,
            "ping": self.ping,
        }

    async def hello(self, caller: Caller, msg: Hello) -> None:
        raise InvalidMessage("hello was already received on this connection", ref={"type": "hello"})

    async def message_send(self, caller: Caller, msg: MessageSend) -> None:
        assert caller.session_id is not None
        await self.pacer.slot()
        fmt: dict[str, Any] | None = None
        if msg.response_format is not None and msg.response_format.type == "json_schema":
            fmt = {
                "type": "json_schema",
                "name": msg.response_format.name,
                "schema": msg.response_format.json_schema,
            }
        who = caller.who
        if self.limiter is not None and who is not None:
            await self.meter.settled(caller.session_id)  # the previous response's tokens count first
            refusal = await self.limiter.take_message(who)
            if refusal is not None:
                self.metrics.rate_limited.labels(refusal.kind, refusal.scope).inc()
                raise refusal_error(refusal, ref={"type": "message.send", "client_msg_id": msg.client_msg_id})
        trace = msg.metadata.get("trace_id")
        dup = await self.service.send(
            caller.session_id,
            msg.content,
            msg.client_msg_id,
            profile=msg.profile,
            response_format=fmt,
            trace_id=trace if isinstance(trace, str) and 0 < len(trace) <= 64 else caller.trace_id,
            # a transport without a hello (HTTP) has no connection-wide tools: the message's only
            tools=getattr(caller, "tools", ()),
            turn_tools=msg.tools or (),
            tool_choice=msg.tool_choice,
            tenant=who.tenant if who is not None else None,
            metadata=getattr(caller, "metadata", None),
        )
        if dup is not None:
            await caller.reply(encode(dup))

    async def tool_result(self, caller: Caller, msg: ToolResult) -> None:
        assert caller.session_id is not None
        dup = await self.service.tool_result(caller.session_id, msg.call_id, msg.output, msg.is_error)
        if dup is not None:
            await caller.reply(encode(dup))

    async def tool_approve(self, caller: Caller, msg: ToolApprove) -> None:
        assert caller.session_id is not None
        await self.service.tool_approve(caller.session_id, msg.call_id, msg.approved)

    async def response_cancel(self, caller: Caller, msg: ResponseCancel) -> None:
        assert caller.session_id is not None
        await self.service.cancel(caller.session_id, msg.response_id)

    async def feedback(self, caller: Caller, msg: Feedback) -> None:
        assert caller.session_id is not None
        await self.service.feedback(caller.session_id, msg.response_id, msg.rating, msg.comment, msg.tags)

    async def ping(self, caller: Caller, msg: Ping) -> None:
        await caller.reply(encode(Pong(nonce=msg.nonce)))
