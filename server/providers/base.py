"""The one contract between Parley and any model: a stream of provider events.

Providers raise only ``protocol.errors.ParleyError`` subclasses (for example
``UpstreamUnavailable``, ``UpstreamTimeout``, ``RateLimited``, ``PolicyRefusal``);
nothing provider-specific (payloads, status texts) crosses this boundary, so model
churn never reaches clients.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, Union


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Literal["system", "user", "assistant"]
    content: str


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


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class UsageReport:
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class Finish:
    reason: Literal["stop", "length", "content_filter"]


ProviderEvent = Union[TextDelta, UsageReport, Finish]


class ModelProvider(Protocol):
    """Streams one response. Cancellation is ``aclose()`` on the iterator (or task cancel)."""

    name: str

    def stream(self, request: ModelRequest) -> AsyncIterator[ProviderEvent]: ...

    async def aclose(self) -> None: ...
