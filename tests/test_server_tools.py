"""Server tools: loading by dotted path, running with a timeout, the clock example, profile fields."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

import pytest

from parley.protocol.tools import ToolSpec
from parley.server.config_error import ConfigError
from parley.server.profiles import parse_profiles
from parley.server.providers.base import Profile
from parley.server.tools import (
    MAX_OUTPUT_CHARS,
    ServerTools,
    Tool,
    ToolContext,
    ToolResult,
    clock,
    load_tool,
    run_tool,
)
from tests import server_tools

CTX = ToolContext(session_id="s1", response_id="r1", call_id="call_1", trace_id="t1")


def config_error(path: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_tool(path)
    return str(info.value)


# ------------------------------------------------------------------ the clock


async def test_clock_tells_the_time_in_a_zone() -> None:
    """The example tool returns this moment in the asked zone, as JSON."""
    result = await run_tool(clock.now, {"timezone": "Asia/Tokyo"}, CTX)
    assert result.call_id == "call_1" and not result.is_error
    moment = datetime.fromisoformat(result.output["iso"])
    assert moment.utcoffset() is not None and moment.utcoffset().total_seconds() == 9 * 3600
    assert result.output["timezone"] == "Asia/Tokyo" and isinstance(result.output["unix_ms"], int)
    utc = await run_tool(clock.now, {}, CTX)
    assert utc.output["timezone"] == "UTC" and utc.output["iso"].endswith("+00:00")


@pytest.mark.parametrize("zone", ["Mars/Olympus", "../../etc/passwd", "America"])
async def test_clock_unknown_zone_is_an_error_result(zone: str) -> None:
    """An unknown zone is an is_error result in the tool's own words."""
    result = await run_tool(clock.now, {"timezone": zone}, CTX)
    assert result.is_error and result.output.startswith("unknown time zone")


def test_clock_loads_by_its_documented_path() -> None:
    """parley.server.tools.clock:now loads as a valid tool that needs no approval."""
    tool = load_tool("parley.server.tools.clock:now")
    assert tool is clock.now and isinstance(tool, Tool) and tool.requires_approval is False
    assert ServerTools.load([Profile(name="p", tools=("parley.server.tools.clock:now",))]).specs("p") == (
        ToolSpec(name="get_current_time", description=clock.now.description, parameters=clock.PARAMETERS),
    )


# ------------------------------------------------------------------ the runner


async def test_returned_output_is_the_result() -> None:
    """A tool's string or JSON output is the result, normalised to what JSON keeps (tuples become lists)."""
    assert await run_tool(server_tools.repeat, {"text": "hi"}, CTX) == ToolResult("call_1", "hi")
    result = await run_tool(load_tool("tests.server_tools:Lookup"), {"id": "A-1"}, CTX)
    assert result == ToolResult("call_1", {"id": "A-1", "status": "shipped", "items": ["a", "b"]})


async def test_a_raising_tool_is_a_generic_error_and_the_traceback_only_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Any exception becomes 'tool NAME failed'; its text and traceback go to the server log only."""
    with caplog.at_level(logging.ERROR, logger="parley.tools"):
        result = await run_tool(server_tools.boom, {}, CTX)
    assert result == ToolResult("call_1", "tool boom failed", is_error=True)
    assert "hunter2" in caplog.text and "Traceback" in caplog.text


async def test_tool_error_is_reported_in_its_own_words() -> None:
    """ToolError's message is the is_error output, so the model can act on it."""
    assert await run_tool(server_tools.refuse, {}, CTX) == ToolResult(
        "call_1", "order A-1 does not exist", is_error=True
    )


async def test_timeout_cancels_the_tool_and_is_an_error_result() -> None:
    """A call past its timeout is cancelled and answered 'did not finish within N s'."""
    ctx = ToolContext(session_id="s", response_id="r", call_id="call_slow")
    result = await run_tool(server_tools.slow, {"seconds": 600}, ctx, timeout_s=0.05)
    assert result == ToolResult("call_slow", "tool slow did not finish within 0.05 s", is_error=True)
    assert "call_slow" in server_tools.CANCELLED


async def test_cancelling_the_caller_cancels_the_tool_without_a_result() -> None:
    """When the caller is cancelled (cancel, shutdown) the tool is cancelled and no result is made up."""
    ctx = ToolContext(session_id="s", response_id="r", call_id="call_cancel")
    task = asyncio.create_task(run_tool(server_tools.slow, {"seconds": 600}, ctx))
    for _ in range(1000):  # bounded: until the tool has started
        if ("slow", "call_cancel") in server_tools.STARTED:
            break
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "call_cancel" in server_tools.CANCELLED


