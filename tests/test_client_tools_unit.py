"""The Python client's tool calls against a scripted WebSocket peer: declarations, handlers, approval,
errors, pending calls rebuilt from a replay, idempotent results, server-tool approval, reasoning."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import pytest
from websockets.asyncio.server import ServerConnection

from parley.client import ClientTool, ParleyClient, ParleyClosed, PendingCall, tool
from parley.protocol.tools import InvalidToolDeclaration

from .test_client import fake_server, ready


class Peer:
    """One scripted server connection: numbered logged events, frames the client sent, by type."""

    def __init__(self, ws: ServerConnection, log: list[dict[str, Any]]) -> None:
        self.ws = ws
        self.log = log  # the session's log, shared across connections

    async def emit(self, **event: Any) -> dict[str, Any]:
        logged = {"seq": len(self.log) + 1, **event}
        self.log.append(logged)
        await self.ws.send(json.dumps(logged))
        return logged

    async def say(self, **event: Any) -> None:
        await self.ws.send(json.dumps(event))  # ephemeral: no seq

    async def expect(self, kind: str) -> dict[str, Any]:
        """The next frame of type ``kind`` (others are skipped), within 5 s."""
        async with asyncio.timeout(5):
            while True:
                frame: dict[str, Any] = json.loads(await self.ws.recv())
                if frame["type"] == kind:
                    return frame

    async def turn(self, calls: list[dict[str, Any]], *, rid: str = "r1", finish: bool = True) -> str:
        """Accept a message.send and stream a response that calls ``calls``; returns its client_msg_id."""
        send = await self.expect("message.send")
        cid = send["client_msg_id"]
        await self.emit(type="message.accepted", client_msg_id=cid, message_id="m1", content=send["content"])
        await self.emit(
            type="response.started", response_id=rid, in_reply_to="m1", profile="p@1", trace_id="t"
        )
        for call in calls:
            text = json.dumps(call["arguments"])
            for piece in (text[: len(text) // 2], text[len(text) // 2 :]):
                await self.emit(
                    type="response.tool_call.delta",
                    response_id=rid,
                    call_id=call["call_id"],
                    name=call["name"],
                    arguments_delta=piece,
                )
            await self.emit(type="response.tool_call", response_id=rid, server=False, **call)
        if finish:
            await self.emit(type="response.completed", response_id=rid, finish_reason="tool_calls", usage={})
        return str(cid)

    async def accept(self, result: dict[str, Any], *, rid: str = "r1") -> None:
        await self.emit(
            type="tool.result.accepted",
            response_id=rid,
            call_id=result["call_id"],
            output=result["output"],
            is_error=bool(result.get("is_error")),
        )

    async def reply(self, text: str, *, rid: str = "r2", continues: str = "r1") -> None:
        await self.emit(
            type="response.started",
            response_id=rid,
            in_reply_to="m1",
            profile="p@1",
            trace_id="t2",
            continues=continues,
        )
        await self.emit(type="response.delta", response_id=rid, text=text)
        await self.emit(type="response.completed", response_id=rid, finish_reason="stop", usage={})


def scripted(
    script: Callable[[Peer, dict[str, Any]], Awaitable[None]],
) -> tuple[Callable[[ServerConnection], Awaitable[None]], list[dict[str, Any]], list[dict[str, Any]]]:
    """A connection handler running ``script`` after session.ready; the log and the hellos it saw."""
    log: list[dict[str, Any]] = []
    hellos: list[dict[str, Any]] = []

    async def handler(ws: ServerConnection) -> None:
        hello = json.loads(await ws.recv())
        hellos.append(hello)
        resumed = "session_id" in hello
        await ws.send(ready(resumed=resumed, last_seq=len(log)))
        if resumed:
            for ev in log[hello.get("last_seq", 0) :]:
                await ws.send(json.dumps(ev))
        await script(Peer(ws, log), hello)
        await ws.wait_closed()

    return handler, log, hellos


@tool
def set_theme(theme: Literal["light", "dark"]) -> str:
    """Switch the page between light and dark."""
    return f"theme is {theme}"


# ------------------------------------------------------------------ declarations


def test_a_decorated_function_declares_its_name_docstring_and_signature() -> None:
    """@tool takes the name from the function, the description from its docstring, parameters from hints."""
    assert isinstance(set_theme, ClientTool)
    assert set_theme.spec.name == "set_theme"
    assert set_theme.spec.description == "Switch the page between light and dark."
    assert set_theme.spec.parameters == {
        "type": "object",
        "properties": {"theme": {"enum": ["light", "dark"], "type": "string"}},
        "required": ["theme"],
    }
    assert set_theme(theme="dark") == "theme is dark"  # still callable as itself


def test_bad_declarations_and_an_approval_tool_without_a_callback_are_refused_at_once() -> None:
    """A bad name fails with the protocol's own message; approve=True needs an approval callback."""
    with pytest.raises(InvalidToolDeclaration, match="tool"):
        ParleyClient("ws://127.0.0.1:9/v1/ws", tools=[({"name": "no spaces please"}, lambda: "x")])

    @tool(approve=True)
    def wipe() -> str:
        return "wiped"

    with pytest.raises(ValueError, match="approve"):
        ParleyClient("ws://127.0.0.1:9/v1/ws", tools=[wipe])


