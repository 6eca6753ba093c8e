"""Every v1 message as a pydantic model; the wire contract lives here and only here.

Client messages are validated strictly (no type coercion: ``"1"`` is not ``1``)
but tolerate unknown fields, so a newer client can talk to an older server.

The models are the protocol registry: a client message subclasses ``ClientModel``,
a server event ``ServerModel`` and says whether it is ``logged`` (appended to the
session log, carries ``seq``) or ephemeral. ``REGISTRY`` collects them as they are
defined, and every list (the unions, ``CLIENT_TYPES``, ``LOGGED_TYPES``, the AsyncAPI
document, the clients' checks) is derived from it. A new message type is one model
here; nothing else lists types.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .errors import ErrorCode
from .schema_budget import check_schema
from .tools import ToolChoice, ToolList

#: The only protocol version this package speaks, in hello and as the subprotocol.
PROTOCOL_VERSION = "parley.v1"

# Bounds that keep numbers and strings sane whatever the frame size is.
MAX_SEQ = 2**53 - 1  # largest integer a JavaScript client can hold exactly
MAX_ID_LENGTH = 128  # ids are opaque tokens, never documents
MAX_TAGS = 16

Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)]
Seq = Annotated[int, Field(ge=0, le=MAX_SEQ)]
Scalar = Union[str, int, float, bool, None]


class _Client(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class _Server(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True, slots=True)
class MessageKind:
    """What a message type is: who sends it and whether the session log keeps it."""

    type: str  # the wire ``type``
    model: type[BaseModel]
    direction: Literal["client", "server"]
    logged: bool  # appended to the log (carries ``seq``, replayed on resume); else ephemeral


#: Every message type, in definition order: the one list all others are derived from.
REGISTRY: dict[str, MessageKind] = {}


def _wire_type(model: type[BaseModel]) -> str:
    """A message model's wire ``type`` (its ``Literal`` annotation)."""
    return str(get_args(model.model_fields["type"].annotation)[0])


class ClientModel(_Client):
    """A message a client sends (never logged as it is: its effects are)."""

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        name = _wire_type(cls)
        REGISTRY[name] = MessageKind(name, cls, "client", logged=False)


class ServerModel(_Server):
    """An event the server sends; ``logged`` says whether the session log keeps it."""

    logged: ClassVar[bool] = False

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        name = _wire_type(cls)
        REGISTRY[name] = MessageKind(name, cls, "server", logged=cls.logged)


# --------------------------------------------------------------------- client


class Hello(ClientModel):
    """Opens a new session, or resumes one when ``session_id`` is given."""

    type: Literal["hello"]
    protocol: str
    token: str | None = None
    session_id: Id | None = None
    resume_token: Id | None = None
    last_seq: Seq | None = None
    metadata: dict[str, Scalar] = Field(default_factory=dict, max_length=32)
    #: client tools this connection can run, for every turn it sends (``protocol/tools.py``)
    tools: ToolList | None = None


class JsonSchemaFormat(_Client):
    type: Literal["json_schema"]
    name: Annotated[str, Field(max_length=64)] = "output"
    json_schema: dict[str, Any] = Field(alias="schema")

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True, populate_by_name=True)

    @field_validator("json_schema")
    @classmethod
    def _bounded(cls, schema: dict[str, Any]) -> dict[str, Any]:
        """A schema whose smallest answer is huge is refused here, before any work (docs/security.md)."""
        check_schema(schema)
        return schema


class TextFormat(_Client):
    type: Literal["text"]


ResponseFormat = Annotated[Union[TextFormat, JsonSchemaFormat], Field(discriminator="type")]


class MessageSend(ClientModel):
    """A user turn; ``client_msg_id`` is the idempotency key within the session."""

    type: Literal["message.send"]
    client_msg_id: Id
    content: Annotated[str, Field(min_length=1)]
    response_format: ResponseFormat | None = None
    profile: Id | None = None
    metadata: dict[str, Scalar] = Field(default_factory=dict, max_length=32)
    #: client tools for this turn only, besides ``hello.tools`` and the profile's server tools
    tools: ToolList | None = None
    tool_choice: ToolChoice | None = None