async def test_non_json_and_oversized_outputs_are_error_results() -> None:
    """Output that is not JSON, or longer than MAX_OUTPUT_CHARS, is an is_error result naming the problem."""
    assert await run_tool(server_tools.not_json, {}, CTX) == ToolResult(
        "call_1", "tool not_json returned a value that is not JSON", is_error=True
    )
    assert await run_tool(server_tools.huge, {}, CTX) == ToolResult(
        "call_1", f"tool huge returned more than {MAX_OUTPUT_CHARS} characters", is_error=True
    )


# ------------------------------------------------------------------ the loader


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (
            "tests.server_tools.repeat",
            "server tool 'tests.server_tools.repeat': write it as 'package.module:attribute'",
        ),
        ("tests/server_tools:repeat", "write it as 'package.module:attribute'"),
        ("tests.no_such_module:x", "cannot import 'tests.no_such_module' (ModuleNotFoundError"),
        (
            "tests.broken_tool_module:x",
            "cannot import 'tests.broken_tool_module' (RuntimeError: this module is broken",
        ),
        ("tests.server_tools:missing", "module 'tests.server_tools' has no attribute 'missing'"),
        ("tests.server_tools:plain_function", "it must be a tool"),
        ("tests.server_tools:SyncTool", "it must be a tool"),
        ("tests.server_tools:BadName", "tool 'bad name': the name must be 1-64 letters"),
    ],
)
def test_bad_tool_paths_are_one_line_config_errors(path: str, expected: str) -> None:
    """Every way a tool path can be wrong is a ConfigError naming the path and the problem."""
    message = config_error(path)
    assert expected in message and "\n" not in message


def test_server_tools_per_profile() -> None:
    """Each profile gets its own tools by name, specs in order; a profile without tools has none."""
    tools = ServerTools.load(
        [
            Profile(name="support", tools=("tests.server_tools:Lookup", "parley.server.tools.clock:now")),
            Profile(name="plain"),
        ]
    )
    assert list(tools.tools("support")) == ["lookup_order", "get_current_time"]
    assert [s.name for s in tools.specs("support")] == ["lookup_order", "get_current_time"]
    assert tools.get("support", "get_current_time") is clock.now and tools.get("support", "nope") is None
    assert tools.tools("plain") == {} and tools.specs("plain") == () and tools.get("unknown", "x") is None


def test_two_tools_with_one_name_in_a_profile_are_refused() -> None:
    """Two paths whose tools share a name in one profile are a ConfigError naming the profile and tool."""
    with pytest.raises(ConfigError, match="profile 'p': two server tools are named 'repeat'"):
        ServerTools.load(
            [Profile(name="p", tools=("tests.server_tools:repeat", "tests.server_tools:repeat_alias"))]
        )


# ------------------------------------------------------------------ profile fields


def profile(**fields: object) -> Profile:
    return parse_profiles({"profiles": {"p": {"provider": "echo", **fields}}})["p"]


def test_profile_tools_and_reasoning_fields() -> None:
    """tools and reasoning parse from a profile; reasoning defaults to hide and tools to none."""
    assert (profile().tools, profile().reasoning) == ((), "hide")
    parsed = profile(tools=["parley.server.tools.clock:now"], reasoning="stream")
    assert parsed.tools == ("parley.server.tools.clock:now",) and parsed.reasoning == "stream"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"tools": "parley.server.tools.clock:now"}, "field 'tools': must be a list of strings"),
        ({"tools": [3]}, "field 'tools': must be a list of strings"),
        ({"tools": ["clock.now"]}, "field 'tools': 'clock.now' is not 'package.module:attribute'"),
        ({"tools": ["a:b", "a:b"]}, "field 'tools': 'a:b' is listed twice"),
        (
            {"reasoning": "show"},
            "field 'reasoning': must be \"hide\" (the default) or \"stream\", not 'show'",
        ),
        ({"params": {"tools": []}}, "field 'params.tools': is set by Parley"),
        ({"params": {"tool_choice": "auto"}}, "field 'params.tool_choice': is set by Parley"),
    ],
)
def test_bad_profile_tool_fields_are_clear(fields: dict, expected: str) -> None:
    """A bad tools or reasoning value is refused naming the profile and field."""
    with pytest.raises(ValueError) as info:
        profile(**fields)
    assert "profile 'p'" in str(info.value) and expected in str(info.value)
