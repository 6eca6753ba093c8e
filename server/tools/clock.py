"""The example server tool: the server's clock (``tools = ["parley.server.tools.clock:now"]``).

A model cannot know the time; this tells it, in any IANA time zone. It is the
tool the tests and the demo enable, so it is deliberately small and safe to run
without approval.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .base import ToolContext, ToolError, function_tool

PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "timezone": {
            "type": "string",
            "description": "An IANA time zone such as 'Europe/Paris'; default UTC.",
            "maxLength": 64,
        }
    },
    "additionalProperties": False,
}


@function_tool(
    name="get_current_time",
    description="The current date and time on the server, in the given IANA time zone (default UTC).",
    parameters=PARAMETERS,
)
async def now(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    """``{"iso": ..., "timezone": ..., "unix_ms": ...}`` for this moment."""
    name = args.get("timezone") or "UTC"
    try:
        zone = UTC if name == "UTC" else ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a directory such as "America"
        raise ToolError(f"unknown time zone {name!r}; use an IANA name such as 'Europe/Paris'") from None
    moment = datetime.now(zone)
    return {
        "iso": moment.isoformat(timespec="seconds"),
        "timezone": name,
        "unix_ms": int(moment.timestamp() * 1000),
    }