class ToolResult(ClientModel):
    """The client's answer to one ``response.tool_call`` (a denial is ``is_error: true``)."""

    type: Literal["tool.result"]
    call_id: Id
    output: Any  # a string or any JSON value; the frame size bounds it
    is_error: bool = False


class ToolApprove(ClientModel):
    """The person's decision on a server tool call that asked for approval (``tool.approval_requested``)."""

    type: Literal["tool.approve"]
    call_id: Id
    approved: bool


class ResponseCancel(ClientModel):
    """Stops the running response; idempotent."""

    type: Literal["response.cancel"]
    response_id: Id | None = None


class Feedback(ClientModel):
    """Rates a response; the last rating for a response wins."""

    type: Literal["feedback"]
    response_id: Id
    rating: Literal["up", "down"]
    comment: Annotated[str, Field(max_length=4000)] | None = None
    tags: Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=MAX_TAGS)] = Field(
        default_factory=list
    )


class Ping(ClientModel):
    """Application-level liveness probe; answered by ``pong``."""

    type: Literal["ping"]
    nonce: Annotated[str, Field(max_length=MAX_ID_LENGTH)] | None = None


# --------------------------------------------------------------------- server


class Usage(_Server):
    input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int | None = None  # part of output_tokens, when the model reports it


class ErrorInfo(_Server):
    """The error carried inside a terminal ``response.completed``."""

    code: ErrorCode
    message: str
    retryable: bool
    retry_after_ms: int | None = None


class SessionReady(ServerModel):
    """Ephemeral: the session is open; logged events with ``seq > last_seq`` follow."""

    type: Literal["session.ready"] = "session.ready"
    session_id: str
    resume_token: str
    protocol: str = PROTOCOL_VERSION
    heartbeat_interval_ms: int
    resumed: bool
    recovered: bool
    last_seq: int


class TurnToolCall(_Server):
    """A call an assistant turn made (``response.tool_call`` as history keeps it)."""

    call_id: str
    name: str
    arguments: dict[str, Any]
    server: bool = False


class Turn(_Server):
    """One finished or in-flight turn of the conversation, as a snapshot shows it.

    An assistant turn that called tools lists them in ``tool_calls``; each result is a
    ``tool`` turn (``id`` = ``call_id``; ``content`` the output as text, ``output`` as sent).
    """

    role: Literal["user", "assistant", "tool"]
    id: str
    content: str
    finish_reason: str | None = None
    tool_calls: list[TurnToolCall] | None = None
    response_id: str | None = None  # tool turns: the response whose call this answers
    name: str | None = None  # tool turns: the tool's name
    output: Any = None  # tool turns: the output as the client (or server tool) gave it
    is_error: bool | None = None  # tool turns


class SessionSnapshot(ServerModel):
    """Ephemeral: the whole conversation up to ``last_seq``, sent when replay is impossible."""

    type: Literal["session.snapshot"] = "session.snapshot"
    last_seq: int
    turns: list[Turn]
    in_flight: Turn | None = None


class MessageAccepted(ServerModel):
    logged: ClassVar[bool] = True
    type: Literal["message.accepted"] = "message.accepted"
    client_msg_id: str
    message_id: str
    content: str


class MessageDuplicate(ServerModel):
    """Ephemeral: this ``client_msg_id`` was already accepted at ``accepted_seq``; nothing new starts."""

    type: Literal["message.duplicate"] = "message.duplicate"
    client_msg_id: str
    message_id: str
    response_id: str
    accepted_seq: int


class ResponseStarted(ServerModel):
    logged: ClassVar[bool] = True
    type: Literal["response.started"] = "response.started"
    response_id: str
    in_reply_to: str
    profile: str
    trace_id: str
    continues: str | None = None  # the response whose tool results this one continues from


class ResponseDelta(ServerModel):
    logged: ClassVar[bool] = True
    type: Literal["response.delta"] = "response.delta"
    response_id: str
    text: str
    ts: float | None = None  # append time, epoch ms (only with PARLEY_EVENT_TIMESTAMPS): delivery latency


