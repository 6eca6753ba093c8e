"""A deterministic model that needs nothing: the embedded default and the load-test model.

The reply depends only on the conversation text and the echo settings, never on
ids or time, so two sessions with the same turns get the same reply. One token is
one word plus its trailing space, so load tools can count tokens in any delta.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from collections.abc import AsyncIterator
from typing import Any

from .base import ChatMessage, Finish, ModelRequest, ProviderEvent, TextDelta, UsageReport

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
        if request.response_format and request.response_format.get("type") == "json_schema":
            users = [m.content for m in messages if m.role == "user"]
            instance = schema_instance(request.response_format.get("schema", {}), users[-1] if users else "")
            tokens = [w + " " for w in json.dumps(instance).split(" ")]
            if len(tokens) > n:  # bounded by the reply-token limit, whatever the schema asks
                tokens, finish = tokens[:n], "length"
        else:
            tokens = [w + " " for w in reply_words(messages, n)]
        loop = asyncio.get_running_loop()
        start = loop.time()
        if self.ttft_ms > 0:
            await asyncio.sleep(self.ttft_ms / 1000)
        interval = 1.0 / self.tokens_per_second if self.tokens_per_second > 0 else 0.0
        for i, token in enumerate(tokens):
            if interval and i:
                # pace against the schedule, not the previous token, so delays do not accumulate
                delay = start + self.ttft_ms / 1000 + i * interval - loop.time()
                await asyncio.sleep(max(delay, 0))
            elif not interval and i % 16 == 15:
                await asyncio.sleep(0)  # unthrottled: still let the loop breathe
            yield TextDelta(token)
        input_tokens = sum(len(m.content.split()) for m in messages)
        yield UsageReport(input_tokens=input_tokens, output_tokens=len(tokens))
        yield Finish(finish)

    async def aclose(self) -> None:
        return None
