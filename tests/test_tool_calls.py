"""Tool calls end to end over real sockets, on the memory store and on a real redis-server.

Client tools (round trip, several calls, denial, duplicates, cancel, timeout), server tools
(with and without approval, failing), schema-invalid arguments, reasoning, and what history
and snapshots keep. Cross-instance cases are in tests/test_tool_calls_instances.py.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import websockets

from parley.client import ParleyClient
from parley.protocol import PROTOCOL_VERSION

from . import server_tools

SELECTION = {
    "name": "get_selection",
    "description": "The text the user selected in the page.",
    "parameters": {"type": "object", "properties": {"limit": {"type": "integer", "maximum": 100}}},
}
THEME = {
    "name": "set_theme",
    "description": "Switch the page's theme.",
    "parameters": {
        "type": "object",
        "properties": {"theme": {"enum": ["dark", "light"]}},
        "required": ["theme"],
    },
}
PROFILES = """
default = "main"
[profiles.main]
reasoning = "stream"
tools = [
  "tests.server_tools:repeat",
  "tests.server_tools:guarded",
  "tests.server_tools:boom",
  "tests.server_tools:slow",
]
"""


def profiles_file(tmp_path: Path) -> str:
    path = tmp_path / "profiles.toml"
    path.write_text(PROFILES)
    return str(path)


async def send(c: ParleyClient, content: str, tools: list[dict[str, Any]] | None = None, **extra: Any) -> str:
    cid = uuid.uuid4().hex
    msg = {"type": "message.send", "client_msg_id": cid, "content": content, **extra}
    if tools is not None:
        msg["tools"] = tools
    await c.send_json(msg)
    return cid


async def until(
    c: ParleyClient, kind: str, timeout: float = 10.0
) -> tuple[dict[str, Any], list[dict[str, Any]]]:  # noqa: ASYNC109
    """Events up to (and with) the first of type ``kind``: that event and all read before it."""
    seen: list[dict[str, Any]] = []
    while True:
        ev = await c.next_event(timeout=timeout)
        seen.append(ev)
        if ev["type"] == kind:
            return ev, seen


async def result(c: ParleyClient, call_id: str, output: Any, is_error: bool | None = None) -> None:
    msg: dict[str, Any] = {"type": "tool.result", "call_id": call_id, "output": output}
    if is_error is not None:
        msg["is_error"] = is_error
    await c.send_json(msg)


def text_of(events: list[dict[str, Any]], rid: str) -> str:
    return "".join(e["text"] for e in events if e["type"] == "response.delta" and e["response_id"] == rid)


async def test_client_tool_round_trip(server: Any) -> None:
    """A call streams its arguments, ends the response with tool_calls; the result is logged once and continues it."""
    async with ParleyClient(server.url) as c:
        await send(c, '/tool get_selection {"limit": 5}', [SELECTION])
        done, events = await until(c, "response.completed")
        rid = done["response_id"]
        assert done["finish_reason"] == "tool_calls"
        deltas = [e for e in events if e["type"] == "response.tool_call.delta"]
        call = next(e for e in events if e["type"] == "response.tool_call")
        assert "".join(d["arguments_delta"] for d in deltas) == '{"limit": 5}'
        assert {d["call_id"] for d in deltas} == {call["call_id"]} and deltas[0]["name"] == "get_selection"
        assert call == {
            "seq": call["seq"],
            "type": "response.tool_call",
            "response_id": rid,
            "call_id": call["call_id"],
            "name": "get_selection",
            "arguments": {"limit": 5},
            "server": False,
        }
        await result(c, call["call_id"], {"text": "hello world"})
        accepted, _ = await until(c, "tool.result.accepted")
        assert accepted["response_id"] == rid and accepted["output"] == {"text": "hello world"}
        assert accepted["is_error"] is False
        started, _ = await until(c, "response.started")
        assert started["continues"] == rid
        final, events = await until(c, "response.completed")
        assert final["response_id"] == started["response_id"] and final["finish_reason"] == "stop"
        assert (
            text_of(events, final["response_id"])
            == 'Echo tool results: get_selection returned {"text":"hello world"}. '
        )
        await result(c, call["call_id"], "again")
        dup = await c.next_event("tool.result.duplicate")
        assert dup == {
            "type": "tool.result.duplicate",
            "call_id": call["call_id"],
            "response_id": rid,
            "accepted_seq": accepted["seq"],
        }
