"""The echo model: deterministic, multi-turn aware, paced, and schema-capable."""

from __future__ import annotations

import json

from parley.server.providers.base import ChatMessage, Finish, ModelRequest, Profile, TextDelta, UsageReport
from parley.server.providers.echo import EchoProvider


async def run(provider: EchoProvider, messages: list[ChatMessage], **kw: object) -> list[object]:
    req = ModelRequest(messages=messages, profile=Profile(), trace_id="t", **kw)  # type: ignore[arg-type]
    return [ev async for ev in provider.stream(req)]


async def test_same_conversation_same_reply() -> None:
    """Two runs over the same turns give the same tokens, independent of ids or time."""
    p = EchoProvider(tokens_per_second=0, reply_tokens=30)
    msgs = [ChatMessage("user", "hello world")]
    assert await run(p, msgs) == await run(p, msgs)


async def test_reply_reflects_earlier_turns_and_counts_tokens() -> None:
    """The reply quotes the newest and the first user turn; one token is one word plus a space."""
    p = EchoProvider(tokens_per_second=0, reply_tokens=25)
    msgs = [ChatMessage("user", "first"), ChatMessage("assistant", "x"), ChatMessage("user", "second one")]
    events = await run(p, msgs)
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    assert len(deltas) == 25 and all(d.endswith(" ") and d.count(" ") == 1 for d in deltas)
    text = "".join(deltas)
    assert text.startswith("Echo turn-2: second one (earlier: first ) ")
    assert events[-2] == UsageReport(input_tokens=4, output_tokens=25)
    assert events[-1] == Finish("stop")


async def test_json_schema_reply_is_a_valid_instance() -> None:
    """With a json_schema response format the streamed text parses to an instance of the schema."""
    p = EchoProvider(tokens_per_second=0)
    schema = {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"}}}}
    events = await run(
        p, [ChatMessage("user", "hi")], response_format={"type": "json_schema", "name": "o", "schema": schema}
    )
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert json.loads(text) == {"tags": ["hi"]}
