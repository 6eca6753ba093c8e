"""Every v1 message as a pydantic model; the wire contract lives here and only here.

Client messages are validated strictly (no type coercion: ``"1"`` is not ``1``)
but tolerate unknown fields, so a newer client can talk to an older server.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .errors import ErrorCode
from .schema_budget import check_schema

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


# --------------------------------------------------------------------- client


class Hello(_Client):
    """Opens a new session, or resumes one when ``session_id`` is given."""

    type: Literal["hello"]
    protocol: str
    token: str | None = None
    session_id: Id | None = None
    resume_token: Id | None = None
    last_seq: Seq | None = None
    metadata: dict[str, Scalar] = Field(default_factory=dict, max_length=32)


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


class MessageSend(_Client):
    """A user turn; ``client_msg_id`` is the idempotency key within the session."""

    type: Literal["message.send"]
    client_msg_id: Id
    content: Annotated[str, Field(min_length=1)]
    response_format: ResponseFormat | None = None
    profile: Id | None = None
    metadata: dict[str, Scalar] = Field(default_factory=dict, max_length=32)


class ResponseCancel(_Client):
    """Stops the running response; idempotent."""

    type: Literal["response.cancel"]
    response_id: Id | None = None


class Feedback(_Client):
    """Rates a response; the last rating for a response wins."""

    type: Literal["feedback"]
    response_id: Id
    rating: Literal["up", "down"]
    comment: Annotated[str, Field(max_length=4000)] | None = None
    tags: Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=MAX_TAGS)] = Field(
        default_factory=list
    )


class Ping(_Client):
    """Application-level liveness probe; answered by ``pong``."""

    type: Literal["ping"]
    nonce: Annotated[str, Field(max_length=MAX_ID_LENGTH)] | None = None


ClientMessage = Annotated[
    Union[Hello, MessageSend, ResponseCancel, Feedback, Ping], Field(discriminator="type")
]

CLIENT_TYPES = ("hello", "message.send", "response.cancel", "feedback", "ping")

# --------------------------------------------------------------------- server


class Usage(_Server):
    input_tokens: int = 0
    output_tokens: int = 0


class ErrorInfo(_Server):
    """The error carried inside a terminal ``response.completed``."""

    code: ErrorCode
    message: str
    retryable: bool
    retry_after_ms: int | None = None


class SessionReady(_Server):
    """Ephemeral: the session is open; logged events with ``seq > last_seq`` follow."""

    type: Literal["session.ready"] = "session.ready"
    session_id: str
    resume_token: str
    protocol: str = PROTOCOL_VERSION
    heartbeat_interval_ms: int
    resumed: bool
    recovered: bool
    last_seq: int


class Turn(_Server):
    """One finished or in-flight turn of the conversation, as a snapshot shows it."""

    role: Literal["user", "assistant"]
    id: str
    content: str
    finish_reason: str | None = None


class SessionSnapshot(_Server):
    """Ephemeral: the whole conversation up to ``last_seq``, sent when replay is impossible."""

    type: Literal["session.snapshot"] = "session.snapshot"
    last_seq: int
    turns: list[Turn]
    in_flight: Turn | None = None


class MessageAccepted(_Server):
    type: Literal["message.accepted"] = "message.accepted"
    client_msg_id: str
    message_id: str
    content: str


class MessageDuplicate(_Server):
    """Ephemeral: this ``client_msg_id`` was already accepted at ``accepted_seq``; nothing new starts."""

    type: Literal["message.duplicate"] = "message.duplicate"
    client_msg_id: str
    message_id: str
    response_id: str
    accepted_seq: int


class ResponseStarted(_Server):
    type: Literal["response.started"] = "response.started"
    response_id: str
    in_reply_to: str
    profile: str
    trace_id: str


class ResponseDelta(_Server):
    type: Literal["response.delta"] = "response.delta"
    response_id: str
    text: str
    ts: float | None = None  # append time, epoch ms (only with PARLEY_EVENT_TIMESTAMPS): delivery latency


FinishReason = Literal["stop", "length", "cancelled", "interrupted", "content_filter", "error"]


class ResponseCompleted(_Server):
    type: Literal["response.completed"] = "response.completed"
    response_id: str
    finish_reason: FinishReason
    output: Any = None
    usage: Usage = Field(default_factory=Usage)
    ttft_ms: int | None = None
    latency_ms: int | None = None
    error: ErrorInfo | None = None


class FeedbackRecorded(_Server):
    type: Literal["feedback.recorded"] = "feedback.recorded"
    response_id: str
    rating: Literal["up", "down"]


class Heartbeat(_Server):
    type: Literal["heartbeat"] = "heartbeat"
    ts: int
    last_seq: int


class Pong(_Server):
    type: Literal["pong"] = "pong"
    nonce: str | None = None


class Error(_Server):
    type: Literal["error"] = "error"
    code: ErrorCode
    message: str
    retryable: bool
    retry_after_ms: int | None = None
    ref: dict[str, Any] | None = None


LoggedEvent = Union[MessageAccepted, ResponseStarted, ResponseDelta, ResponseCompleted, FeedbackRecorded]
EphemeralEvent = Union[SessionReady, SessionSnapshot, MessageDuplicate, Heartbeat, Pong, Error]
ServerEvent = Annotated[Union[LoggedEvent, EphemeralEvent], Field(discriminator="type")]

LOGGED_TYPES = frozenset(
    {"message.accepted", "response.started", "response.delta", "response.completed", "feedback.recorded"}
)
