"""Running one server-tool call: bounded in time and size, and every failure a clear ``is_error`` result.

A tool is other people's code: it may raise, hang, or return something that is
not JSON. None of that may end the response with a traceback or leave a client
waiting, so ``run_tool`` always returns a ``ToolResult``:

    the tool ...                       result output (is_error)
    returns a string / JSON value      the value (False)
    raises ToolError("msg")            "msg" (True): the tool's own words
    raises anything else               "tool NAME failed" (True); the traceback goes to the log only
    runs longer than timeout_s         "tool NAME did not finish within N s" (True); it is cancelled
    returns a non-JSON value           "tool NAME returned a value that is not JSON" (True)
    returns over MAX_OUTPUT_CHARS      "tool NAME returned more than N characters" (True)

Cancelling the caller (a cancelled response, shutdown) cancels the tool and is
not turned into a result: the core decides what a cancelled call means.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from ..providers.base import output_text
from .base import Tool, ToolContext, ToolError, ToolResult

log = logging.getLogger("parley.tools")

#: How long one call may run unless the caller says otherwise: a lookup, not a batch job.
DEFAULT_TIMEOUT_S = 30.0
#: Characters of output one call may return: it is logged and sent to the model on every later turn.
MAX_OUTPUT_CHARS = 64 * 1024
#: Characters of a ToolError message kept (it is shown to the model and the client).
MAX_ERROR_CHARS = 1000


async def run_tool(
    tool: Tool, args: dict[str, Any], ctx: ToolContext, timeout_s: float = DEFAULT_TIMEOUT_S
) -> ToolResult:
    """Run ``tool`` once for ``ctx.call_id`` and return its result, whatever the tool does."""
    extra = {"trace_id": ctx.trace_id, "call_id": ctx.call_id, "tool": tool.name}
    try:
        async with asyncio.timeout(timeout_s):
            output = await tool.run(args, ctx)
    except ToolError as exc:
        log.info("tool %s reported an error: %s", tool.name, exc, extra=extra)
        return ToolResult(
            ctx.call_id, (str(exc) or f"tool {tool.name} failed")[:MAX_ERROR_CHARS], is_error=True
        )
    except TimeoutError:
        log.warning("tool %s timed out after %.1fs", tool.name, timeout_s, extra=extra)
        return ToolResult(
            ctx.call_id, f"tool {tool.name} did not finish within {timeout_s:g} s", is_error=True
        )
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("tool %s failed", tool.name, extra=extra)
        return ToolResult(ctx.call_id, f"tool {tool.name} failed", is_error=True)
    try:
        size = len(output_text(output))
    except (TypeError, ValueError):  # not JSON-serialisable (a set, a datetime, a circular dict ...)
        log.error("tool %s returned a value that is not JSON: %r", tool.name, type(output), extra=extra)
        return ToolResult(ctx.call_id, f"tool {tool.name} returned a value that is not JSON", is_error=True)
    if size > MAX_OUTPUT_CHARS:
        log.error("tool %s returned %d characters", tool.name, size, extra=extra)
        return ToolResult(
            ctx.call_id, f"tool {tool.name} returned more than {MAX_OUTPUT_CHARS} characters", is_error=True
        )
    if not isinstance(output, str):
        output = json.loads(output_text(output))  # exactly what will be logged (tuples become lists ...)
    return ToolResult(ctx.call_id, output)
