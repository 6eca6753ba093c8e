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
    c: ParleyClient,
    kind: str,
    timeout: float = 10.0,  # noqa: ASYNC109
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
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
    """A call streams its arguments, ends the response (tool_calls); its result, logged once, continues."""
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


async def test_two_calls_in_one_response_continue_after_both(server: Any) -> None:
    """Two calls in one response: the first result logs only; the second starts the continuation."""
    async with ParleyClient(server.url) as c:
        await send(c, '/tool get_selection {}\n/tool set_theme {"theme": "dark"}', [SELECTION, THEME])
        done, events = await until(c, "response.completed")
        calls = [e for e in events if e["type"] == "response.tool_call"]
        assert [x["name"] for x in calls] == ["get_selection", "set_theme"] and done[
            "finish_reason"
        ] == "tool_calls"
        assert len({x["call_id"] for x in calls}) == 2
        await result(c, calls[1]["call_id"], "ok")
        await until(c, "tool.result.accepted")
        await c.send_json({"type": "ping", "nonce": "n"})
        _, between = await until(c, "pong")
        assert all(e["type"] != "response.started" for e in between)
        await result(c, calls[0]["call_id"], "some text")
        started, _ = await until(c, "response.started")
        _final, events = await until(c, "response.completed")
        assert text_of(events, started["response_id"]) == (
            "Echo tool results: set_theme returned ok; get_selection returned some text. "
        )


async def test_denial_is_an_error_result(server: Any) -> None:
    """A denied call is a result with is_error: the model reads it as an error and the turn goes on."""
    async with ParleyClient(server.url) as c:
        await send(c, '/tool set_theme {"theme": "dark"}', [THEME])
        _done, events = await until(c, "response.completed")
        call = next(e for e in events if e["type"] == "response.tool_call")
        await result(c, call["call_id"], "denied by the user", is_error=True)
        accepted, _ = await until(c, "tool.result.accepted")
        assert accepted["is_error"] is True and accepted["output"] == "denied by the user"
        final, events = await until(c, "response.completed")
        assert "set_theme returned Error: denied by the user." in text_of(events, final["response_id"])


async def test_hello_tools_serve_every_turn_of_the_connection(server: Any) -> None:
    """Tools declared in hello are offered on each message.send of that connection."""
    async with websockets.connect(server.url, subprotocols=[PROTOCOL_VERSION]) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "hello", "protocol": PROTOCOL_VERSION, "tools": [SELECTION]}))
        assert json.loads(await ws.recv())["type"] == "session.ready"
        await ws.send(
            json.dumps({"type": "message.send", "client_msg_id": "m1", "content": "/tool get_selection"})
        )
        kinds = []
        while not kinds or kinds[-1]["type"] != "response.completed":
            kinds.append(json.loads(await ws.recv()))
        assert kinds[-1]["finish_reason"] == "tool_calls"
        assert any(e["type"] == "response.tool_call" and e["name"] == "get_selection" for e in kinds)


async def test_bad_declarations_and_unknown_calls_are_invalid_messages(server: Any) -> None:
    """A bad declaration names the tool; an unknown call_id is invalid_message with a ref; nothing logged."""
    async with ParleyClient(server.url) as c:
        bad = {**SELECTION, "parameters": {"type": "string"}}
        cid = await send(c, "hi", [bad])
        err = await c.next_event("error")
        assert err["code"] == "invalid_message" and "get_selection" in err["message"]
        assert err["ref"] == {"type": "message.send", "client_msg_id": cid}
        await send(c, "hi", [SELECTION, SELECTION])
        assert "declared twice" in (await c.next_event("error"))["message"]
        await send(c, "hi", [SELECTION], tool_choice={"name": "set_theme"})
        assert "set_theme" in (await c.next_event("error"))["message"]
        await result(c, "call_nope", "x")
        err = await c.next_event("error")
        assert err["code"] == "invalid_message" and err["ref"] == {
            "type": "tool.result",
            "call_id": "call_nope",
        }
        assert c.last_seq == 0


async def test_busy_while_waiting_then_cancel_ends_the_wait(server: Any) -> None:
    """While a response waits, a new message is busy; a cancel ends the wait; later results are refused."""
    async with ParleyClient(server.url) as c:
        await send(c, "/tool get_selection", [SELECTION])
        done, events = await until(c, "response.completed")
        call = next(e for e in events if e["type"] == "response.tool_call")
        cid = await send(c, "something else")
        busy = await c.next_event("error")
        assert (
            busy["code"] == "busy"
            and busy["ref"]["client_msg_id"] == cid
            and "tool results" in busy["message"]
        )
        await c.cancel()
        started, _ = await until(c, "response.started")
        assert started["continues"] == done["response_id"]
        ended, _ = await until(c, "response.completed")
        assert ended["response_id"] == started["response_id"] and ended["finish_reason"] == "cancelled"
        await result(c, call["call_id"], "late")
        err = await c.next_event("error")
        assert err["code"] == "invalid_message"
        assert err["ref"] == {
            "type": "tool.result",
            "call_id": call["call_id"],
            "response_id": done["response_id"],
        }
        await c.cancel(done["response_id"])
        assert (await c.next_event("error"))["code"] == "invalid_message"  # nothing waits any more
        await send(c, "after the cancel")
        final, _ = await until(c, "response.completed")
        assert final["finish_reason"] == "stop"


