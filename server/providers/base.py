"""The one contract between Parley and any model: a stream of provider events.

Providers raise only ``protocol.errors.ParleyError`` subclasses (for example
``UpstreamUnavailable``, ``UpstreamTimeout``, ``RateLimited``, ``PolicyRefusal``);
nothing provider-specific (payloads, status texts) crosses this boundary, so model
churn never reaches clients.

One response is a stream of events, in this order::

    ReasoningDelta*                 the model thinking (any time before the answer; may be absent)
    TextDelta*                      visible text (may be absent when the model only calls tools)
    (ToolCallDelta+ ToolCall)*      each call: its arguments streamed, then the complete call
    UsageReport?                    token counts, when the upstream reports them
    Finish                          "tool_calls" exactly when at least one ToolCall was yielded

A ``ToolCall`` always follows every ``ToolCallDelta`` with its ``index``; its
``arguments`` are the concatenated deltas parsed as a JSON object (arguments that
do not parse raise ``SchemaValidationFailed``, see ``parse_arguments``). Whether the
arguments match the tool's schema is the core's check, not the provider's.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, Union

from parley.protocol.errors import SchemaValidationFailed
from parley.protocol.tools import NamedToolChoice, ToolChoice, ToolSpec

__all__ = [
    "ChatMessage",
    "Finish",
    "ModelProvider",
    "ModelRequest",
    "NamedToolChoice",
    "Profile",
    "ProviderEvent",
    "ReasoningDelta",
    "TextDelta",
    "ToolCall",
    "ToolCallDelta",
    "ToolChoice",
    "ToolSpec",
    "UsageReport",
    "output_text",
    "parse_arguments",
    "tool_result_message",
]


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A complete call the model made: an event, and part of an assistant message in history.

    ``call_id`` is unique within one response (providers make one up when the
    upstream sends none); the core may replace it with its own id before logging,
    as long as history uses the same id for the call and its result.
    """

    call_id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One conversation message. ``ChatMessage(role, content)`` is still all plain text needs.

    An assistant message may carry ``tool_calls`` (``content`` is then the text the
    model wrote besides them, often ``""``); a ``tool`` message is the result of the
    call ``tool_call_id``, its ``content`` the output as text (``tool_result_message``).
    """

    role: Literal["system", "user", "assistant", "tool"]
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None


def output_text(output: Any) -> str:
    """A tool's output as the text a model reads: strings as they are, anything else as compact JSON."""
    if isinstance(output, str):
        return output
    return json.dumps(output, ensure_ascii=False, separators=(",", ":"))


def tool_result_message(call_id: str, output: Any, is_error: bool = False) -> ChatMessage:
    """The history message for one result; a failed call reads ``Error: ...`` so the model can tell."""
    text = output_text(output)
    return ChatMessage("tool", f"Error: {text}" if is_error else text, tool_call_id=call_id)


def parse_arguments(name: str, text: str) -> dict[str, Any]:
    """A call's streamed arguments as a JSON object; ``""`` is ``{}`` (a call with no arguments).

    Anything else that is not a JSON object is the model's mistake, reported as
    ``SchemaValidationFailed`` (wire code ``schema_validation_failed``), never as a call.
    """
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise SchemaValidationFailed(
            f"the model's arguments for tool {name!r} are not valid JSON ({exc.msg} at character {exc.pos})"
        ) from None
    if not isinstance(value, dict):
        raise SchemaValidationFailed(f"the model's arguments for tool {name!r} are not a JSON object")
    return value


@dataclass(frozen=True, slots=True)
class Profile:
    """A server-side model configuration that clients pick by name, never by raw model."""

    name: str = "default"
    version: str = "1"
    provider: str = "echo"  # "echo" or "openai"
    model: str = "echo"
    system_prompt: str = ""
    params: dict[str, Any] = field(default_factory=dict)  # temperature, max_tokens, ...
    context_tokens: int = 8000  # upstream budget for the conversation (whitespace tokens)
    tools: tuple[str, ...] = ()  # server tools by dotted path, "package.module:attribute"
    reasoning: Literal["stream", "hide"] = "hide"  # whether clients see the model's reasoning deltas
    webhook_url: str | None = None  # where HTTP jobs of this profile POST their result (docs/http.md)

    @property
    def label(self) -> str:
        """What ``response.started.profile`` shows: name and version, so changes are traceable."""
        return f"{self.name}@{self.version}"


@dataclass(frozen=True, slots=True)
class ModelRequest:
    messages: list[ChatMessage]
    profile: Profile
    trace_id: str
    response_format: dict[str, Any] | None = None  # {"type":"json_schema","name":..,"schema":{..}}
    tools: tuple[ToolSpec, ...] = ()  # every tool the model may call this turn (server and client)
    tool_choice: ToolChoice | None = None  # None: the provider's default ("auto" when there are tools)


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    """A piece of the model's reasoning: never part of the answer, but proof the model is alive."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of call ``index``'s arguments; ``call_id`` and ``name`` are repeated on every piece."""

    index: int
    call_id: str
    name: str
    arguments_delta: str


@dataclass(frozen=True, slots=True)
class UsageReport:
    input_tokens: int
    output_tokens: int
    reasoning_tokens: int | None = None  # part of output_tokens; None when the upstream does not say


@dataclass(frozen=True, slots=True)
class Finish:
    reason: Literal["stop", "length", "content_filter", "tool_calls"]


ProviderEvent = Union[TextDelta, ReasoningDelta, ToolCallDelta, ToolCall, UsageReport, Finish]


class ModelProvider(Protocol):
    """Streams one response. Cancellation is ``aclose()`` on the iterator (or task cancel)."""

    name: str

    def stream(self, request: ModelRequest) -> AsyncIterator[ProviderEvent]: ...

    async def aclose(self) -> None: ...
