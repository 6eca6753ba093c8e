"""Server tools for tests (not a test module): loaded by dotted path, e.g. ``tests.server_tools:boom``."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from parley.server.tools import ToolContext, ToolError, function_tool

#: Calls each tool here has started, by call_id: proof of "ran once" for tests (this process only).
STARTED: list[tuple[str, str]] = []
#: Set when ``slow`` was cancelled (its timeout, or its caller gave up).
CANCELLED: list[str] = []

ECHO_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"text": {"type": "string", "maxLength": 200}},
    "required": ["text"],
}


@function_tool(description="Return the text it is given.", parameters=ECHO_PARAMETERS)
async def repeat(args: dict[str, Any], ctx: ToolContext) -> str:
    STARTED.append(("repeat", ctx.call_id))
    return str(args["text"])


@function_tool(
    description="Return the text, after the user approved.",
    parameters=ECHO_PARAMETERS,
    requires_approval=True,
)
async def guarded(args: dict[str, Any], ctx: ToolContext) -> str:
    STARTED.append(("guarded", ctx.call_id))
    return f"approved: {args['text']}"


@function_tool(description="Always fails with a secret in its exception.")
async def boom(args: dict[str, Any], ctx: ToolContext) -> str:
    STARTED.append(("boom", ctx.call_id))
    raise RuntimeError("database password is hunter2")


@function_tool(description="Fails the way a tool should: in words for the model.")
async def refuse(args: dict[str, Any], ctx: ToolContext) -> str:
    raise ToolError("order A-1 does not exist")


@function_tool(
    description="Sleeps for the given seconds (bounded).",
    parameters={"type": "object", "properties": {"seconds": {"type": "number", "maximum": 600}}},
)
async def slow(args: dict[str, Any], ctx: ToolContext) -> str:
    STARTED.append(("slow", ctx.call_id))
    try:
        await asyncio.sleep(float(args.get("seconds", 600)))
    except asyncio.CancelledError:
        CANCELLED.append(ctx.call_id)
        raise
    return "slept"


@function_tool(description="Returns something that is not JSON.")
async def not_json(args: dict[str, Any], ctx: ToolContext) -> Any:
    return {"when": {1, 2}}


@function_tool(description="Returns too much.")
async def huge(args: dict[str, Any], ctx: ToolContext) -> str:
    return "x" * 1_000_000


class Lookup:
    """A class-based tool: the loader instantiates it."""

    name = "lookup_order"
    description = "Find an order."
    parameters: dict[str, Any] = {"type": "object", "properties": {"id": {"type": "string"}}}
    requires_approval = False

    async def run(self, args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
        return {"id": args.get("id"), "status": "shipped", "items": ("a", "b")}


class SyncTool:
    """Not a tool: ``run`` is not async."""

    name = "sync"
    description = ""
    parameters: dict[str, Any] = {"type": "object"}
    requires_approval = False

    def run(self, args: dict[str, Any], ctx: ToolContext) -> str:
        return "no"


repeat_alias = repeat  # a second path to the same tool name
BadName = function_tool(name="bad name")(repeat.fn)


async def plain_function(args: dict[str, Any], ctx: ToolContext) -> str:
    return "not wrapped"


@function_tool(
    description="Writes its call id to the file PARLEY_TEST_TOOL_LOG names, then sleeps (crash tests).",
    parameters={"type": "object", "properties": {"seconds": {"type": "number", "maximum": 600}}},
)
async def logged_slow(args: dict[str, Any], ctx: ToolContext) -> str:
    path = os.environ.get("PARLEY_TEST_TOOL_LOG")
    if path:
        with open(path, "a") as fh:  # noqa: ASYNC230 (a line, once per test run)
            fh.write(ctx.call_id + "\n")
    await asyncio.sleep(float(args.get("seconds", 600)))
    return "slept"
