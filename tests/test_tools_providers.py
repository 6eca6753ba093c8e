"""Tool declarations, the provider contract's tool and reasoning events, and echo's tool calls."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

from parley.protocol.errors import ErrorCode, SchemaValidationFailed
from parley.protocol.tools import (
    MAX_DESCRIPTION_CHARS,
    MAX_TOOLS,
    InvalidToolDeclaration,
    NamedToolChoice,
    ToolList,
    ToolSpec,
    check_tool_choice,
    combine_tools,
    parse_tools,
)
from parley.server.providers.base import (
    ChatMessage,
    Finish,
    ModelRequest,
    Profile,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    UsageReport,
    output_text,
    parse_arguments,
    tool_result_message,
)
from parley.server.providers.echo import ARGUMENT_PIECES, MAX_THINK_WORDS, EchoProvider

LOOKUP = {
    "name": "lookup_order",
    "description": "Find an order by id.",
    "parameters": {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]},
}
CLOCK = {"name": "clock", "description": "The time.", "parameters": {"type": "object", "properties": {}}}


def problem(raw: Any) -> str:
    with pytest.raises(InvalidToolDeclaration) as info:
        parse_tools(raw)
    return str(info.value)


# ------------------------------------------------------------------ declarations


def test_valid_declarations_parse_to_specs() -> None:
    """Declarations become specs in order; a missing description and parameters get their defaults."""
    tools = parse_tools([LOOKUP, {"name": "ping"}])
    assert [t.name for t in tools] == ["lookup_order", "ping"]
    assert tools[0].parameters == LOOKUP["parameters"]
    assert tools[1].description == "" and tools[1].parameters == {"type": "object", "properties": {}}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"name": "has space"}, "tool 'has space': the name must be 1-64 letters"),
        ({"name": "x" * 65}, "the name must be 1-64"),
        ({"name": ""}, "tool '': the name must be"),
        ({"description": "no name"}, "needs a string 'name'"),
        ("clock", "must be a JSON object"),
        ({"name": "a", "description": 3}, "tool 'a': 'description' must be a string"),
        (
            {"name": "a", "description": "d" * (MAX_DESCRIPTION_CHARS + 1)},
            "tool 'a': 'description' is longer",
        ),
        ({"name": "a", "parameters": []}, "tool 'a': 'parameters' must be a JSON Schema object"),
        ({"name": "a", "parameters": {"type": "string"}}, "tool 'a': 'parameters' must describe an object"),
        ({"name": "a", "parameters": {"properties": {}}}, "tool 'a': 'parameters' must describe an object"),
        (
            {"name": "a", "parameters": {"type": "object", "properties": {"x": {"type": 7}}}},
            "tool 'a': 'parameters' is not a valid JSON Schema at properties/x/type",
        ),
        (
            {"name": "a", "parameters": {"type": "object", "minProperties": 10**9}},
            "tool 'a': 'parameters': minProperties is 1000000000; the limit is 1000",
        ),
        (
            {"name": "a", "parameters": {"type": "object", "properties": {"x": {"$ref": "http://evil/"}}}},
            "tool 'a': 'parameters': $ref at /properties/x must point inside the schema",
        ),
    ],
)
def test_invalid_declaration_names_the_tool_and_problem(raw: Any, expected: str) -> None:
    """Each invalid declaration is refused with one line naming the tool and what is wrong."""
    assert expected in problem([raw])


def test_duplicate_names_are_refused() -> None:
    """Two tools with one name in a list are refused, naming the tool."""
    assert problem([LOOKUP, CLOCK, LOOKUP]) == "tool 'lookup_order': declared twice"


def test_too_many_tools_are_refused_before_checking_them() -> None:
    """A list longer than MAX_TOOLS is refused by its count, whatever its items."""
    assert (
        problem(["junk"] * (MAX_TOOLS + 1))
        == f"at most {MAX_TOOLS} tools may be declared, not {MAX_TOOLS + 1}"
    )
    assert len(parse_tools([{"name": f"t{i}"} for i in range(MAX_TOOLS)])) == MAX_TOOLS


def test_tools_must_be_a_list() -> None:
    """A non-list is refused with a message saying what tools must be."""
    assert "tools must be a list" in problem({"name": "a"})


def test_spec_constructor_runs_the_same_checks() -> None:
    """Building a ToolSpec in code (a server tool) is checked like a client declaration."""
    assert ToolSpec(name="ok").name == "ok"
    with pytest.raises(ValidationError, match="tool 'bad name': the name must be"):
        ToolSpec(name="bad name")


class _Wire(BaseModel):
    """Stands in for a message model that will carry ``tools`` (protocol/messages.py, part 2)."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)
    tools: ToolList | None = None


