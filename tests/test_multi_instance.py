"""Two real `parley serve` processes over one real redis-server: any instance serves any session."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from parley.client import ParleyClient

from .support import RedisServer, ServerProcess, read_logged, reference_reply

pytestmark = pytest.mark.slow

ENV = {
    "PARLEY_ECHO_TOKENS_PER_SECOND": "100",
    "PARLEY_ECHO_REPLY_TOKENS": "60",
    "PARLEY_DRAIN_TIMEOUT_MS": "0",
}


def instances(redis_url: str, n: int = 2, **env: str) -> list[ServerProcess]:
    procs = [ServerProcess({**ENV, "PARLEY_STORE": redis_url, **env}) for _ in range(n)]
    for p in procs:
        p.start()
    return procs


@pytest.fixture
def pair(redis_url: str) -> Iterator[list[ServerProcess]]:
    procs = instances(redis_url)
    yield procs
    for p in procs:
        p.stop(signal.SIGKILL)


async def test_resume_on_another_instance_at_random_drop_points(pair: list[ServerProcess]) -> None:
    """A client dropped from A resumes on B while A still generates: identical text, no gap, no duplicate."""
    a, b = pair
    expected, _ = await reference_reply(a.url, "cross instance")
    rng = random.Random(1234)
    for k in sorted(rng.sample(range(1, 60), 8)):
        c = ParleyClient(a.url)
        await c.connect()
        cid = await c.send("cross instance")
        seqs = await read_logged(c, k)
        c.url = b.url  # the load balancer sends the reconnect elsewhere
        c.drop()
        reply = await c.collect(cid, timeout=20)
        await c.close()
        seqs += [e["seq"] for e in reply.events if "seq" in e]
        assert reply.text == expected, f"drop after {k}"
        assert seqs == list(range(1, len(seqs) + 1)), f"drop after {k}"
        assert c.duplicates_dropped == 0 and c.gaps == 0
        assert c.resumes == (1 if k < len(seqs) else 0)  # (a reply may coalesce into fewer than k events)
        assert reply.completed["finish_reason"] == "stop"


async def test_second_tab_on_other_instance_sees_live_events(pair: list[ServerProcess]) -> None:
    """A tab on B sees the user turn and every delta of a response generated on A, in order."""
    a, b = pair
    async with ParleyClient(a.url) as tab_a:
        async with ParleyClient(b.url, session_id=tab_a.session_id, resume_token=tab_a.resume_token) as tab_b:
            reply = await tab_a.ask("two tabs")
            events = []
            while not events or events[-1]["type"] != "response.completed":
                events.append(await tab_b.next_event())
    assert [e["seq"] for e in events] == [e["seq"] for e in reply.events]
    assert "".join(e["text"] for e in events if e["type"] == "response.delta") == reply.text


async def test_cancel_through_other_instance_stops_the_generation(pair: list[ServerProcess]) -> None:
    """response.cancel sent through B stops a response generating on A; nothing follows its terminal event."""
    a, b = pair
    latencies = []
    async with ParleyClient(a.url) as gen_side:
        sid, tok = gen_side.session_id, gen_side.resume_token
        async with ParleyClient(b.url, session_id=sid, resume_token=tok) as other:
            for i in range(5):
                cid = await gen_side.send(f"cancel me {i}")
                started = await other.next_event("response.started")
                await other.next_event("response.delta")
                t0 = time.perf_counter()
                await other.cancel(started["response_id"])
                done = await other.next_event("response.completed")
                latencies.append(time.perf_counter() - t0)
                assert done["finish_reason"] == "cancelled"
                reply = await gen_side.collect(cid)
                assert reply.finish_reason == "cancelled"
                await other.cancel(started["response_id"])  # idempotent
            hist = await gen_side.ask("after cancels")
            assert hist.finish_reason == "stop"
    print(f"cross-instance cancel latency ms: {[round(x * 1000, 1) for x in latencies]}")


async def test_cancel_before_first_token_across_instances(redis_url: str) -> None:
    """A cancel arriving through B before A's model produced a token ends the response with no delta."""
    procs = instances(redis_url, PARLEY_ECHO_TTFT_MS="20000")
    try:
        a, b = procs
        async with ParleyClient(a.url) as gen_side:
            sid, tok = gen_side.session_id, gen_side.resume_token
            async with ParleyClient(b.url, session_id=sid, resume_token=tok) as other:
                await gen_side.send("slow start")
                started = await other.next_event("response.started")
                await other.cancel()
                done = await other.next_event("response.completed", "response.delta", timeout=15)
                assert done["type"] == "response.completed" and done["finish_reason"] == "cancelled"
                assert done["response_id"] == started["response_id"]
    finally:
        for p in procs:
            p.stop(signal.SIGKILL)