# ------------------------------------------------------------------ round trips


async def test_a_round_trip_runs_the_handler_and_the_reply_is_the_continuation() -> None:
    """A call runs the tool declared in hello; the result goes after tool_calls; the reply continues."""
    results: list[dict[str, Any]] = []

    async def script(peer: Peer, hello: dict[str, Any]) -> None:
        await peer.turn([{"call_id": "c1", "name": "set_theme", "arguments": {"theme": "dark"}}])
        result = await peer.expect("tool.result")
        results.append(result)
        await peer.accept(result)
        await peer.reply("Switched.")

    handler, _log, hellos = scripted(script)
    async with fake_server(handler) as url, ParleyClient(url, tools=[set_theme]) as c:
        async with c.stream("/tool set_theme") as turn:
            kinds = [getattr(ev, "type", None) async for ev in turn]
        reply = turn.reply()
    assert hellos[0]["tools"] == [set_theme.spec.model_dump()]
    assert results == [{"type": "tool.result", "call_id": "c1", "output": "theme is dark"}]
    assert reply.text == "Switched." and reply.response_id == "r2" and reply.finish_reason == "stop"
    assert turn.response_ids == ["r1", "r2"]
    (call,) = turn.tool_calls
    assert (call.name, call.arguments, call.done, call.output) == (
        "set_theme",
        {"theme": "dark"},
        True,
        "theme is dark",
    )
    assert kinds.count("response.tool_call") == 1 and kinds.count("response.completed") == 2
    assert c.pending_calls == []


async def test_two_calls_one_async_one_a_spec_handler_pair_are_both_answered() -> None:
    """Two calls in one response (async handler, (spec, handler) pair) are both answered, then the reply."""
    got: list[dict[str, Any]] = []

    async def script(peer: Peer, hello: dict[str, Any]) -> None:
        calls = [
            {"call_id": "c1", "name": "add", "arguments": {"a": 1, "b": 2}},
            {"call_id": "c2", "name": "shout", "arguments": {"text": "hi"}},
        ]
        await peer.turn(calls)
        for _ in calls:
            got.append(await peer.expect("tool.result"))
        for result in got:
            await peer.accept(result)
        await peer.reply("Done.")

    @tool
    async def add(a: int, b: int) -> dict[str, int]:
        """Add two numbers."""
        return {"sum": a + b}

    shout_spec = {
        "name": "shout",
        "parameters": {"type": "object", "properties": {"text": {"type": "string"}}},
    }
    handler, _, hellos = scripted(script)
    async with fake_server(handler) as url:
        async with ParleyClient(url, tools=[add, (shout_spec, lambda text: text.upper())]) as c:
            reply = await c.ask("two calls", timeout=10)
    assert [t["name"] for t in hellos[0]["tools"]] == ["add", "shout"]
    assert sorted((r["call_id"], json.dumps(r["output"])) for r in got) == [
        ("c1", '{"sum": 3}'),
        ("c2", '"HI"'),
    ]
    assert reply.text == "Done."


async def test_approval_allows_one_call_and_denies_another() -> None:
    """The approval callback sees each call; a yes runs the handler, a no sends 'denied by the user'."""
    got: list[dict[str, Any]] = []
    asked: list[PendingCall] = []
    runs: list[str] = []

    async def script(peer: Peer, hello: dict[str, Any]) -> None:
        calls = [
            {"call_id": "c1", "name": "paint", "arguments": {"theme": "dark"}},
            {"call_id": "c2", "name": "paint", "arguments": {"theme": "light"}},
        ]
        await peer.turn(calls)
        for _ in calls:
            got.append(await peer.expect("tool.result"))
        for result in got:
            await peer.accept(result)
        await peer.reply("OK.")

    @tool(approve=True)
    def paint(theme: str) -> str:
        runs.append(theme)
        return f"painted {theme}"

    async def approve(call: PendingCall) -> bool:
        asked.append(call)
        return call.arguments["theme"] == "dark"

    handler, _, _ = scripted(script)
    async with fake_server(handler) as url, ParleyClient(url, tools=[paint], approve=approve) as c:
        await c.ask("paint twice", timeout=10)
    assert [(a.call_id, a.name, a.server) for a in asked] == [("c1", "paint", False), ("c2", "paint", False)]
    assert runs == ["dark"]
    by_id = {r["call_id"]: r for r in got}
    assert by_id["c1"] == {"type": "tool.result", "call_id": "c1", "output": "painted dark"}
    assert by_id["c2"] == {
        "type": "tool.result",
        "call_id": "c2",
        "output": "denied by the user",
        "is_error": True,
    }


