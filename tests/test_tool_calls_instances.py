"""Tool calls across real `parley serve` processes on one real redis-server: a wait lives in Redis only."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from parley.client import ParleyClient

from .support import ServerProcess
from .test_tool_calls import SELECTION, send, until

pytestmark = pytest.mark.slow

ENV = {
    "PARLEY_ECHO_TOKENS_PER_SECOND": "200",
    "PARLEY_ECHO_REPLY_TOKENS": "20",
    "PARLEY_DRAIN_TIMEOUT_MS": "0",
}
PROFILES = """
[profiles.main]
tools = ["tests.server_tools:logged_slow", "tests.server_tools:guarded"]
"""


def start(redis_url: str, n: int = 2, **env: str) -> list[ServerProcess]:
    procs = [ServerProcess({**ENV, "PARLEY_STORE": redis_url, **env}) for _ in range(n)]
    for p in procs:
        p.start()
    return procs


@pytest.fixture
def pair(redis_url: str) -> Iterator[list[ServerProcess]]:
    procs = start(redis_url)
    yield procs
    for p in procs:
        p.stop(signal.SIGKILL)


async def logged(url: str, sid: str, token: str) -> list[dict[str, Any]]:
    """The whole log of a session as a fresh reader on ``url`` replays it (up to session.ready's last_seq)."""
    async with ParleyClient(url, session_id=sid, resume_token=token, last_seq=0) as c:
        assert c.ready is not None
        newest = c.ready["last_seq"]
        events = []
        while not events or events[-1]["seq"] < newest:
            ev = await c.next_event()
            if "seq" in ev:
                events.append(ev)
        return events


def continuations(events: list[dict[str, Any]], rid: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == "response.started" and e.get("continues") == rid]


async def wait_for_call(c: ParleyClient) -> tuple[str, dict[str, Any]]:
    done, events = await until(c, "response.completed")
    assert done["finish_reason"] == "tool_calls"
    return done["response_id"], next(e for e in events if e["type"] == "response.tool_call")


async def test_reconnect_while_waiting_then_result_on_another_instance(pair: list[ServerProcess]) -> None:
    """A tab reloads onto B while a response waits; the replay shows the call; B's result continues once."""
    a, b = pair
    c = ParleyClient(a.url)
    await c.connect()
    await send(c, "/tool get_selection", [SELECTION])
    rid, call = await wait_for_call(c)
    sid, token = c.session_id, c.resume_token
    await c.close()
    async with ParleyClient(b.url, session_id=sid, resume_token=token, last_seq=0) as tab:  # a reload
        replayed, _ = await until(tab, "response.tool_call")
        assert replayed["call_id"] == call["call_id"]
        await until(tab, "response.completed")
        await tab.send_json({"type": "tool.result", "call_id": call["call_id"], "output": "from B"})
        started, _ = await until(tab, "response.started")
        final, _ = await until(tab, "response.completed")
        assert started["continues"] == rid and final["finish_reason"] == "stop"
    events = await logged(a.url, sid, token)  # type: ignore[arg-type]
    assert len(continuations(events, rid)) == 1
    assert len([e for e in events if e["type"] == "tool.result.accepted"]) == 1


async def test_two_instances_racing_on_the_last_result_continue_once(pair: list[ServerProcess]) -> None:
    """One last result sent to A and B at the same moment: accepted once, one continuation."""
    a, b = pair
    for attempt in range(5):
        async with ParleyClient(a.url) as ca:
            await send(ca, "/tool get_selection", [SELECTION])
            rid, call = await wait_for_call(ca)
            async with ParleyClient(b.url, session_id=ca.session_id, resume_token=ca.resume_token) as cb:
                msg = {"type": "tool.result", "call_id": call["call_id"], "output": f"race {attempt}"}
                await asyncio.gather(ca.send_json(msg), cb.send_json(msg))
                answers = await asyncio.gather(
                    ca.next_event("tool.result.duplicate", "tool.result.accepted"),
                    cb.next_event("tool.result.duplicate", "tool.result.accepted"),
                )
                assert {e["type"] for e in answers} <= {"tool.result.duplicate", "tool.result.accepted"}
                await until(ca, "response.completed")
            events = await logged(b.url, ca.session_id, ca.resume_token)  # type: ignore[arg-type]
        assert len(continuations(events, rid)) == 1
        assert len([e for e in events if e["type"] == "tool.result.accepted"]) == 1
        assert [e["type"] for e in events].count("response.completed") == 2


async def test_restart_of_every_instance_while_waiting(redis_url: str) -> None:
    """Both instances restart while a response waits; the result sent afterwards still continues it."""
    procs = start(redis_url)
    try:
        async with ParleyClient(procs[0].url) as c:
            await send(c, "/tool get_selection", [SELECTION])
            rid, call = await wait_for_call(c)
            sid, token = c.session_id, c.resume_token
        for p in procs:
            p.stop(signal.SIGTERM)
        procs = start(redis_url)
        async with ParleyClient(procs[1].url, session_id=sid, resume_token=token, last_seq=0) as c:
            await until(c, "response.completed")
            await c.send_json({"type": "tool.result", "call_id": call["call_id"], "output": "after restart"})
            started, _ = await until(c, "response.started")
            final, events = await until(c, "response.completed")
            assert started["continues"] == rid and final["finish_reason"] == "stop"
            assert "get_selection returned after restart" in "".join(
                e["text"] for e in events if e["type"] == "response.delta"
            )
    finally:
        for p in procs:
            p.stop(signal.SIGKILL)


async def test_kill_9_during_a_server_tool_is_interrupted_and_never_run_twice(
    redis_url: str, tmp_path: Path
) -> None:
    """kill -9 of the instance running a server tool: B ends it as interrupted; nothing runs it again."""
    profiles = tmp_path / "profiles.toml"
    profiles.write_text(PROFILES)
    tool_log = tmp_path / "runs.log"
    env = {"PARLEY_PROFILES": str(profiles), "PARLEY_TEST_TOOL_LOG": str(tool_log)}
    a, b = start(redis_url, **env)
    try:
        c = ParleyClient(a.url)
        await c.connect()
        await send(c, '/tool logged_slow {"seconds": 60}')
        rid, call = await wait_for_call(c)
        started, _ = await until(c, "response.started")
        deadline = time.monotonic() + 10
        while not (tool_log.exists() and tool_log.read_text()):
            assert time.monotonic() < deadline, "the tool never started"
            await asyncio.sleep(0.05)
        c.url = b.url
        a.stop(signal.SIGKILL)
        ended, _ = await until(c, "response.completed", timeout=15)  # lease 5 s + reaper 1 s
        assert ended["response_id"] == started["response_id"] and ended["finish_reason"] == "interrupted"
        await c.send_json({"type": "tool.result", "call_id": call["call_id"], "output": "x"})
        assert (await c.next_event("error"))["code"] == "invalid_message"
        await send(c, "still there?")
        assert (await until(c, "response.completed"))[0]["finish_reason"] == "stop"
        await c.close()
        assert tool_log.read_text().split() == [call["call_id"]]
        events = await logged(b.url, c.session_id, c.resume_token)  # type: ignore[arg-type]
        assert not [e for e in events if e["type"] == "tool.result.accepted"]
        assert json.loads(json.dumps(continuations(events, rid)))[0]["response_id"] == started["response_id"]
    finally:
        for p in (a, b):
            p.stop(signal.SIGKILL)


async def test_approval_on_another_instance_continues_once(redis_url: str, tmp_path: Path) -> None:
    """An approval card answered from another instance (after a reload) runs the tool once and continues."""
    profiles = tmp_path / "profiles.toml"
    profiles.write_text(PROFILES)
    a, b = start(redis_url, PARLEY_PROFILES=str(profiles))
    try:
        async with ParleyClient(a.url) as c:
            await send(c, '/tool guarded {"text": "go"}')
            done, events = await until(c, "response.completed")
            asked = next(e for e in events if e["type"] == "tool.approval_requested")
            sid, token = c.session_id, c.resume_token
        async with ParleyClient(b.url, session_id=sid, resume_token=token, last_seq=0) as tab:
            again, _ = await until(tab, "tool.approval_requested")  # the card, re-rendered from the log
            await until(tab, "response.completed")
            approve = {"type": "tool.approve", "call_id": again["call_id"], "approved": True}
            await tab.send_json(approve)
            accepted, _ = await until(tab, "tool.result.accepted")
            final, _ = await until(tab, "response.completed")
            assert accepted["output"] == "approved: go" and final["finish_reason"] == "stop"
            await tab.send_json(approve)
            assert (await tab.next_event("error"))["code"] == "invalid_message"
        events = await logged(a.url, sid, token)  # type: ignore[arg-type]
        assert len(continuations(events, done["response_id"])) == 1
        assert asked["call_id"] == again["call_id"]
    finally:
        for p in (a, b):
            p.stop(signal.SIGKILL)
