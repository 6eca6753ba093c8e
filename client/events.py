"""Wire events as the protocol's pydantic models, tolerant of what a newer server may add.

The models are ``parley.protocol.messages``' own (``ResponseDelta``, ``ResponseCompleted``, ...):
nothing is copied here. Two allowances a client needs and the server-side models do not make:
``seq`` (carried by logged events, tracked by the client) is not a model field, and a newer
server may send fields or types this version does not know: unknown fields are dropped, an
unknown type comes back as an ``UnknownEvent``.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any, Union

from pydantic import BaseModel, TypeAdapter, ValidationError

from parley.protocol.messages import (
    Error,
    Feedback,
    FeedbackRecorded,
    FinishReason,
    Heartbeat,
    Hello,
    MessageAccepted,
    MessageDuplicate,
    MessageSend,
    Ping,
    Pong,
    ResponseCancel,
    ResponseCompleted,
    ResponseDelta,
    ResponseReasoningDelta,
    ResponseStarted,
    ResponseToolCall,
    ResponseToolCallDelta,
    ServerEvent,
    SessionReady,
    SessionSnapshot,
    ToolApprovalRequested,
    ToolApprove,
    ToolResult,
    ToolResultAccepted,
    ToolResultDuplicate,
)

__all__ = [
    "Error",
    "Event",
    "FeedbackRecorded",
    "Heartbeat",
    "MessageAccepted",
    "MessageDuplicate",
    "Pong",
    "ResponseCompleted",
    "ResponseDelta",
    "ResponseReasoningDelta",
    "ResponseStarted",
    "ResponseToolCall",
    "ResponseToolCallDelta",
    "SessionReady",
    "SessionSnapshot",
    "ToolApprovalRequested",
    "ToolResultAccepted",
    "ToolResultDuplicate",
    "UnknownEvent",
    "to_model",
]


@dataclass(frozen=True)
class UnknownEvent:
    """An event this client cannot read as a model (a newer server's type); ``data`` is the raw dict."""

    type: str
    data: dict[str, Any]


#: What a typed iterator yields: one of the protocol's server models, or an ``UnknownEvent``.
Event = Union[
    SessionReady,
    SessionSnapshot,
    MessageAccepted,
    MessageDuplicate,
    ResponseStarted,
    ResponseDelta,
    ResponseCompleted,
    FeedbackRecorded,
    ResponseReasoningDelta,
    ResponseToolCallDelta,
    ResponseToolCall,
    ToolApprovalRequested,
    ToolResultAccepted,
    ToolResultDuplicate,
    Heartbeat,
    Pong,
    Error,
    UnknownEvent,
]

_adapter: TypeAdapter[Any] = TypeAdapter(ServerEvent)


def _models(tp: Any) -> list[type[BaseModel]]:
    """Every model inside a (possibly Annotated, nested) union type: the registry, derived."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    if typing.get_origin(tp) is typing.Annotated:
        return _models(typing.get_args(tp)[0])
    if typing.get_origin(tp) in (Union, types.UnionType):
        return [m for arg in typing.get_args(tp) for m in _models(arg)]
    return []


def type_name(model: type[BaseModel]) -> str:
    """A message's ``type`` on the wire, read from its model's ``Literal``: never a copy."""
    return str(typing.get_args(model.model_fields["type"].annotation)[0])


#: type name -> model, for every server event the protocol defines.
MODEL_OF: dict[str, type[BaseModel]] = {type_name(m): m for m in _models(ServerEvent)}

# The type names the client dispatches on, from the models.
HELLO = type_name(Hello)
SEND = type_name(MessageSend)
CANCEL = type_name(ResponseCancel)
FEEDBACK = type_name(Feedback)
PING = type_name(Ping)
READY = type_name(SessionReady)
SNAPSHOT = type_name(SessionSnapshot)
ACCEPTED = type_name(MessageAccepted)
DUPLICATE = type_name(MessageDuplicate)
STARTED = type_name(ResponseStarted)
DELTA = type_name(ResponseDelta)
COMPLETED = type_name(ResponseCompleted)
RECORDED = type_name(FeedbackRecorded)
HEARTBEAT = type_name(Heartbeat)
ERROR = type_name(Error)

# ------------------------------------------------------------------ tool calls (issue 17)
TOOL_RESULT = type_name(ToolResult)
TOOL_APPROVE = type_name(ToolApprove)
TOOL_CALL_DELTA = type_name(ResponseToolCallDelta)
TOOL_CALL = type_name(ResponseToolCall)
TOOL_APPROVAL_REQUESTED = type_name(ToolApprovalRequested)
TOOL_RESULT_ACCEPTED = type_name(ToolResultAccepted)
TOOL_RESULT_DUPLICATE = type_name(ToolResultDuplicate)
REASONING_DELTA = type_name(ResponseReasoningDelta)
#: ``response.completed.finish_reason`` of a response that waits for client tool results.
TOOL_CALLS_FINISH = "tool_calls"
assert TOOL_CALLS_FINISH in typing.get_args(FinishReason), "the protocol renamed the tool_calls finish"


def to_model(event: dict[str, Any]) -> Any:
    """The protocol model for a server event dict (``seq`` aside), or ``UnknownEvent``."""
    data = {k: v for k, v in event.items() if k != "seq"}
    try:
        return _adapter.validate_python(data)
    except ValidationError:
        pass
    kind = str(data.get("type", ""))
    model = MODEL_OF.get(kind)
    if model is not None:  # a newer server's extra fields: keep what this version knows
        known = {f.alias or name for name, f in model.model_fields.items()}
        try:
            return model.model_validate({k: v for k, v in data.items() if k in known})
        except ValidationError:
            pass
    return UnknownEvent(kind, event)
