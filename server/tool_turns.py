"""A turn that calls tools: what its continuation needs, and the records the store keeps of its calls.

A response that calls tools ends (``response.completed{finish_reason: "tool_calls"}``) and
the session waits, holding no lease and no task: the store alone remembers the calls and
the continuation to start (``sessions/store.py``, ``ToolCallStore``). Whichever instance
receives the last answer starts that continuation, possibly after a restart of every
instance, so everything it needs to call the model again is in ``TurnContext``, kept by
the store as JSON: the profile by name, the client's tool declarations, the turn's
``tool_choice`` and ``response_format``, the trace id, and who asked.

Rounds are bounded: a model that keeps calling tools gets ``tool_choice = "none"`` from
round ``MAX_TOOL_ROUNDS`` on, so a turn always ends. A turn's ``"required"`` or named
``tool_choice`` holds for its first response only (a continuation that had to call a tool
again would never end).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from parley.protocol import encode
from parley.protocol.messages import ResponseToolCall, ToolApprovalRequested
from parley.protocol.tools import NamedToolChoice, ToolChoice, ToolSpec, parse_tools
from parley.sessions.store import CallKind, CallRecord

from .providers.base import ToolCall, output_text

#: Responses one user turn may chain through tool results before the model must answer in words.
MAX_TOOL_ROUNDS = 16
#: What a client sends (and the model reads) when the person denies a call.
DENIED_OUTPUT = "denied by the user"


def compact(value: Any) -> str:
    """JSON as the store keeps it: no spaces (the ``"response_id":""`` marker is matched literally)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class TurnContext:
    """What any instance needs to call the model again for this turn (kept as JSON by the store)."""

    message_id: str  # the user message the whole turn answers (every response's ``in_reply_to``)
    profile: str  # the profile's name (its tools and reasoning mode come with it)
    trace_id: str
    tools: list[dict[str, Any]] = field(default_factory=list)  # the client's declarations
    tool_choice: Any = None  # JSON form: "auto" | "none" | "required" | {"name": X} | None
    response_format: dict[str, Any] | None = None
    tenant: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)  # the connection's hello metadata
    round: int = 0

    def to_json(self) -> str:
        return compact(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> TurnContext:
        return cls(**json.loads(text))

    def client_tools(self) -> tuple[ToolSpec, ...]:
        return parse_tools(self.tools)

    def choice(self) -> ToolChoice | None:
        """The ``tool_choice`` of this round's request."""
        if self.round >= MAX_TOOL_ROUNDS:
            return "none"
        if isinstance(self.tool_choice, dict):
            return NamedToolChoice(**self.tool_choice)
        return self.tool_choice  # type: ignore[no-any-return]

    def next_round(self) -> TurnContext:
        """The context of the continuation: a forced choice is not forced again."""
        forced = self.tool_choice == "required" or isinstance(self.tool_choice, dict)
        return replace(self, round=self.round + 1, tool_choice=None if forced else self.tool_choice)


def choice_json(choice: ToolChoice | None) -> Any:
    return choice.model_dump() if isinstance(choice, NamedToolChoice) else choice


@dataclass(frozen=True, slots=True)
class MadeCall:
    """A call the model made, validated, under its session-unique id, and who answers it."""

    call: ToolCall
    kind: CallKind

    def bodies(self, response_id: str) -> list[str]:
        """Its logged events: the call, and for an approval-gated server tool the request for approval."""
        c = self.call
        out = [
            encode(
                ResponseToolCall(
                    response_id=response_id,
                    call_id=c.call_id,
                    name=c.name,
                    arguments=c.arguments,
                    server=self.kind != "client",
                )
            )
        ]
        if self.kind == "approval":
            out.append(
                encode(
                    ToolApprovalRequested(
                        response_id=response_id, call_id=c.call_id, name=c.name, arguments=c.arguments
                    )
                )
            )
        return out

    def record(self, response_id: str) -> CallRecord:
        c = self.call
        spec = {"name": c.name, "arguments": c.arguments, "response_id": response_id}
        return CallRecord(c.call_id, self.kind, compact(spec))

    def history(self) -> dict[str, Any]:
        c = self.call
        return {
            "call_id": c.call_id,
            "name": c.name,
            "arguments": c.arguments,
            "server": self.kind != "client",
        }


def call_id_for(response_id: str, index: int) -> str:
    """A call's id: unique in the session, and short enough for every model API (OpenAI: 40)."""
    return f"call_{response_id.removeprefix('r_')[:24]}_{index}"


def assistant_turn(response_id: str, calls: list[MadeCall]) -> str:
    """The history turn of a response that called tools, without ``content`` (the store adds the text)."""
    return compact(
        {
            "role": "assistant",
            "id": response_id,
            "finish_reason": "tool_calls",
            "tool_calls": [m.history() for m in calls],
        }
    )


def tool_turn(call_id: str, output: Any, is_error: bool) -> str:
    """The history turn of one result; ``"response_id":""`` is filled in by the store."""
    return compact(
        {
            "role": "tool",
            "response_id": "",
            "id": call_id,
            "content": output_text(output),
            "output": output,
            "is_error": is_error,
        }
    )
