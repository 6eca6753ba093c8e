"""Tool calls and reasoning through the OpenAI-compatible provider, over real HTTP against ``FakeOpenAI``."""

from __future__ import annotations

import pytest

from parley.protocol.errors import SchemaValidationFailed, UpstreamTimeout, UpstreamUnavailable
from parley.protocol.tools import NamedToolChoice, parse_tools
from parley.server.providers.base import (
    ChatMessage,
    Finish,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    UsageReport,
    tool_result_message,
)
from parley.server.providers.openai import OpenAIProvider
from tests.fake_openai import FakeCall, FakeOpenAI, Reply
from tests.test_openai_provider import collect, fake, make_provider, make_request, provider, text_of

__all__ = ["fake", "provider"]  # fixtures, imported for pytest

TOOLS = parse_tools(
    [
        {
            "name": "get_weather",
            "description": "Weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
        {"name": "get_time", "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}}},
    ]
)


def request_with(tools=TOOLS, tool_choice=None, messages=None):
    base = make_request(messages=messages)
    return type(base)(
        messages=base.messages,
        profile=base.profile,
        trace_id=base.trace_id,
        tools=tools,
        tool_choice=tool_choice,
    )


def deltas_of(events: list) -> list[ToolCallDelta]:
    return [e for e in events if isinstance(e, ToolCallDelta)]


def calls_of(events: list) -> list[ToolCall]:
    return [e for e in events if isinstance(e, ToolCall)]


# -- what is sent ------------------------------------------------------------------------------


async def test_tools_and_choice_reach_the_upstream(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    """Declared tools go up as function tools; each tool_choice form is sent in OpenAI's shape."""
    expected_tools = [
        {
            "type": "function",
            "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
        }
        for t in TOOLS
    ]
    sent = []
    for choice in (None, "auto", "none", "required", NamedToolChoice(name="get_time")):
        await collect(provider, request_with(tool_choice=choice))
        sent.append(fake.requests[-1].body)
    assert all(body["tools"] == expected_tools for body in sent)
    assert "tool_choice" not in sent[0]
    assert [b["tool_choice"] for b in sent[1:4]] == ["auto", "none", "required"]
    assert sent[4]["tool_choice"] == {"type": "function", "function": {"name": "get_time"}}


async def test_no_tools_sends_no_tool_fields(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    """A request without tools has neither tools nor tool_choice in its body."""
    await collect(provider, request_with(tools=(), tool_choice="none"))
    assert "tools" not in fake.requests[-1].body and "tool_choice" not in fake.requests[-1].body


async def test_history_renders_calls_and_results(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    """Assistant calls go up as tool_calls with JSON arguments; results as role tool messages with ids."""
    calls = (
        ToolCall("call_1", "get_weather", {"city": "Zürich"}),
        ToolCall("call_2", "get_time", {}),
    )
    history = [
        ChatMessage("user", "weather and time?"),
        ChatMessage("assistant", "", tool_calls=calls),
        tool_result_message("call_1", {"temp_c": 21}),
        tool_result_message("call_2", "timed out", is_error=True),
    ]
    await collect(provider, request_with(messages=history))
    assert fake.requests[-1].body["messages"] == [
        {"role": "user", "content": "weather and time?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Zürich"}'},
                },
                {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c":21}'},
        {"role": "tool", "tool_call_id": "call_2", "content": "Error: timed out"},
    ]


# -- streamed calls ----------------------------------------------------------------------------


async def test_one_call_streams_deltas_then_the_call(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    """Argument pieces arrive as ToolCallDeltas, then the parsed call, the usage and a tool_calls finish."""
    pieces = ['{"ci', 'ty": "Par', 'is"}']
    fake.script(Reply.calls(FakeCall("get_weather", pieces, id="call_abc"), usage=(20, 9)))
    events, error = await collect(provider, request_with())
    assert error is None
    assert deltas_of(events) == [ToolCallDelta(0, "call_abc", "get_weather", p) for p in pieces]
    assert events[-3:] == [
        ToolCall("call_abc", "get_weather", {"city": "Paris"}),
        UsageReport(input_tokens=20, output_tokens=9),
        Finish("tool_calls"),
    ]
    assert text_of(events) == ""


@pytest.mark.parametrize("mode", ["sequential", "interleaved", "one_chunk"])
async def test_two_calls_in_one_response_assemble_by_index(
    fake: FakeOpenAI, provider: OpenAIProvider, mode: str
) -> None:
    """Two calls, arguments cut mid-token, sent in turn, interleaved or whole, assemble by index."""
    fake.script(
        Reply.calls(
            FakeCall("get_weather", ['{"city', '": "Os', 'lo"}'], id="call_a"),
            FakeCall("get_time", ['{"t', 'z": "Europe/Os', 'lo"}'], id="call_b"),
            tool_calls_mode=mode,
        )
    )
    events, error = await collect(provider, request_with())
    assert error is None
    assert calls_of(events) == [
        ToolCall("call_a", "get_weather", {"city": "Oslo"}),
        ToolCall("call_b", "get_time", {"tz": "Europe/Oslo"}),
    ]
    by_index: dict[int, str] = {}
    for d in deltas_of(events):
        assert (d.call_id, d.name) == [("call_a", "get_weather"), ("call_b", "get_time")][d.index]
        by_index[d.index] = by_index.get(d.index, "") + d.arguments_delta
    assert by_index == {0: '{"city": "Oslo"}', 1: '{"tz": "Europe/Oslo"}'}
    assert events[-1] == Finish("tool_calls")


async def test_text_before_calls_is_kept(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    """A response that writes text and then calls a tool yields both, and finishes tool_calls."""
    fake.script(Reply.calls(FakeCall("get_time", ["{}"], id="c1"), chunks=["Let me ", "check."]))
    events, error = await collect(provider, request_with())
    assert error is None and text_of(events) == "Let me check."
    assert calls_of(events) == [ToolCall("c1", "get_time", {})] and events[-1] == Finish("tool_calls")


async def test_call_without_an_id_gets_one(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    """A server that streams no call id still yields one id, the same on every delta and on the call."""
    fake.script(Reply.calls(FakeCall("get_time", ['{"tz":', ' "UTC"}']), FakeCall("get_time", ["{}"])))
    events, error = await collect(provider, request_with())
    assert error is None
    ids = [c.call_id for c in calls_of(events)]
    assert len(set(ids)) == 2 and all(i.startswith("call_") for i in ids)
    assert {(d.index, d.call_id) for d in deltas_of(events)} == {(0, ids[0]), (1, ids[1])}


async def test_stop_finish_with_calls_is_tool_calls(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    """A server that finishes stop after streaming calls still gives Finish(tool_calls) with the calls."""
    fake.script(Reply.calls(FakeCall("get_time", ["{}"], id="c1"), finish_reason="stop"))
    events, _ = await collect(provider, request_with())
    assert calls_of(events) == [ToolCall("c1", "get_time", {})] and events[-1] == Finish("tool_calls")


async def test_length_finish_drops_cut_calls(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    """Calls cut off by the token limit are not completed: the response finishes length."""
    fake.script(Reply.calls(FakeCall("get_weather", ['{"city": "Ro'], id="c1"), finish_reason="length"))
    events, error = await collect(provider, request_with())
    assert error is None and calls_of(events) == [] and events[-1] == Finish("length")


async def test_tool_calls_finish_without_calls_is_stop(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    """finish_reason tool_calls with no call streamed is a plain stop, never an empty call list."""
    fake.script(Reply(chunks=["ok"], finish_reason="tool_calls"))
    events, error = await collect(provider, request_with())
    assert error is None and events[-1] == Finish("stop")


async def test_malformed_arguments_are_schema_validation_failed(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    """Arguments that are not a JSON object end the stream with SchemaValidationFailed, once, no call."""
    fake.script(Reply.calls(FakeCall("get_weather", ['{"city": ', "Paris}"], id="c1")))
    events, error = await collect(provider, request_with())
    assert isinstance(error, SchemaValidationFailed)
    assert "get_weather" in error.message and "not valid JSON" in error.message
    assert len(deltas_of(events)) == 2 and calls_of(events) == []
    assert not any(isinstance(e, Finish) for e in events)
    assert fake.request_count == 1


async def test_array_arguments_are_schema_validation_failed(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    """Arguments that parse to something other than an object are refused the same way."""
    fake.script(Reply.calls(FakeCall("get_time", ["[1, 2]"], id="c1")))
    _, error = await collect(provider, request_with())
    assert isinstance(error, SchemaValidationFailed) and "not a JSON object" in error.message


async def test_undeclared_tool_is_schema_validation_failed(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    """A call to a tool the request did not declare is the model's error, never handed on."""
    fake.script(Reply.calls(FakeCall("rm_rf", ["{}"], id="c1")))
    events, error = await collect(provider, request_with())
    assert isinstance(error, SchemaValidationFailed) and "'rm_rf'" in error.message
    assert calls_of(events) == []


# -- reasoning ---------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
async def test_reasoning_deltas_and_tokens(fake: FakeOpenAI, provider: OpenAIProvider, field: str) -> None:
    """Reasoning in either field becomes ReasoningDeltas before the text; usage has reasoning tokens."""
    fake.script(
        Reply(
            reasoning=["Think", "ing..."],
            reasoning_field=field,
            chunks=["Answer"],
            usage=(5, 30),
            reasoning_tokens=24,
        )
    )
    events, error = await collect(provider, make_request())
    assert error is None
    assert events[:3] == [ReasoningDelta("Think"), ReasoningDelta("ing..."), TextDelta("Answer")]
    assert events[-2:] == [UsageReport(input_tokens=5, output_tokens=30, reasoning_tokens=24), Finish("stop")]


async def test_usage_without_reasoning_details_reports_none(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    """A server that does not report reasoning tokens leaves reasoning_tokens None, not 0."""
    fake.script(Reply(chunks=["x"], usage=(1, 1)))
    events, _ = await collect(provider, make_request())
    assert events[-2] == UsageReport(input_tokens=1, output_tokens=1, reasoning_tokens=None)


async def test_long_reasoning_is_liveness_not_a_timeout(fake: FakeOpenAI) -> None:
    """Thinking longer than the first-token timeout, in steady pieces, ends normally with its answer."""
    fake.script(Reply(reasoning=["hmm "] * 8, chunks=["done"], between=0.25))
    p = make_provider(fake, first_token_timeout=1.0, between_token_timeout=1.0)
    try:
        events, error = await collect(p, make_request())
    finally:
        await p.aclose()
    assert error is None
    assert sum(isinstance(e, ReasoningDelta) for e in events) == 8 and text_of(events) == "done"


async def test_stall_after_reasoning_is_a_between_token_timeout(fake: FakeOpenAI) -> None:
    """A gap after reasoning started is timed by between_token_timeout and is not retried."""
    fake.script(Reply(reasoning=["hmm"], chunks=["late"], between=60))
    p = make_provider(fake, first_token_timeout=5.0, between_token_timeout=0.3)
    try:
        events, error = await collect(p, make_request())
    finally:
        await p.aclose()
    assert isinstance(error, UpstreamTimeout) and "mid-response" in error.message
    assert events == [ReasoningDelta("hmm")] and fake.request_count == 1


async def test_break_after_reasoning_is_not_retried(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    """Once reasoning was passed on, a dropped connection is not retried (it would repeat it)."""
    fake.script(Reply(reasoning=["a", "b"], chunks=["x"], drop_after=1), Reply(chunks=["again"]))
    events, error = await collect(provider, make_request())
    assert isinstance(error, UpstreamUnavailable)
    assert events == [ReasoningDelta("a")] and fake.request_count == 1