async def test_a_wait_past_the_timeout_ends_with_tool_timeout(server_factory: Any) -> None:
    """No result within PARLEY_TOOL_RESULT_TIMEOUT_MS: the continuation ends with error tool_timeout."""
    async with server_factory(tool_result_timeout_ms=300, reaper_interval_ms=100) as live:
        async with ParleyClient(live.url) as c:
            await send(c, "/tool get_selection", [SELECTION])
            done, events = await until(c, "response.completed")
            call = next(e for e in events if e["type"] == "response.tool_call")
            started, _ = await until(c, "response.started")
            assert started["continues"] == done["response_id"]
            ended, _ = await until(c, "response.completed")
            assert ended["finish_reason"] == "error"
            assert ended["error"]["code"] == "tool_timeout" and ended["error"]["retryable"] is False
            await result(c, call["call_id"], "late")
            assert (await c.next_event("error"))["code"] == "invalid_message"


async def test_server_tool_runs_in_the_continuation(server_factory: Any, tmp_path: Path) -> None:
    """A server tool's call is logged with server: true, run by the server once, and its result logged."""
    async with server_factory(profiles=profiles_file(tmp_path)) as live, ParleyClient(live.url) as c:
        await send(c, '/tool repeat {"text": "from the server"}')
        done, events = await until(c, "response.completed")
        call = next(e for e in events if e["type"] == "response.tool_call")
        assert call["server"] is True and done["finish_reason"] == "tool_calls"
        started, _ = await until(c, "response.started")
        assert started["continues"] == done["response_id"]
        accepted, _ = await until(c, "tool.result.accepted")
        assert accepted == {
            "seq": accepted["seq"],
            "type": "tool.result.accepted",
            "response_id": done["response_id"],
            "call_id": call["call_id"],
            "output": "from the server",
            "is_error": False,
        }
        final, events = await until(c, "response.completed")
        assert text_of(events, final["response_id"]) == "Echo tool results: repeat returned from the server. "
        assert server_tools.STARTED.count(("repeat", call["call_id"])) == 1
        await result(c, call["call_id"], "mine")  # a server tool's result is the server's
        assert (await c.next_event("tool.result.duplicate"))["accepted_seq"] == accepted["seq"]


async def test_server_tool_with_approval_waits_for_it(server_factory: Any, tmp_path: Path) -> None:
    """An approval-gated call waits (approval_requested); approval runs it, denial logs the denied result."""
    async with server_factory(profiles=profiles_file(tmp_path)) as live, ParleyClient(live.url) as c:
        for approved in (True, False):
            await send(c, f'/tool guarded {{"text": "{approved}"}}')
            done, events = await until(c, "response.completed")
            asked = next(e for e in events if e["type"] == "tool.approval_requested")
            assert asked["name"] == "guarded" and asked["arguments"] == {"text": str(approved)}
            assert asked["response_id"] == done["response_id"]
            await result(c, asked["call_id"], "client's")
            assert (await c.next_event("error"))["code"] == "invalid_message"
            await c.send_json({"type": "tool.approve", "call_id": asked["call_id"], "approved": approved})
            accepted, _ = await until(c, "tool.result.accepted")
            if approved:
                assert accepted["output"] == "approved: True" and accepted["is_error"] is False
                assert server_tools.STARTED.count(("guarded", asked["call_id"])) == 1
            else:
                assert accepted["output"] == "denied by the user" and accepted["is_error"] is True
                assert ("guarded", asked["call_id"]) not in server_tools.STARTED
            final, _ = await until(c, "response.completed")
            assert final["finish_reason"] == "stop"
            await c.send_json({"type": "tool.approve", "call_id": asked["call_id"], "approved": True})
            assert (await c.next_event("error"))["code"] == "invalid_message"


async def test_server_tool_that_raises_is_an_error_result(server_factory: Any, tmp_path: Path) -> None:
    """A server tool that raises gives an is_error result without its exception's text; the turn goes on."""
    async with server_factory(profiles=profiles_file(tmp_path)) as live, ParleyClient(live.url) as c:
        await send(c, "/tool boom")
        accepted, _ = await until(c, "tool.result.accepted")
        assert accepted["is_error"] is True and accepted["output"] == "tool boom failed"
        final, events = await until(c, "response.completed")
        assert final["finish_reason"] == "stop" and "hunter2" not in json.dumps(events)