class ResponseReasoningDelta(ServerModel):
    """The model's reasoning, streamed only when the profile says ``reasoning = "stream"``."""

    logged: ClassVar[bool] = True
    type: Literal["response.reasoning.delta"] = "response.reasoning.delta"
    response_id: str
    text: str


class ResponseToolCallDelta(ServerModel):
    """A piece of a call's arguments (JSON text, cut anywhere) while the model writes it."""

    logged: ClassVar[bool] = True
    type: Literal["response.tool_call.delta"] = "response.tool_call.delta"
    response_id: str
    call_id: str
    name: str
    arguments_delta: str


class ResponseToolCall(ServerModel):
    """A complete call, its arguments valid against the tool's schema; ``server``: Parley runs it."""

    logged: ClassVar[bool] = True
    type: Literal["response.tool_call"] = "response.tool_call"
    response_id: str
    call_id: str
    name: str
    arguments: dict[str, Any]
    server: bool = False


class ToolApprovalRequested(ServerModel):
    """A server tool call that runs only after the client's ``tool.approve``."""

    logged: ClassVar[bool] = True
    type: Literal["tool.approval_requested"] = "tool.approval_requested"
    response_id: str
    call_id: str
    name: str
    arguments: dict[str, Any]


class ToolResultAccepted(ServerModel):
    """A call's result, logged exactly once per ``call_id`` (client and server tools alike)."""

    logged: ClassVar[bool] = True
    type: Literal["tool.result.accepted"] = "tool.result.accepted"
    response_id: str
    call_id: str
    output: Any = None
    is_error: bool = False


class ToolResultDuplicate(ServerModel):
    """Ephemeral: this ``call_id``'s result was already accepted at ``accepted_seq``; nothing changed."""

    type: Literal["tool.result.duplicate"] = "tool.result.duplicate"
    call_id: str
    response_id: str
    accepted_seq: int


FinishReason = Literal["stop", "length", "cancelled", "interrupted", "content_filter", "error", "tool_calls"]


class ResponseCompleted(ServerModel):
    logged: ClassVar[bool] = True
    type: Literal["response.completed"] = "response.completed"
    response_id: str
    finish_reason: FinishReason
    output: Any = None
    usage: Usage = Field(default_factory=Usage)
    ttft_ms: int | None = None
    latency_ms: int | None = None
    error: ErrorInfo | None = None


class FeedbackRecorded(ServerModel):
    logged: ClassVar[bool] = True
    type: Literal["feedback.recorded"] = "feedback.recorded"
    response_id: str
    rating: Literal["up", "down"]


class Heartbeat(ServerModel):
    type: Literal["heartbeat"] = "heartbeat"
    ts: int
    last_seq: int


class Pong(ServerModel):
    type: Literal["pong"] = "pong"
    nonce: str | None = None


class Error(ServerModel):
    type: Literal["error"] = "error"
    code: ErrorCode
    message: str
    retryable: bool
    retry_after_ms: int | None = None
    ref: dict[str, Any] | None = None


# --------------------------------------------------------------------- derived from the registry


def models(direction: Literal["client", "server"], logged: bool | None = None) -> tuple[type[BaseModel], ...]:
    """The registered models of one direction (and, given ``logged``, of that kind), in definition order."""
    return tuple(
        k.model
        for k in REGISTRY.values()
        if k.direction == direction and (logged is None or k.logged == logged)
    )


CLIENT_MODELS = models("client")
SERVER_MODELS = models("server")
CLIENT_TYPES = tuple(_wire_type(m) for m in CLIENT_MODELS)
SERVER_TYPES = tuple(_wire_type(m) for m in SERVER_MODELS)
LOGGED_TYPES = frozenset(k.type for k in REGISTRY.values() if k.logged)

ClientMessage = Annotated[Union[CLIENT_MODELS], Field(discriminator="type")]  # type: ignore[valid-type]
LoggedEvent = Union[models("server", logged=True)]  # type: ignore[valid-type]
EphemeralEvent = Union[models("server", logged=False)]  # type: ignore[valid-type]
ServerEvent = Annotated[Union[SERVER_MODELS], Field(discriminator="type")]  # type: ignore[valid-type]
