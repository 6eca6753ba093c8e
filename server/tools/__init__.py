"""Server tools: functions the model may call that Parley itself runs (a profile enables them).

A server tool is any object with ``name``, ``description``, ``parameters`` (a JSON
Schema object), ``requires_approval`` and ``async def run(args, ctx)``
(``Tool``); ``function_tool`` makes one from an async function. A profile lists
them by dotted path (``tools = ["mypkg.tools:lookup_order"]``); ``ServerTools``
imports and checks every one at start-up, and ``run_tool`` runs one call with a
timeout, turning any failure into an ``is_error`` result (never a traceback).
``parley.server.tools.clock:now`` is the example every test and the demo use.
"""

from __future__ import annotations

from .base import FunctionTool, Tool, ToolContext, ToolError, ToolResult, function_tool, spec_of
from .registry import ServerTools, load_tool
from .runner import DEFAULT_TIMEOUT_S, MAX_OUTPUT_CHARS, run_tool

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "MAX_OUTPUT_CHARS",
    "FunctionTool",
    "ServerTools",
    "Tool",
    "ToolContext",
    "ToolError",
    "ToolResult",
    "function_tool",
    "load_tool",
    "run_tool",
    "spec_of",
]