def test_tool_list_field_validates_json_frames() -> None:
    """As a strict message field, ToolList accepts a JSON array and reports problems naming the tool."""
    ok = _Wire.model_validate_json(json.dumps({"tools": [LOOKUP]}))
    assert ok.tools is not None and ok.tools[0].name == "lookup_order"
    with pytest.raises(ValidationError) as info:
        _Wire.model_validate_json(json.dumps({"tools": [LOOKUP, LOOKUP]}))
    assert "tool 'lookup_order': declared twice" in str(info.value)
    with pytest.raises(ValidationError) as info:
        _Wire.model_validate_json(json.dumps({"tools": [{"name": "a", "parameters": {"type": "array"}}]}))
    assert "tool 'a': 'parameters' must describe an object" in str(info.value)


def test_combine_tools_refuses_a_name_from_two_sources() -> None:
    """Server and client tools combine in order; the same name from two sources is refused."""
    server, client = parse_tools([CLOCK]), parse_tools([LOOKUP])
    assert [t.name for t in combine_tools(server, client)] == ["clock", "lookup_order"]
    with pytest.raises(InvalidToolDeclaration, match="tool 'clock': declared twice"):
        combine_tools(server, parse_tools([CLOCK]))
    with pytest.raises(InvalidToolDeclaration, match="at most"):
        combine_tools(
            parse_tools([{"name": f"a{i}"} for i in range(40)]),
            parse_tools([{"name": f"b{i}"} for i in range(40)]),
        )


def test_tool_choice_must_be_satisfiable() -> None:
    """A named or required choice needs declared tools; auto and none always pass."""
    tools = parse_tools([CLOCK])
    for ok in (None, "auto", "none", "required", NamedToolChoice(name="clock")):
        check_tool_choice(ok, tools)  # type: ignore[arg-type]
    check_tool_choice("none", ())
    with pytest.raises(InvalidToolDeclaration, match="no tools are declared"):
        check_tool_choice("required", ())
    with pytest.raises(InvalidToolDeclaration, match="tool 'other': named in tool_choice but not declared"):
        check_tool_choice(NamedToolChoice(name="other"), tools)


# ------------------------------------------------------------------ contract helpers


def test_parse_arguments_objects_empty_and_malformed() -> None:
    """Arguments parse to a dict, empty text is {}, and anything else is schema_validation_failed."""
    assert parse_arguments("t", '{"a": [1, 2]}') == {"a": [1, 2]}
    assert parse_arguments("t", "  ") == {}
    with pytest.raises(SchemaValidationFailed, match="tool 't' are not valid JSON") as info:
        parse_arguments("t", '{"a": ')
    assert info.value.code is ErrorCode.SCHEMA_VALIDATION_FAILED
    with pytest.raises(SchemaValidationFailed, match="not a JSON object"):
        parse_arguments("t", "[1]")


def test_tool_result_messages_render_output_as_text() -> None:
    """A result is a tool message for its call; JSON output is compact text and errors say so."""
    assert output_text("plain") == "plain"
    assert output_text({"b": "é", "a": 1}) == '{"b":"é","a":1}'
    assert tool_result_message("c1", {"ok": True}) == ChatMessage("tool", '{"ok":true}', tool_call_id="c1")
    assert (
        tool_result_message("c1", "denied by the user", is_error=True).content == "Error: denied by the user"
    )


def test_plain_chat_messages_are_unchanged() -> None:
    """ChatMessage(role, content) still builds a plain message with no call fields."""
    message = ChatMessage("user", "hi")
    assert (message.tool_calls, message.tool_call_id) == ((), None)