async def test_a_handler_that_raises_sends_an_error_result_with_its_message() -> None:
    """An exception in the handler is the call's result, is_error true, its message the output."""
    got: list[dict[str, Any]] = []

    async def script(peer: Peer, hello: dict[str, Any]) -> None:
        await peer.turn([{"call_id": "c1", "name": "boom", "arguments": {}}])
        got.append(await peer.expect("tool.result"))
        await peer.accept(got[0])
        await peer.reply("Sorry.")

    def boom() -> str:
        raise RuntimeError("the disk is full")

    handler, _, _ = scripted(script)
    async with fake_server(handler) as url, ParleyClient(url, tools=[({"name": "boom"}, boom)]) as c:
        await c.ask("boom", timeout=10)
    assert got == [{"type": "tool.result", "call_id": "c1", "output": "the disk is full", "is_error": True}]


# ------------------------------------------------------------------ pending calls and idempotence


async def test_a_new_client_resuming_from_seq_0_runs_only_the_call_still_pending() -> None:
    """A process resuming the session rebuilds the calls from the replayed log and answers the open one."""
    runs: list[int] = []
    got: list[dict[str, Any]] = []

    async def first(peer: Peer, hello: dict[str, Any]) -> None:
        if "session_id" in hello:  # the second process: answer its result
            result = await peer.expect("tool.result")
            got.append(result)
            await peer.accept(result, rid="r3")
            return
        # the log of an earlier page: call c1 answered and continued; then call c2, never answered
        await peer.emit(type="message.accepted", client_msg_id="x1", message_id="m1", content="add")
        await peer.emit(
            type="response.started", response_id="r1", in_reply_to="m1", profile="p", trace_id="t"
        )
        call = {"call_id": "c1", "name": "add", "arguments": {"a": 1, "b": 1}, "server": False}
        await peer.emit(type="response.tool_call", response_id="r1", **call)
        await peer.emit(type="response.completed", response_id="r1", finish_reason="tool_calls", usage={})
        await peer.accept({"call_id": "c1", "output": 2})
        await peer.reply("Two.")
        await peer.emit(type="message.accepted", client_msg_id="x2", message_id="m2", content="again")
        await peer.emit(
            type="response.started", response_id="r3", in_reply_to="m2", profile="p", trace_id="t"
        )
        call = {"call_id": "c2", "name": "add", "arguments": {"a": 2, "b": 3}, "server": False}
        await peer.emit(type="response.tool_call", response_id="r3", **call)
        await peer.emit(type="response.completed", response_id="r3", finish_reason="tool_calls", usage={})
        await peer.ws.close()  # the first process goes away without answering c2

    def add(a: int, b: int) -> int:
        runs.append(a + b)
        return a + b

    handler, _log, _ = scripted(first)
    async with fake_server(handler) as url:
        async with ParleyClient(url, auto_resume=False) as one:  # a client without the tool
            with pytest.raises(ParleyClosed):  # the scripted close ends it
                async with asyncio.timeout(5):
                    async for _ in one.events():
                        pass
            assert one.pending_calls[0].call_id == "c2"
        spec = {"name": "add", "parameters": {"type": "object"}}
        two = ParleyClient(url, session_id="s_1", resume_token="r_1", last_seq=0, tools=[(spec, add)])
        async with two:
            async with asyncio.timeout(5):
                async for ev in two.events():
                    if ev["type"] == "tool.result.accepted" and ev["call_id"] == "c2":
                        break
    assert runs == [5]
    assert got == [{"type": "tool.result", "call_id": "c2", "output": 5}]
    assert two.pending_calls == []


async def test_a_result_is_resent_after_a_drop_and_a_duplicate_answer_settles_it() -> None:
    """A result whose acceptance was lost is sent again after the resume; tool.result.duplicate settles it."""
    got: list[dict[str, Any]] = []

    async def script(peer: Peer, hello: dict[str, Any]) -> None:
        if "session_id" not in hello:
            await peer.turn([{"call_id": "c1", "name": "set_theme", "arguments": {"theme": "light"}}])
            got.append(await peer.expect("tool.result"))
            peer.ws.transport.abort()  # the acceptance is lost with the connection
            return
        got.append(await peer.expect("tool.result"))
        await peer.accept(got[-1])  # (a real server would answer the repeat with a duplicate)
        await peer.say(
            type="tool.result.duplicate", call_id="c1", response_id="r1", accepted_seq=len(peer.log)
        )
        await peer.reply("Light it is.")

    handler, _, hellos = scripted(script)
    async with fake_server(handler) as url, ParleyClient(url, tools=[set_theme]) as c:
        reply = await c.ask("light please", timeout=10)
        assert c.tool_calls.outbox == {}
    assert [r["call_id"] for r in got] == ["c1", "c1"]
    assert len(hellos) == 2 and reply.text == "Light it is."


