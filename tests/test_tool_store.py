"""The tool-call part of the SessionStore contract, on memory, Redis and a Redis Cluster."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from parley.protocol import encode
from parley.protocol.messages import ResponseCompleted, ResponseStarted, ResponseToolCall, ToolResultAccepted
from parley.sessions import SessionStore
from parley.sessions.store import CallRecord, Continuation

from .test_store import LEASE, accept, new_session

NOW = 1_000
DEADLINE = NOW + 60_000


def call_body(rid: str, cid: str, server: bool = False) -> str:
    return encode(ResponseToolCall(response_id=rid, call_id=cid, name="t", arguments={"n": 1}, server=server))


def continuation(rid: str, next_id: str) -> Continuation:
    started = ResponseStarted(
        response_id=next_id, in_reply_to="m-c1", profile="p", trace_id="t", continues=rid
    )
    return Continuation(next_id, encode(started), json.dumps({"continues": rid}))


async def end_with(
    store: SessionStore, sid: str, rid: str, kinds: dict[str, str], next_id: str = "r2"
) -> Any:
    """End ``rid`` with one call per entry of ``kinds`` (call_id -> kind)."""
    calls = [
        CallRecord(cid, kind, json.dumps({"name": "t", "arguments": {"n": 1}})) for cid, kind in kinds.items()
    ]  # type: ignore[arg-type]
    turn = json.dumps(
        {
            "role": "assistant",
            "id": rid,
            "finish_reason": "tool_calls",
            "tool_calls": [{"call_id": c, "name": "t", "arguments": {"n": 1}} for c in kinds],
        }
    )
    return await store.end_with_calls(
        sid,
        rid,
        call_bodies=[call_body(rid, c, kinds[c] != "client") for c in kinds],
        calls=calls,
        turn=turn,
        body=encode(ResponseCompleted(response_id=rid, finish_reason="tool_calls")),
        continuation=continuation(rid, next_id),
        now_ms=NOW,
        lease_ms=LEASE,
        wait_deadline_ms=DEADLINE,
    )


def result_body(cid: str, output: Any, is_error: bool = False) -> str:
    return encode(ToolResultAccepted(response_id="", call_id=cid, output=output, is_error=is_error))


def tool_turn(cid: str, output: Any) -> str:
    turn = {"role": "tool", "response_id": "", "id": cid, "content": str(output), "output": output}
    return json.dumps(turn, separators=(",", ":"))


async def answer(
    store: SessionStore, sid: str, cid: str, output: Any = "ok", mode: str = "result", runner: str = ""
) -> Any:
    return await store.answer_call(
        sid,
        cid,
        mode=mode,
        body=result_body(cid, output),
        turn=tool_turn(cid, output),  # type: ignore[arg-type]
        now_ms=NOW,
        lease_ms=LEASE,
        runner=runner,
    )


async def test_calls_end_the_response_and_the_last_result_continues(store: SessionStore) -> None:
    """Two client calls: the session waits with no active response; the last result continues."""
    sid = await new_session(store)
    await accept(store, sid)
    ended = await end_with(store, sid, "r1", {"k1": "client", "k2": "client"})
    assert ended.status == "ended"
    assert [json.loads(e.data)["type"] for e in ended.entries] == [
        "response.tool_call",
        "response.tool_call",
        "response.completed",
    ]
    rec = await store.get_session(sid)
    assert rec is not None and rec.active_response is None
    busy = await accept(store, sid, cid="c2", rid="rX", now=NOW + 1)
    assert busy.status == "waiting" and busy.response_id == "r1"  # type: ignore[attr-defined]
    first = await answer(store, sid, "k1", {"big": 12345678901234567890, "f": 0.1})
    assert first.status == "answered" and first.response_id == "r1"
    assert json.loads(first.entries[0].data)["output"] == {"big": 12345678901234567890, "f": 0.1}
    dup = await answer(store, sid, "k1")
    assert dup.status == "duplicate" and dup.accepted_seq == first.entries[0].seq
    last = await answer(store, sid, "k2")
    assert last.status == "continue" and last.response_id == "r2" and last.continues == "r1"
    assert json.loads(last.entries[-1].data)["continues"] == "r1"
    assert [t["role"] for t in last.history] == ["user", "assistant", "tool", "tool"]
    assert last.history[1]["tool_calls"][0]["call_id"] == "k1"
    assert last.history[2]["response_id"] == "r1"
    rec = await store.get_session(sid)
    assert rec is not None and rec.active_response == "r2"
    assert (await answer(store, sid, "k2")).status == "duplicate"
    assert (await answer(store, sid, "nope")).status == "unknown"


async def test_racing_last_results_continue_once(store: SessionStore) -> None:
    """The same last result answered twice at once starts one continuation; the other is a duplicate."""
    sid = await new_session(store)
    await accept(store, sid)
    await end_with(store, sid, "r1", {"k1": "client"})
    outcomes = await asyncio.gather(answer(store, sid, "k1"), answer(store, sid, "k1"))
    assert sorted(o.status for o in outcomes) == ["continue", "duplicate"]


async def test_server_calls_only_continue_at_once_and_run_once(store: SessionStore) -> None:
    """A response that called only server tools continues in the same step; each run starts once."""
    sid = await new_session(store)
    await accept(store, sid)
    out = await end_with(store, sid, "r1", {"s1": "server"})
    assert out.status == "continue" and [r.call_id for r in out.runs] == ["s1"]
    assert json.loads(out.runs[0].spec) == {"name": "t", "arguments": {"n": 1}}
    assert await store.start_run(sid, "r2", "s1") == "ok"
    assert await store.start_run(sid, "r2", "s1") == "done"
    assert await store.start_run(sid, "rZ", "s1") == "gone"
    assert (await answer(store, sid, "s1", mode="result")).status == "closed"  # not the client's to answer
    done = await answer(store, sid, "s1", "42", mode="server", runner="r2")
    assert done.status == "answered" and json.loads(done.entries[0].data)["response_id"] == "r1"


async def test_approval_queues_the_call_and_denial_logs_a_result(store: SessionStore) -> None:
    """An approval queues the run (not logged); a denial is a logged error result; repeats do nothing."""
    sid = await new_session(store)
    await accept(store, sid)
    out = await end_with(store, sid, "r1", {"a1": "approval", "a2": "approval"})
    assert out.status == "ended"
    denied = await store.answer_call(
        sid,
        "a2",
        mode="deny",
        body=result_body("a2", "denied by the user", True),
        turn=tool_turn("a2", "denied by the user"),
        now_ms=NOW,
        lease_ms=LEASE,
    )
    assert denied.status == "answered" and len(denied.entries) == 1
    assert (await answer(store, sid, "a2", mode="approve")).status == "same"
    approved = await answer(store, sid, "a1", mode="approve")
    assert approved.status == "continue" and [r.call_id for r in approved.runs] == ["a1"]
    assert [json.loads(e.data)["type"] for e in approved.entries] == ["response.started"]


async def test_cancel_and_timeout_end_a_wait(store: SessionStore) -> None:
    """Cancel names the waiting response, end_wait logs a continuation's start, end; calls close."""
    sid = await new_session(store)
    await accept(store, sid)
    await end_with(store, sid, "r1", {"k1": "client"})
    assert await store.request_cancel(sid, None) == ("waiting", "r1")
    assert await store.request_cancel(sid, "r1") == ("waiting", "r1")
    assert await store.expired_waits(DEADLINE - 1) == []
    assert await store.expired_waits(DEADLINE) == [(sid, "r1")]
    body = encode(ResponseCompleted(response_id="", finish_reason="cancelled"))
    assert (
        await store.end_wait(sid, "r1", body=body, finish_reason="cancelled", expired_before=DEADLINE - 1)
        is None
    )
    entries = await store.end_wait(sid, "r1", body=body, finish_reason="cancelled")
    assert entries is not None
    assert [json.loads(e.data)["response_id"] for e in entries] == ["r2", "r2"]
    assert await store.end_wait(sid, "r1", body=body, finish_reason="cancelled") is None
    assert (await answer(store, sid, "k1")).status == "closed"
    assert await store.expired_waits(DEADLINE) == []
    assert (await accept(store, sid, cid="c2", rid="r3", now=NOW + 1)).status == "accepted"  # type: ignore[attr-defined]
    turns = (await store.snapshot(sid)).turns
    assert [t["role"] for t in turns] == ["user", "assistant", "assistant", "user"]


async def test_a_cancelled_response_does_not_wait(store: SessionStore) -> None:
    """end_with_calls after a cancel request logs nothing and reports the cancel."""
    sid = await new_session(store)
    await accept(store, sid)
    await store.request_cancel(sid, "r1")
    assert (await end_with(store, sid, "r1", {"k1": "client"})).status == "cancel"
    assert (await end_with(store, sid, "rX", {"k1": "client"})).status == "gone"
