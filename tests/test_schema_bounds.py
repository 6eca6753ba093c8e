"""Structured output is bounded work: schema bombs are refused, output checks cannot hold the loop."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from parley.client import ParleyClient
from parley.protocol import parse_client
from parley.protocol.errors import InvalidMessage, SchemaValidationFailed
from parley.protocol.schema_budget import MAX_MIN_INSTANCE, SchemaTooCostly, check_schema
from parley.server.providers.base import ChatMessage, Finish, ModelRequest, Profile, TextDelta
from parley.server.providers.echo import EchoProvider
from parley.server.schema_check import OutputValidator

from .support import ServerProcess

BOMBS = {
    "a million items": {"type": "array", "minItems": 1_000_000},
    "nested thousands": {"type": "array", "minItems": 1000, "items": {"type": "array", "minItems": 1000}},
    "1e8 x 1000": {"type": "array", "minItems": 100_000_000, "items": {"type": "array", "minItems": 1000}},
    "a long string": {"type": "string", "minLength": 10_000_000},
    "many properties": {"type": "object", "minProperties": 100_000},
    "deep nesting": json.loads('{"type":"array","items":' * 40 + "{}" + "}" * 40),
    "remote ref": {"$ref": "https://example.com/schema.json"},
    "not a number": {"type": "array", "minItems": "many"},
    "long pattern": {"type": "string", "pattern": "a" * 600},
    "multiplied strings": {
        "type": "array",
        "minItems": 100,
        "items": {"type": "string", "minLength": 1000},
    },
}

#: Worst accepted schema for the echo model's check: a backtracking pattern against its own output.
REDOS = {"type": "object", "properties": {"s": {"type": "string", "pattern": "^(a+)+$"}}, "required": ["s"]}


def send_frame(schema: Any) -> str:
    return json.dumps(
        {
            "type": "message.send",
            "client_msg_id": "c1",
            "content": "x",
            "response_format": {"type": "json_schema", "schema": schema},
        }
    )


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_schema_bombs_are_invalid_messages_naming_the_limit(name: str) -> None:
    """Each costly schema is refused while parsing, with invalid_message naming what is too big."""
    with pytest.raises(InvalidMessage) as info:
        parse_client(send_frame(BOMBS[name]))
    assert info.value.message.startswith("response_format.json_schema.schema: ")
    assert info.value.ref == {"type": "message.send", "client_msg_id": "c1"}


def test_ordinary_schemas_pass_the_budget() -> None:
    """Realistic output schemas (objects, arrays, enums, local refs, short patterns) are accepted."""
    check_schema(
        {
            "type": "object",
            "properties": {
                "verdict": {"enum": ["yes", "no"]},
                "tags": {"type": "array", "items": {"type": "string", "maxLength": 100}, "maxItems": 50},
                "id": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]+$"},
                "child": {"$ref": "#/$defs/node"},
            },
            "$defs": {"node": {"type": "object", "properties": {"name": {"type": "string"}}}},
            "required": ["verdict"],
        }
    )


def test_smallest_instance_bound_is_exact_at_the_edge() -> None:
    """A schema whose minimal instance fits is accepted and one just over is refused."""
    fits = {"type": "array", "minItems": 1000, "items": {"type": "string", "minLength": 2}}
    check_schema(fits)
    over = {"type": "array", "minItems": 1000, "items": {"type": "string", "minLength": 5}}
    with pytest.raises(SchemaTooCostly, match=str(MAX_MIN_INSTANCE)):
        check_schema(over)


async def test_echo_reply_is_bounded_by_the_reply_token_limit() -> None:
    """Whatever the schema asks, echo streams at most its reply-token limit and then says length."""
    provider = EchoProvider(tokens_per_second=0, reply_tokens=10)
    schema = {"type": "array", "minItems": 1000, "items": {"type": "integer"}}
    request = ModelRequest(
        messages=[ChatMessage("user", "x")],
        profile=Profile(),
        trace_id="t",
        response_format={"type": "json_schema", "name": "o", "schema": schema},
    )
    events = [ev async for ev in provider.stream(request)]
    assert len([e for e in events if isinstance(e, TextDelta)]) == 10
    assert events[-1] == Finish("length")


async def test_backtracking_pattern_is_cut_off_and_the_checker_recovers() -> None:
    """A catastrophic pattern is stopped at the time bound; the next check works on a new worker."""
    validator = OutputValidator(timeout_s=0.5)
    try:
        with pytest.raises(SchemaValidationFailed, match="took over"):
            await validator.parse_and_validate(json.dumps({"s": "a" * 40 + "b"}), REDOS)
        assert validator.killed == 1
        assert await validator.parse_and_validate('{"s": "aaa"}', REDOS) == {"s": "aaa"}
        with pytest.raises(SchemaValidationFailed, match="does not match"):
            await validator.parse_and_validate('{"s": "b"}', REDOS)
    finally:
        await validator.aclose()


async def test_oversized_and_invalid_outputs_are_refused_without_a_worker() -> None:
    """Output over the size bound, or not JSON at all, is refused before any validation runs."""
    validator = OutputValidator(max_chars=100)
    with pytest.raises(SchemaValidationFailed, match="over 100 characters"):
        await validator.parse_and_validate("[" + "1," * 100 + "1]", {"type": "array"})
    with pytest.raises(SchemaValidationFailed, match="not valid JSON"):
        await validator.parse_and_validate("{nope", {"type": "object"})
    assert validator._proc is None


@pytest.fixture(scope="module")
def proc() -> Iterator[ServerProcess]:
    p = ServerProcess({"PARLEY_STORE": "memory://", "PARLEY_ECHO_TOKENS_PER_SECOND": "0"})
    p.start()
    yield p
    p.stop()


async def watch_health(http: str, stop: asyncio.Event) -> list[float]:
    """Poll /healthz back to back until ``stop``; the latency of every answer, in seconds."""
    seen: list[float] = []
    async with httpx.AsyncClient(base_url=http, timeout=30) as h:
        while not stop.is_set():
            t0 = time.perf_counter()
            assert (await h.get("/healthz")).status_code == 200
            seen.append(time.perf_counter() - t0)
    return seen


@pytest.mark.slow
async def test_bombs_over_the_wire_and_healthz_stays_responsive(proc: ServerProcess) -> None:
    """Every bomb gets invalid_message, and the worst accepted schemas run while /healthz keeps answering."""
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch_health(proc.http, stop))
    try:
        async with ParleyClient(proc.url) as c:
            for name, schema in BOMBS.items():
                await c.send_raw(send_frame(schema))
                err = await c.next_event("error")
                assert err["code"] == "invalid_message", name
            # the largest minimal instance the budget admits, then a backtracking pattern on echo's output
            big = {"type": "array", "minItems": 1000, "items": {"type": "string", "minLength": 2}}
            reply = await c.ask("x", response_format={"type": "json_schema", "schema": big})
            assert reply.finish_reason == "length"  # bounded by echo's reply-token limit
            bomb = await c.ask("a" * 36 + "b", response_format={"type": "json_schema", "schema": REDOS})
            assert bomb.finish_reason == "error"
            assert bomb.completed["error"]["code"] == "schema_validation_failed"
            assert "took over" in bomb.completed["error"]["message"]
            ok = await c.ask("aaaa", response_format={"type": "json_schema", "schema": REDOS})
            assert ok.finish_reason == "stop" and ok.completed["output"] == {"s": "aaaa"}
    finally:
        stop.set()
        latencies = await watcher
    assert latencies, "healthz was never answered"
    # a frozen loop would show as seconds here (12-29 s before the bound); scheduling noise stays far below
    assert max(latencies) < 0.5, f"/healthz took {max(latencies) * 1000:.0f} ms while bombs ran"
