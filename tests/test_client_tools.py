"""The Python client's tools against a real server (issue 17): a round trip, a denial, a pending call
answered by a new process resuming the session, a server tool's approval; the log checked each time.

The echo model makes the calls: ``/tool NAME {json args}`` naming a declared tool.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Literal

from parley.client import ParleyClient, PendingCall, tool

from .support import live_server
from .test_client import whole_log


def quick(**extra: Any) -> Any:
    return live_server(store="memory://", echo_tokens_per_second=0, echo_reply_tokens=12, **extra)


def continuations(log: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in log if e["type"] == "response.started" and e.get("continues")]


def accepted_results(log: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in log if e["type"] == "tool.result.accepted"]


@tool
def set_theme(theme: Literal["light", "dark"]) -> str:
    """Switch the page between light and dark."""
    return f"theme is {theme}"


async def test_a_client_tool_round_trip_ends_in_the_continuation() -> None:
    """The call runs the handler; the result is logged once; the continuation's reply contains it."""
    async with quick() as srv:
        async with ParleyClient(srv.url, tools=[set_theme]) as c:
            async with c.stream('/tool set_theme {"theme": "dark"}') as turn:
                async for _ in turn:
                    pass
            assert turn.finish_reason == "stop" and "theme is dark" in turn.text
            (call,) = turn.tool_calls
            assert call.done and call.output == "theme is dark" and not call.is_error
            assert len(turn.response_ids) == 2
        log = await whole_log(srv.url, c.session_id or "", c.resume_token or "")
    assert len(accepted_results(log)) == 1 and len(continuations(log)) == 1
    assert [e["finish_reason"] for e in log if e["type"] == "response.completed"] == ["tool_calls", "stop"]


async def test_a_denial_is_logged_as_an_error_result_and_the_reply_continues() -> None:
    """The approval callback says no: 'denied by the user' is the logged result; the handler never runs."""
    runs: list[str] = []

    @tool(approve=True)
    def paint(theme: str) -> str:
        """Paint the page."""
        runs.append(theme)
        return theme

    async with quick() as srv:
        async with ParleyClient(srv.url, tools=[paint], approve=lambda call: False) as c:
            reply = await c.ask('/tool paint {"theme": "dark"}', timeout=20)
        assert reply.finish_reason == "stop" and runs == []
        log = await whole_log(srv.url, c.session_id or "", c.resume_token or "")
    (result,) = accepted_results(log)
    assert result["is_error"] is True and result["output"] == "denied by the user"


async def test_a_new_process_answers_the_call_an_earlier_one_left_pending() -> None:
    """A call one client left unanswered is run by a new one resuming from seq 0: one continuation."""
    spec = {"name": "add", "parameters": {"type": "object", "properties": {"a": {}, "b": {}}}}
    async with quick() as srv:
        first = ParleyClient(srv.url)
        await first.connect()
        await first.send('/tool add {"a": 2, "b": 3}', tools=[spec])  # declared without a handler
        async with asyncio.timeout(10):
            while not first.pending_calls:
                await first.next_event()
        await first.close()
        assert first.session_id and first.resume_token

        two = ParleyClient(
            srv.url,
            session_id=first.session_id,
            resume_token=first.resume_token,
            last_seq=0,
            tools=[(spec, lambda a, b: a + b)],
        )
        async with two:
            async with asyncio.timeout(20):
                async for ev in two.events():
                    if ev["type"] == "response.completed" and ev["finish_reason"] != "tool_calls":
                        break
        log = await whole_log(srv.url, first.session_id, first.resume_token)
    (result,) = accepted_results(log)
    assert result["output"] == 5
    assert len(continuations(log)) == 1


async def test_a_server_tool_that_asks_is_approved_by_the_callback(tmp_path: Path) -> None:
    """A server tool that requires approval asks the callback; its yes is tool.approve; the tool runs once."""
    profiles = tmp_path / "profiles.toml"
    profiles.write_text(
        '[profiles.guarded]\nprovider = "echo"\nmodel = "echo"\ntools = ["tests.server_tools:guarded"]\n'
    )
    asked: list[PendingCall] = []

    def approve(call: PendingCall) -> bool:
        asked.append(call)
        return True

    async with quick(profiles=str(profiles)) as srv, ParleyClient(srv.url, approve=approve) as c:
        reply = await c.ask('/tool guarded {"text": "hi"}', timeout=20)
        assert reply.finish_reason == "stop"
        log = await whole_log(srv.url, c.session_id or "", c.resume_token or "")
    assert [(a.name, a.server, a.arguments) for a in asked] == [("guarded", True, {"text": "hi"})]
    (result,) = accepted_results(log)
    assert result["output"] == "approved: hi" and result["is_error"] is False