async def test_a_result_for_an_unknown_call_is_refused_and_not_sent_again() -> None:
    """A result for a call the server does not know is refused with a ref, and the outbox forgets it."""
    refused = asyncio.Event()

    async def script(peer: Peer, hello: dict[str, Any]) -> None:
        frame = await peer.expect("tool.result")
        error = {"code": "invalid_message", "message": "unknown call_id", "retryable": False}
        await peer.say(type="error", **error, ref={"type": "tool.result", "call_id": frame["call_id"]})
        refused.set()

    handler, _, _ = scripted(script)
    async with fake_server(handler) as url, ParleyClient(url) as c:
        await c.send_tool_result("nope", "x")
        ev = await c.next_event("error", timeout=5)
        assert ev["ref"]["call_id"] == "nope" and refused.is_set()
        assert c.tool_calls.outbox == {}


# ------------------------------------------------------------------ server tools and reasoning


async def test_a_server_tool_asking_for_approval_gets_tool_approve_from_the_callback() -> None:
    """A server tool's approval request goes to the callback and is answered with tool.approve."""
    approvals: list[dict[str, Any]] = []

    async def script(peer: Peer, hello: dict[str, Any]) -> None:
        await peer.turn([], finish=False)
        for call_id in ("s1", "s2"):
            call = {"call_id": call_id, "name": "clock", "arguments": {"tz": "UTC"}}
            await peer.emit(type="response.tool_call", response_id="r1", server=True, **call)
            await peer.emit(type="tool.approval_requested", response_id="r1", **call)
        for _ in range(2):
            approvals.append(await peer.expect("tool.approve"))
        await peer.accept({"call_id": "s1", "output": "12:00"})
        await peer.accept({"call_id": "s2", "output": "denied by the user", "is_error": True})
        await peer.emit(type="response.delta", response_id="r1", text="Noon.")
        await peer.emit(type="response.completed", response_id="r1", finish_reason="stop", usage={})

    def approve(call: PendingCall) -> bool:
        return call.server and call.call_id == "s1"

    handler, _, _ = scripted(script)
    async with fake_server(handler) as url, ParleyClient(url, approve=approve) as c:
        async with c.stream("what time is it?") as turn:
            async for _ in turn:
                pass
    assert sorted((a["call_id"], a["approved"]) for a in approvals) == [("s1", True), ("s2", False)]
    assert [(call.call_id, call.server, call.output) for call in turn.tool_calls] == [
        ("s1", True, "12:00"),
        ("s2", True, "denied by the user"),
    ]
    assert turn.text == "Noon."


async def test_reasoning_deltas_build_the_turns_reasoning() -> None:
    """Reasoning deltas are this turn's events; turn.reasoning joins them and the text stays the answer."""

    async def script(peer: Peer, hello: dict[str, Any]) -> None:
        await peer.turn([], finish=False)
        for piece in ("Let me ", "think. "):
            await peer.emit(type="response.reasoning.delta", response_id="r1", text=piece)
        await peer.emit(type="response.delta", response_id="r1", text="Yes.")
        await peer.emit(type="response.completed", response_id="r1", finish_reason="stop", usage={})

    handler, _, _ = scripted(script)
    async with fake_server(handler) as url, ParleyClient(url) as c:
        async with c.stream("think") as turn:
            kinds = [getattr(ev, "type", None) async for ev in turn]
    assert turn.reasoning == "Let me think. " and turn.text == "Yes."
    assert kinds.count("response.reasoning.delta") == 2


async def test_a_slow_approval_is_not_taken_for_a_stalled_reply() -> None:
    """While the approval callback waits for a person, the turn's idle timeout does not fire."""

    async def script(peer: Peer, hello: dict[str, Any]) -> None:
        await peer.turn([{"call_id": "c1", "name": "paint", "arguments": {"theme": "dark"}}])
        result = await peer.expect("tool.result")
        await peer.accept(result)
        await peer.reply("Painted.")

    @tool(approve=True)
    def paint(theme: str) -> str:
        return theme

    async def slow_person(call: PendingCall) -> bool:
        await asyncio.sleep(0.8)  # the person reads the card: longer than the idle bound
        return True

    handler, _, _ = scripted(script)
    async with fake_server(handler) as url:
        async with ParleyClient(url, tools=[paint], approve=slow_person, idle_timeout=0.3) as c:
            reply = await c.ask("paint it", timeout=10)
    assert reply.text == "Painted."
