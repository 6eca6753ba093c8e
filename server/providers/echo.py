"""A deterministic model that needs nothing: the embedded default and the load-test model.

The reply depends only on the conversation text and the echo settings, never on
ids or time, so two sessions with the same turns get the same reply. One token is
one word plus its trailing space, so load tools can count tokens in any delta.

Directives in the newest user message make echo behave like a tool-using,
reasoning model, so the whole tool-call path is testable without one:

- ``/tool NAME {json args}`` (one per line; several lines, several calls) naming
  a tool declared in the request: echo streams each call, its arguments text in
  ``ARGUMENT_PIECES`` deltas cut anywhere (as real models do), and finishes with
  ``tool_calls``. The arguments are sent as written (default ``{}``), so text that
  is not a JSON object ends the response as a real model's would
  (``SchemaValidationFailed``), and arguments that miss the tool's schema reach
  the core's schema check. With ``tool_choice`` ``"required"`` or a named tool and
  no ``/tool`` line, echo calls that (or the first) tool with a minimal valid
  instance of its schema; with ``"none"`` it never calls.
- once the results are in (the conversation ends with ``tool`` messages), echo
  answers with ``Echo tool results: NAME returned OUTPUT; ...`` holding each
  output verbatim.
- ``/think N`` anywhere in it: ``N`` words of reasoning (at most
  ``MAX_THINK_WORDS``) before anything else, in every response of that turn.

Text without directives gets exactly the reply it always got.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
from collections.abc import AsyncIterator
from typing import Any

from parley.protocol.errors import SchemaValidationFailed

from .base import (
    ChatMessage,
    Finish,
    ModelRequest,
    NamedToolChoice,
    ProviderEvent,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolSpec,
    UsageReport,
    parse_arguments,
)

#: Deltas one call's arguments are streamed in (cut by characters, so mid-token).
ARGUMENT_PIECES = 3
#: Most reasoning words ``/think N`` produces: a test knob, not a way to make echo spin.
MAX_THINK_WORDS = 4096
#: Most tokens in the after-results sentence; it is not cut to ``max_tokens`` (it must hold every output).
MAX_RESULTS_TOKENS = 16_384

_TOOL_LINE = re.compile(r"^\s*/tool\s+(\S+)(?:[ \t]+(.*?))?\s*$", re.MULTILINE)
_THINK = re.compile(r"(?:^|\s)/think\s+(\d{1,9})(?=\s|$)")

_VOCAB = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
    "november oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu"
).split()


def count_tokens(text: str) -> int:
    """Whitespace tokens: the unit echo streams in and the budget unit for context."""
    return len(text.split())


def reply_words(messages: list[ChatMessage], n_tokens: int) -> list[str]:
    """The deterministic reply: shows the last user turn and that earlier turns were seen."""
    users = [m.content for m in messages if m.role == "user"]
    last = users[-1].split() if users else []
    words = ["Echo", f"turn-{len(users)}:", *last[:20]]
    if len(users) > 1:
        words += ["(earlier:", *users[0].split()[:5], ")"]
    digest = hashlib.sha256("\x00".join(f"{m.role}:{m.content}" for m in messages).encode()).digest()
    rng = random.Random(digest)
    while len(words) < n_tokens:
        words.append(rng.choice(_VOCAB))
    return words[:n_tokens]


def schema_instance(schema: dict[str, Any], seed: str) -> Any:
    """A small valid instance of a JSON schema (the common subset), deterministic in ``seed``."""
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            return schema_instance(schema[key][0], seed)
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties", {})
        return {k: schema_instance(v, seed) for k, v in props.items()}
    if kind == "array":
        n = max(1, int(schema.get("minItems", 1)))
        return [schema_instance(schema.get("items", {"type": "string"}), seed) for _ in range(n)]
    if kind == "string":
        text = seed[:40] or "echo"
        return text.ljust(int(schema.get("minLength", 0)), ".")
    if kind == "integer":
        return int(schema.get("minimum", 0))
    if kind == "number":
        return float(schema.get("minimum", 0))
    if kind == "boolean":
        return True
    return None


def _digest(messages: list[ChatMessage], purpose: str) -> bytes:
    """A hash of the whole conversation (calls and results included) for one use."""
    parts = [purpose]
    for m in messages:
        calls = ",".join(
            f"{c.call_id}={c.name}:{json.dumps(c.arguments, sort_keys=True)}" for c in m.tool_calls
        )
        parts.append(f"{m.role}:{m.content}:{m.tool_call_id or ''}:{calls}")
    return hashlib.sha256("\x00".join(parts).encode()).digest()


def think_words(messages: list[ChatMessage], last_user: str) -> list[str]:
    """The reasoning ``/think N`` in the newest user message asks for (deterministic words)."""
    match = _THINK.search(last_user)
    if match is None:
        return []
    count = min(int(match.group(1)), MAX_THINK_WORDS)
    rng = random.Random(_digest(messages, "think"))
    return [rng.choice(_VOCAB) for _ in range(count)]


def planned_calls(request: ModelRequest, last_user: str) -> list[tuple[str, str, str]]:
    """``(call_id, name, arguments text)`` for each call this response makes (none after results)."""
    messages = request.messages
    if not request.tools or request.tool_choice == "none" or not messages or messages[-1].role != "user":
        return []
    declared = {t.name: t for t in request.tools}
    wanted: list[tuple[str, str]] = []
    for match in _TOOL_LINE.finditer(last_user):
        name, raw = match.group(1), (match.group(2) or "").strip()
        if name in declared:
            wanted.append((name, raw or "{}"))
    choice = request.tool_choice
    if not wanted and (choice == "required" or isinstance(choice, NamedToolChoice)):
        tool: ToolSpec | None = (
            declared.get(choice.name) if isinstance(choice, NamedToolChoice) else request.tools[0]
        )
        if tool is not None:  # a choice naming an undeclared tool is the core's to refuse, not a crash
            instance = schema_instance(tool.parameters, last_user)
            wanted.append((tool.name, json.dumps(instance if isinstance(instance, dict) else {})))
    digest = _digest(messages, "calls").hex()
    return [
        (f"call_{hashlib.sha256(f'{digest}:{i}'.encode()).hexdigest()[:24]}", name, raw)
        for i, (name, raw) in enumerate(wanted)
    ]


def split_pieces(text: str, pieces: int = ARGUMENT_PIECES) -> list[str]:
    """``text`` cut into at most ``pieces`` non-empty runs of characters (one piece for short text)."""
    size = max(1, -(-len(text) // pieces))
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def results_sentence(messages: list[ChatMessage]) -> str:
    """``Echo tool results: NAME returned OUTPUT; ...`` for the results after the last assistant call."""
    names: dict[str, str] = {}
    results: list[ChatMessage] = []
    for m in messages:
        if m.role == "assistant" and m.tool_calls:
            names.update({c.call_id: c.name for c in m.tool_calls})
            results = []
        elif m.role == "tool":
            results.append(m)
    parts = [f"{names.get(r.tool_call_id or '', 'tool')} returned {r.content}" for r in results]
    return "Echo tool results: " + "; ".join(parts) + "."


class EchoProvider:
    """Streams ``reply_tokens`` words after ``ttft_ms``, ``tokens_per_second`` apart (0 = unthrottled)."""

    name = "echo"

    def __init__(self, ttft_ms: int = 0, tokens_per_second: float = 40.0, reply_tokens: int = 60) -> None:
        self.ttft_ms = ttft_ms
        self.tokens_per_second = tokens_per_second
        self.reply_tokens = reply_tokens

    async def stream(self, request: ModelRequest) -> AsyncIterator[ProviderEvent]:
        messages = request.messages
        n = int(request.profile.params.get("max_tokens", self.reply_tokens))
        finish = "stop"
        users = [m for m in messages if m.role == "user"]
        last_user = users[-1].content if users else ""
        thinking = think_words(messages, last_user)
        calls = planned_calls(request, last_user)
        tokens: list[str] = []
        if calls:
            finish = "tool_calls"
        elif messages and messages[-1].role == "tool":
            tokens = [w + " " for w in results_sentence(messages).split(" ")]
            if len(tokens) > MAX_RESULTS_TOKENS:
                tokens, finish = tokens[:MAX_RESULTS_TOKENS], "length"
        elif request.response_format and request.response_format.get("type") == "json_schema":
            users = [m.content for m in messages if m.role == "user"]
            instance = schema_instance(request.response_format.get("schema", {}), users[-1] if users else "")
            tokens = [w + " " for w in json.dumps(instance).split(" ")]
            if len(tokens) > n:  # bounded by the reply-token limit, whatever the schema asks
                tokens, finish = tokens[:n], "length"
        else:
            tokens = [w + " " for w in reply_words(messages, n)]
        steps: list[ProviderEvent | SchemaValidationFailed] = [ReasoningDelta(w + " ") for w in thinking]
        steps += [TextDelta(t) for t in tokens]
        for index, (call_id, name, raw) in enumerate(calls):
            steps += [ToolCallDelta(index, call_id, name, piece) for piece in split_pieces(raw)]
            try:  # the complete call, or the error a real model's bad arguments cause, after its deltas
                steps.append(ToolCall(call_id, name, parse_arguments(name, raw)))
            except SchemaValidationFailed as exc:
                steps.append(exc)
        loop = asyncio.get_running_loop()
        start = loop.time()
        if self.ttft_ms > 0:
            await asyncio.sleep(self.ttft_ms / 1000)
        interval = 1.0 / self.tokens_per_second if self.tokens_per_second > 0 else 0.0
        i = 0  # streamed pieces so far: the pacing schedule's clock
        for step in steps:
            if isinstance(step, SchemaValidationFailed):
                raise step
            if isinstance(step, ToolCall):
                yield step  # not a streamed piece: it completes the deltas just sent
                continue
            if interval and i:
                # pace against the schedule, not the previous token, so delays do not accumulate
                delay = start + self.ttft_ms / 1000 + i * interval - loop.time()
                await asyncio.sleep(max(delay, 0))
            elif not interval and i % 16 == 15:
                await asyncio.sleep(0)  # unthrottled: still let the loop breathe
            i += 1
            yield step
        input_tokens = sum(len(m.content.split()) for m in messages)
        yield UsageReport(
            input_tokens=input_tokens, output_tokens=i, reasoning_tokens=len(thinking) if thinking else None
        )
        yield Finish(finish)

    async def aclose(self) -> None:
        return None