# ------------------------------------------------------------------ echo


async def run(messages: list[ChatMessage], **kw: Any) -> list[Any]:
    provider = EchoProvider(tokens_per_second=0, reply_tokens=kw.pop("reply_tokens", 20))
    request = ModelRequest(messages=messages, profile=Profile(), trace_id="t", **kw)
    return [ev async for ev in provider.stream(request)]


async def run_error(messages: list[ChatMessage], **kw: Any) -> tuple[list[Any], Exception]:
    provider = EchoProvider(tokens_per_second=0)
    request = ModelRequest(messages=messages, profile=Profile(), trace_id="t", **kw)
    events: list[Any] = []
    with pytest.raises(SchemaValidationFailed) as info:
        async for ev in provider.stream(request):
            events.append(ev)
    return events, info.value


TOOLS = parse_tools([LOOKUP, CLOCK])


async def test_echo_streams_a_declared_tool_call_and_finishes_with_tool_calls() -> None:
    """A /tool line naming a declared tool streams its arguments in pieces, then the call, then tool_calls."""
    args = '{"id": "A-1042"}'
    events = await run([ChatMessage("user", f"/tool lookup_order {args}")], tools=TOOLS)
    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert len(deltas) == ARGUMENT_PIECES and "".join(d.arguments_delta for d in deltas) == args
    assert {(d.index, d.call_id, d.name) for d in deltas} == {(0, calls[0].call_id, "lookup_order")}
    assert calls == [ToolCall(calls[0].call_id, "lookup_order", {"id": "A-1042"})]
    assert events.index(calls[0]) == events.index(deltas[-1]) + 1
    assert not any(isinstance(e, TextDelta) for e in events)
    assert events[-1] == Finish("tool_calls") and isinstance(events[-2], UsageReport)


async def test_echo_makes_two_calls_from_two_lines() -> None:
    """Several /tool lines make several calls in one response, each with its own index and id."""
    text = 'Please check both.\n/tool lookup_order {"id": "7"}\n/tool clock\n/tool unknown {"x": 1}'
    events = await run([ChatMessage("user", text)], tools=TOOLS)
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert [(c.name, c.arguments) for c in calls] == [("lookup_order", {"id": "7"}), ("clock", {})]
    assert calls[0].call_id != calls[1].call_id
    indexes = [e.index for e in events if isinstance(e, ToolCallDelta)]
    assert indexes == sorted(indexes) and set(indexes) == {0, 1}
    assert events[-1] == Finish("tool_calls")


async def test_echo_calls_are_deterministic() -> None:
    """The same conversation gives the same call ids and pieces; a different one gives other ids."""
    msgs = [ChatMessage("user", '/tool lookup_order {"id": "1"}')]
    first, again = await run(msgs, tools=TOOLS), await run(msgs, tools=TOOLS)
    assert first == again
    other = await run([ChatMessage("user", "earlier"), *msgs], tools=TOOLS)
    assert (
        next(e for e in other if isinstance(e, ToolCall)).call_id
        != next(e for e in first if isinstance(e, ToolCall)).call_id
    )


async def test_echo_ignores_tool_lines_without_declared_tools() -> None:
    """Without declared tools (or with tool_choice none) a /tool line is plain text, echoed as always."""
    msgs = [ChatMessage("user", "/tool clock {}")]
    plain = await run(msgs)
    assert await run(msgs, tools=TOOLS, tool_choice="none") == plain
    assert plain[-1] == Finish("stop") and "".join(
        e.text for e in plain if isinstance(e, TextDelta)
    ).startswith("Echo turn-1: /tool clock {} ")


async def test_echo_malformed_arguments_end_like_a_real_model() -> None:
    """Arguments that are not a JSON object stream as deltas, then raise schema_validation_failed."""
    events, error = await run_error([ChatMessage("user", '/tool lookup_order {"id": ')], tools=TOOLS)
    assert "".join(e.arguments_delta for e in events if isinstance(e, ToolCallDelta)) == '{"id":'
    assert not any(isinstance(e, ToolCall | Finish) for e in events)
    assert "tool 'lookup_order'" in str(error)