async def test_kill_9_of_generating_instance_ends_response_as_interrupted(pair: list[ServerProcess]) -> None:
    """After kill -9 of A mid-response, B logs response.completed{interrupted} within the lease bound."""
    a, b = pair
    c = ParleyClient(a.url)
    await c.connect()
    cid = await c.send("doomed")
    await c.next_event("response.delta")
    c.url = b.url
    killed = time.monotonic()
    a.stop(signal.SIGKILL)
    reply = await c.collect(cid, timeout=12)  # lease 5 s + reaper 1 s (+ renew lag): documented bound 10 s
    elapsed = time.monotonic() - killed
    assert reply.finish_reason == "interrupted"
    assert reply.completed["error"] == {
        "code": "upstream_unavailable",
        "message": "the response was interrupted; you may send it again",
        "retryable": True,
    }
    assert c.gaps == 0 and c.duplicates_dropped == 0
    async with ParleyClient(b.url, session_id=c.session_id, resume_token=c.resume_token) as again:
        retry = await again.ask("doomed, again")
        assert retry.finish_reason == "stop"
        assert "(earlier: doomed )" in retry.text  # the partial reply stayed in the history
    print(f"kill -9 -> interrupted after {elapsed:.2f} s")
    await c.close()


async def test_busy_during_a_dead_lease_says_when_to_retry(pair: list[ServerProcess]) -> None:
    """After kill -9 of A, a send on B is busy with retry_after_ms within the lease; retrying then works."""
    a, b = pair
    async with ParleyClient(a.url) as c:
        sid, tok = c.session_id, c.resume_token
        await c.send("doomed")
        await c.next_event("response.delta")
    a.stop(signal.SIGKILL)
    async with ParleyClient(b.url, session_id=sid, resume_token=tok, auto_resume=False) as other:
        await other.send("too early", client_msg_id="early")
        err = await other.next_event("error")
        assert err["code"] == "busy" and err["retryable"] is True
        assert 0 < err["retry_after_ms"] <= 5000  # PARLEY_LEASE_MS: the dead lease lapses by then
        await asyncio.sleep(err["retry_after_ms"] / 1000)  # what a client is told to do
        reply = await other.ask("on time", timeout=20)
        assert reply.finish_reason == "stop"


async def test_sigterm_drains_running_generation_then_client_resumes_elsewhere(redis_url: str) -> None:
    """SIGTERM closes sockets with 1012; a response that fits the drain timeout still completes normally."""
    procs = instances(redis_url, PARLEY_DRAIN_TIMEOUT_MS="10000", PARLEY_ECHO_REPLY_TOKENS="100")
    try:
        a, b = procs
        c = ParleyClient(a.url)
        await c.connect()
        cid = await c.send("drain me")
        await c.next_event("response.delta")
        c.url = b.url
        a.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        reply = await c.collect(cid, timeout=20)
        assert reply.finish_reason == "stop"
        assert reply.text == (await reference_reply(b.url, "drain me"))[0]
        assert c.resumes >= 1 and c.gaps == 0 and c.duplicates_dropped == 0
        a.proc.wait(20)  # type: ignore[union-attr]
    finally:
        for p in procs:
            p.stop(signal.SIGKILL)


async def test_one_pubsub_connection_per_process(
    pair: list[ServerProcess], redis_server: RedisServer
) -> None:
    """Many readers on many sessions use one Redis subscription connection per process, not one each."""
    a, b = pair
    clients = [ParleyClient((a if i % 2 else b).url) for i in range(20)]
    for c in clients:
        await c.connect()
    try:
        listing = redis_server.command("CLIENT", "LIST")
        subscribed = [line for line in listing.splitlines() if " sub=0 " not in line and " sub=" in line]
        assert len(subscribed) == 2, listing
    finally:
        for c in clients:
            await c.close()


