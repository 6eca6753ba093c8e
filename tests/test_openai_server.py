"""The OpenAI provider end to end: Parley over a real socket, the `openai` package over HTTP to a fake."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from parley.client import ParleyClient

from .fake_openai import SECRET, FakeOpenAI, Reply
from .support import live_server

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as f:
        monkeypatch.setenv("OPENAI_BASE_URL", f.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        yield f


@pytest.fixture
async def server(fake: FakeOpenAI) -> AsyncIterator[Any]:
    async with live_server(model="openai:gpt-test", openai_retry_attempts=3) as s:
        yield s


def no_leak(events: list[dict[str, Any]]) -> None:
    text = json.dumps(events)
    assert SECRET not in text and "test_error" not in text and "chatcmpl" not in text


async def test_streamed_text_and_usage_arrive_intact(server: Any, fake: FakeOpenAI) -> None:
    """Upstream chunks become deltas whose text and usage match what the provider sent."""
    fake.script(Reply(chunks=["Hello", ", ", "world", "!"], usage=(7, 4)))
    async with ParleyClient(server.url, metadata={"trace_id": TRACE}) as c:
        reply = await c.ask("hi")
    assert reply.text == "Hello, world!"
    assert reply.completed["usage"] == {"input_tokens": 7, "output_tokens": 4}
    started = next(e for e in reply.events if e["type"] == "response.started")
    assert started["profile"] == "default@1" and started["trace_id"] == TRACE
    req = fake.requests[-1]
    assert req.body["model"] == "gpt-test" and req.body["stream"] is True
    assert req.body["messages"][-1] == {"role": "user", "content": "hi"}
    assert TRACE in req.headers.get("traceparent", "") or req.headers.get("x-request-id") == TRACE
    no_leak(reply.events)


async def test_upstream_429_is_rate_limited_with_retry_after(server: Any, fake: FakeOpenAI) -> None:
    """A 429 with Retry-After ends the response with error rate_limited and retry_after_ms."""
    fake.script(Reply.error(429, retry_after="2"))
    async with ParleyClient(server.url) as c:
        reply = await c.ask("hi")
    err = reply.completed["error"]
    assert reply.finish_reason == "error"
    assert err["code"] == "rate_limited" and err["retryable"] is True and err["retry_after_ms"] == 2000
    no_leak(reply.events)


async def test_5xx_before_first_token_is_retried(server: Any, fake: FakeOpenAI) -> None:
    """Two 503s then success: the client sees one clean reply; the upstream saw three requests."""
    fake.script(Reply.error(503), Reply.error(503), Reply(chunks=["ok"]))
    async with ParleyClient(server.url) as c:
        reply = await c.ask("hi")
    assert reply.finish_reason == "stop" and reply.text == "ok"
    assert fake.request_count == 3


async def test_stream_broken_after_tokens_keeps_partial_text(server: Any, fake: FakeOpenAI) -> None:
    """A stream that breaks mid-way ends with finish_reason error, upstream_unavailable, partial text kept."""
    fake.script(Reply(chunks=["one ", "two ", "three "], drop_after=2))
    async with ParleyClient(server.url) as c:
        reply = await c.ask("hi")
        assert reply.finish_reason == "error"
        assert reply.completed["error"]["code"] == "upstream_unavailable"
        assert reply.text == "one two "
        hist = await server.state.store.history(c.session_id)
        assert hist[-1]["content"] == "one two "
    assert fake.request_count == 1  # never retried after the first token


async def test_refusal_is_policy_refusal(server: Any, fake: FakeOpenAI) -> None:
    """A refusal from the model ends as content_filter with error policy_refusal, no provider text."""
    fake.script(Reply(refusal=f"I cannot {SECRET}"))
    async with ParleyClient(server.url) as c:
        reply = await c.ask("hi")
    assert reply.finish_reason == "content_filter"
    assert reply.completed["error"]["code"] == "policy_refusal"
    no_leak(reply.events)


async def test_upstream_401_is_internal_without_provider_text(server: Any, fake: FakeOpenAI) -> None:
    """A 401 from upstream is internal to the client, and its body never reaches the client."""
    fake.script(Reply.error(401))
    async with ParleyClient(server.url) as c:
        reply = await c.ask("hi")
    assert reply.completed["error"]["code"] == "internal" and reply.completed["error"]["retryable"] is False
    no_leak(reply.events)


async def test_cancel_closes_the_upstream_stream(server: Any, fake: FakeOpenAI) -> None:
    """Cancelling a streaming response disconnects from the upstream at once."""
    fake.script(Reply(chunks=[f"w{i} " for i in range(100)], between=0.05))
    async with ParleyClient(server.url) as c:
        cid = await c.send("long")
        await c.next_event("response.delta")
        await c.cancel()
        reply = await c.collect(cid)
        assert reply.finish_reason == "cancelled"
        assert await fake.wait_disconnect(within=5)


async def test_json_schema_output_valid_and_invalid(server: Any, fake: FakeOpenAI) -> None:
    """Schema responses carry the parsed output when valid, schema_validation_failed when not."""
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    fmt = {"type": "json_schema", "name": "answer", "schema": schema}
    async with ParleyClient(server.url) as c:
        fake.script(Reply(chunks=['{"n": ', "42}"]))
        good = await c.ask("count", response_format=fmt)
        assert good.finish_reason == "stop" and good.completed["output"] == {"n": 42}
        sent = fake.requests[-1].body["response_format"]
        assert sent["type"] == "json_schema" and sent["json_schema"]["schema"] == schema
        fake.script(Reply(chunks=['{"n": "many"}']))
        bad = await c.ask("count again", response_format=fmt)
        assert bad.finish_reason == "error"
        assert bad.completed["error"]["code"] == "schema_validation_failed"
        assert "output" not in bad.completed


async def test_profiles_pick_model_prompt_and_version(fake: FakeOpenAI, tmp_path: Path) -> None:
    """A profile selects the upstream model, system prompt and params; started reports name@version."""
    profiles = tmp_path / "profiles.toml"
    profiles.write_text(
        """
default = "quick"

[profiles.quick]
provider = "echo"
version = "1"

[profiles.support]
provider = "openai"
model = "gpt-support"
version = "7"
system_prompt = "You are a support agent."
context_tokens = 50

[profiles.support.params]
temperature = 0.2
"""
    )
    async with live_server(profiles=str(profiles)) as srv, ParleyClient(srv.url) as c:
        quick = await c.ask("hello")
        assert next(e for e in quick.events if e["type"] == "response.started")["profile"] == "quick@1"
        assert fake.request_count == 0
        fake.script(Reply(chunks=["sure"]))
        support = await c.ask("help me " + "please " * 60, profile="support")
        assert next(e for e in support.events if e["type"] == "response.started")["profile"] == "support@7"
        body = fake.requests[-1].body
        assert body["model"] == "gpt-support" and body["temperature"] == 0.2
        assert body["messages"][0] == {"role": "system", "content": "You are a support agent."}
        # the budget (50 tokens) drops the older turns but keeps the system prompt and the newest turn
        assert [m["role"] for m in body["messages"]] == ["system", "user"]