async def test_echo_schema_mismatch_is_left_to_the_core() -> None:
    """Well-formed arguments that miss the schema are still a call: the core's schema check refuses them."""
    events = await run([ChatMessage("user", '/tool lookup_order {"wrong": 1}')], tools=TOOLS)
    assert [e.arguments for e in events if isinstance(e, ToolCall)] == [{"wrong": 1}]


async def test_echo_required_choice_calls_with_a_schema_instance() -> None:
    """tool_choice required or named with no /tool line calls that tool with minimal valid arguments."""
    events = await run([ChatMessage("user", "hello")], tools=TOOLS, tool_choice="required")
    assert [(e.name, e.arguments) for e in events if isinstance(e, ToolCall)] == [
        ("lookup_order", {"id": "hello"})
    ]
    events = await run([ChatMessage("user", "hello")], tools=TOOLS, tool_choice=NamedToolChoice(name="clock"))
    assert [(e.name, e.arguments) for e in events if isinstance(e, ToolCall)] == [("clock", {})]
    events = await run([ChatMessage("user", "hello")], tools=TOOLS, tool_choice=NamedToolChoice(name="nope"))
    assert events[-1] == Finish("stop") and not any(isinstance(e, ToolCall) for e in events)


async def test_echo_replies_with_every_output_after_the_results() -> None:
    """Once results follow the calls, echo's reply is one fixed sentence holding each output verbatim."""
    user = ChatMessage("user", '/tool lookup_order {"id": "7"}\n/tool clock')
    first = await run([user], tools=TOOLS)
    calls = tuple(e for e in first if isinstance(e, ToolCall))
    history = [
        user,
        ChatMessage("assistant", "", tool_calls=calls),
        tool_result_message(calls[0].call_id, {"status": "shipped", "eta": "2 days"}),
        tool_result_message(calls[1].call_id, "boom", is_error=True),
    ]
    events = await run(history, tools=TOOLS)
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert text == (
        'Echo tool results: lookup_order returned {"status":"shipped","eta":"2 days"}; '
        "clock returned Error: boom. "
    )
    assert not any(isinstance(e, ToolCall) for e in events) and events[-1] == Finish("stop")
    assert await run(history, tools=TOOLS) == events


async def test_echo_thinks_first_when_asked() -> None:
    """/think N emits N reasoning words before the reply and reports them as reasoning tokens."""
    events = await run([ChatMessage("user", "/think 5 what is up")], reply_tokens=8)
    reasoning = [e for e in events if isinstance(e, ReasoningDelta)]
    assert len(reasoning) == 5 and events[:5] == reasoning and all(r.text.endswith(" ") for r in reasoning)
    assert sum(isinstance(e, TextDelta) for e in events) == 8
    usage = events[-2]
    assert usage.reasoning_tokens == 5 and usage.output_tokens == 13
    calls = await run([ChatMessage("user", "/think 2\n/tool clock")], tools=TOOLS)
    assert [type(e).__name__ for e in calls[:3]] == ["ReasoningDelta", "ReasoningDelta", "ToolCallDelta"]


async def test_echo_thinking_is_bounded() -> None:
    """A huge /think N is capped at MAX_THINK_WORDS."""
    events = await run([ChatMessage("user", "/think 999999999")], reply_tokens=1)
    assert sum(isinstance(e, ReasoningDelta) for e in events) == MAX_THINK_WORDS


async def test_echo_plain_text_reply_is_unchanged() -> None:
    """Plain text (tools declared, no directive) gets the same reply and usage as before tools existed."""
    msgs = [ChatMessage("user", "first"), ChatMessage("assistant", "x"), ChatMessage("user", "second one")]
    events = await run(msgs, tools=TOOLS, reply_tokens=25)
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert text.startswith("Echo turn-2: second one (earlier: first ) ")
    assert events[-2:] == [UsageReport(input_tokens=4, output_tokens=25), Finish("stop")]
    assert events == await run(msgs, reply_tokens=25)