async def test_redis_outage_gives_structured_errors_and_recovers(tmp_path: Any) -> None:
    """While Redis is down clients get retryable structured errors; within 5 s of its return all works."""
    redis = RedisServer(dir=str(tmp_path), persist=True)
    redis.start()
    procs = instances(redis.url, PARLEY_ECHO_REPLY_TOKENS="300")
    try:
        a, b = procs
        c = ParleyClient(a.url)
        await c.connect()
        cid = await c.send("through the outage")
        await c.next_event("response.delta")
        # a tab on B subscribed before the outage: its subscription must come back by itself
        watcher = ParleyClient(b.url, session_id=c.session_id, resume_token=c.resume_token, auto_resume=False)
        await watcher.connect()
        redis.stop(signal.SIGKILL)
        # an open connection stays open and answers with a structured, retryable error
        await c.send("while down", client_msg_id="down-1")
        err = await c.next_event("error", timeout=10)
        assert err["code"] in ("upstream_unavailable", "overloaded", "busy") and err["retryable"] is True
        # a new session cannot open: error + close, no hang
        t0 = time.monotonic()
        fresh = ParleyClient(b.url, auto_resume=False)
        with pytest.raises(Exception) as info:
            await asyncio.wait_for(fresh.connect(), 10)
        assert getattr(info.value, "reason", "") == "upstream_unavailable"
        assert time.monotonic() - t0 < 10
        redis.start()
        back = time.monotonic()
        while True:  # bounded: the recovery bound is the assertion
            try:
                async with ParleyClient(b.url, auto_resume=False) as ok:
                    assert (await ok.ask("after outage")).finish_reason == "stop"
                break
            except Exception:
                assert time.monotonic() - back < 5, "not recovered within 5 s of Redis returning"
                await asyncio.sleep(0.1)
        # the streaming client ends with a terminal event, contiguous seqs
        reply = await c.collect(cid, timeout=30)
        assert reply.finish_reason in ("stop", "interrupted")
        assert c.gaps == 0 and c.duplicates_dropped == 0
        for p in procs:
            assert p.proc is not None and p.proc.poll() is None  # nobody crashed
        # a resume on the other instance works and sees the same log
        async with ParleyClient(b.url, session_id=c.session_id, resume_token=c.resume_token, last_seq=0) as r:
            first = await r.next_event()
            assert first["seq"] == 1
        # pub/sub is re-established on both: live cross-instance delivery and cancel work again
        sid, tok = c.session_id, c.resume_token
        async with ParleyClient(b.url, session_id=sid, resume_token=tok, last_seq=c.last_seq) as tab_b:
            await c.send("after the outage, generated on A")
            started = await tab_b.next_event("response.started", timeout=10)
            await tab_b.next_event("response.delta", timeout=10)
            await tab_b.cancel(started["response_id"])
            done = await tab_b.next_event("response.completed", timeout=10)
            assert done["finish_reason"] == "cancelled"
        # the pre-outage watcher saw everything, live, without reconnecting
        while watcher.last_seq < done["seq"]:
            await watcher.next_event(timeout=10)
        assert watcher.gaps == 0 and watcher.duplicates_dropped == 0 and watcher.resumes == 0
        assert watcher.completed[started["response_id"]]["finish_reason"] == "cancelled"
        await watcher.close()
        await c.close()
    finally:
        for p in procs:
            p.stop(signal.SIGKILL)
        redis.stop()


async def test_events_are_published_only_when_another_instance_listens(
    pair: list[ServerProcess], redis_server: RedisServer
) -> None:
    """A session read only where it is generated publishes nothing; a reader on B turns publishing on."""

    def publishes() -> int:
        stats = redis_server.command("INFO", "commandstats")
        line = next((x for x in stats.splitlines() if x.startswith("cmdstat_publish:")), "")
        return int(line.split("calls=")[1].split(",")[0]) if line else 0

    a, b = pair
    async with ParleyClient(a.url) as c:
        before = publishes()
        await c.ask("local only")
        assert publishes() == before  # the generating instance delivered from memory; no echo
        sid, tok, seen = c.session_id, c.resume_token, c.last_seq
        async with ParleyClient(b.url, session_id=sid, resume_token=tok, last_seq=seen) as tab:
            reply = await c.ask("now B listens")
            events = []
            while not events or events[-1]["type"] != "response.completed":
                events.append(await tab.next_event())
            assert [e["seq"] for e in events] == [e["seq"] for e in reply.events]
        assert publishes() > before