async def test_mixed_server_and_client_calls(server_factory: Any, tmp_path: Path) -> None:
    """A response calling a client and a server tool waits for the client; the server tool runs after it."""
    async with server_factory(profiles=profiles_file(tmp_path)) as live, ParleyClient(live.url) as c:
        await send(c, '/tool repeat {"text": "srv"}\n/tool get_selection', [SELECTION])
        _done, events = await until(c, "response.completed")
        client_call = next(e for e in events if e["type"] == "response.tool_call" and not e["server"])
        await result(c, client_call["call_id"], "cli")
        final, events = await until(c, "response.completed")
        accepted = [e["output"] for e in events if e["type"] == "tool.result.accepted"]
        assert accepted == ["cli", "srv"]
        assert (
            text_of(events, final["response_id"])
            == "Echo tool results: get_selection returned cli; repeat returned srv. "
        )


async def test_schema_invalid_arguments_end_the_response(server: Any) -> None:
    """Arguments missing the schema, or not JSON, end the response (schema_validation_failed); no call."""
    async with ParleyClient(server.url) as c:
        for line in ('/tool set_theme {"theme": "blue"}', "/tool set_theme {oops"):
            await send(c, line, [THEME])
            done, events = await until(c, "response.completed")
            assert done["finish_reason"] == "error" and done["error"]["code"] == "schema_validation_failed"
            assert "set_theme" in done["error"]["message"]
            assert not [e for e in events if e["type"] == "response.tool_call"]
        await send(c, "fine now")
        assert (await until(c, "response.completed"))[0]["finish_reason"] == "stop"


async def test_reasoning_streams_when_the_profile_says_so(server_factory: Any, tmp_path: Path) -> None:
    """With reasoning = "stream", reasoning deltas are logged; usage counts reasoning tokens either way."""
    async with server_factory(profiles=profiles_file(tmp_path)) as live, ParleyClient(live.url) as c:
        await send(c, "/think 7 hello")
        done, events = await until(c, "response.completed")
        words = "".join(e["text"] for e in events if e["type"] == "response.reasoning.delta").split()
        assert len(words) == 7 and done["usage"]["reasoning_tokens"] == 7
    async with server_factory() as live, ParleyClient(live.url) as c:
        await send(c, "/think 7 hello")
        done, events = await until(c, "response.completed")
        assert not [e for e in events if e["type"] == "response.reasoning.delta"]
        assert done["usage"]["reasoning_tokens"] == 7


async def test_required_tool_choice_calls_without_a_directive(server: Any) -> None:
    """tool_choice "required" makes a call; the continuation is not forced to call again."""
    async with ParleyClient(server.url) as c:
        await send(c, "anything", [THEME], tool_choice="required")
        _done, events = await until(c, "response.completed")
        call = next(e for e in events if e["type"] == "response.tool_call")
        assert call["arguments"] == {"theme": "dark"}
        await result(c, call["call_id"], "done")
        final, _ = await until(c, "response.completed")
        assert final["finish_reason"] == "stop"


async def test_history_and_snapshot_keep_calls_and_results(server_factory: Any) -> None:
    """The next turn's model sees the earlier call and result; a snapshot lists them as turns."""
    async with server_factory(log_max_len=10, echo_reply_tokens=30) as live:
        async with ParleyClient(live.url) as c:
            await send(c, '/tool set_theme {"theme": "light"}', [THEME])
            done, events = await until(c, "response.completed")
            call = next(e for e in events if e["type"] == "response.tool_call")
            await result(c, call["call_id"], {"ok": True})
            await until(c, "response.started")
            await until(c, "response.completed")
            await send(c, "and now?")
            later, events = await until(c, "response.completed")
            assert "(earlier: /tool set_theme" in text_of(events, later["response_id"])
            sid, token = c.session_id, c.resume_token
        async with ParleyClient(live.url, session_id=sid, resume_token=token, last_seq=1) as again:
            snap = await again.next_event("session.snapshot")
        turns = snap["turns"]
        assert [t["role"] for t in turns] == ["user", "assistant", "tool", "assistant", "user", "assistant"]
        assert turns[1]["tool_calls"] == [
            {
                "call_id": call["call_id"],
                "name": "set_theme",
                "arguments": {"theme": "light"},
                "server": False,
            }
        ]
        assert turns[1]["finish_reason"] == "tool_calls"
        assert turns[2]["id"] == call["call_id"] and turns[2]["output"] == {"ok": True}
        assert turns[2]["response_id"] == done["response_id"] and turns[2]["is_error"] is False
        assert turns[3]["content"].startswith("Echo tool results: set_theme returned")
