"""Resume after an abrupt drop at every point of a response, on both stores."""

from __future__ import annotations

from typing import Any

from parley.client import ParleyClient

from .support import read_logged, reference_reply


async def test_resume_at_every_drop_point_yields_the_uninterrupted_reply(server: Any) -> None:
    """At every drop position the reassembled reply equals the uninterrupted one; seqs contiguous, no dups."""
    text, n_events = await reference_reply(server.url, "resume me please")
    assert n_events >= 4  # accepted, started, deltas (coalescing may merge tokens), completed
    for k in range(n_events + 1):
        c = ParleyClient(server.url)
        await c.connect()
        cid = await c.send("resume me please")
        seqs = await read_logged(c, k)
        c.drop()  # TCP abort mid-stream: no close handshake
        reply = await c.collect(cid, timeout=20)
        seqs += [e["seq"] for e in reply.events if "seq" in e]
        await c.close()
        assert reply.text == text, f"drop after {k} events"
        assert reply.finish_reason == "stop"
        assert seqs == list(range(1, reply.completed["seq"] + 1)), f"drop after {k}: {seqs}"
        assert c.duplicates_dropped == 0 and c.gaps == 0
        assert c.resumes == (1 if k < len(seqs) else 0)


async def test_resume_from_zero_replays_the_whole_log(server: Any) -> None:
    """A resume with last_seq 0 (or none) receives every logged event from seq 1, then live."""
    async with ParleyClient(server.url) as c:
        await c.ask("one")
        total = c.last_seq
    async with ParleyClient(server.url, session_id=c.session_id, resume_token=c.resume_token) as r:
        assert r.ready is not None
        assert (r.ready["resumed"], r.ready["recovered"], r.ready["last_seq"]) == (True, True, total)
        seqs = []
        while len(seqs) < total:
            seqs.append((await r.next_event())["seq"])
        assert seqs == list(range(1, total + 1))
        second = await r.ask("two")
        assert second.finish_reason == "stop"


async def test_resume_past_retention_sends_a_snapshot(server_factory: Any) -> None:
    """When the log no longer holds the gap, ready says recovered:false and a snapshot rebuilds the turns."""
    async with server_factory(log_max_len=10, echo_reply_tokens=30) as server:
        async with ParleyClient(server.url) as c:
            first = await c.ask("first turn")
            await c.ask("second turn")
            newest = c.last_seq
        resumed = ParleyClient(server.url, session_id=c.session_id, resume_token=c.resume_token, last_seq=3)
        await resumed.connect()
        assert resumed.ready is not None
        assert resumed.ready["recovered"] is False and resumed.ready["last_seq"] == newest
        snap = await resumed.next_event("session.snapshot")
        assert snap["last_seq"] == newest
        assert [t["role"] for t in snap["turns"]] == ["user", "assistant", "user", "assistant"]
        assert snap["turns"][1]["content"] == first.text
        assert snap.get("in_flight") is None
        third = await resumed.ask("third turn")
        assert third.finish_reason == "stop"
        await resumed.close()
