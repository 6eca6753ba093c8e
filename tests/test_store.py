"""The SessionStore contract, run unchanged against MemoryStore and RedisStore (real redis-server)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import pytest

from parley.protocol import encode, seq_of
from parley.protocol.messages import (
    FeedbackRecorded,
    MessageAccepted,
    ResponseCompleted,
    ResponseDelta,
    ResponseStarted,
)
from parley.sessions import DeltaWrite, SessionStore, keys, replay, tail
from parley.sessions.tail import LogGap

LEASE = 5_000


async def new_session(store: SessionStore, sid: str = "s1") -> str:
    await store.create_session(sid, "t1", "u1", "hash")
    return sid


async def accept(store: SessionStore, sid: str, cid: str = "c1", rid: str = "r1", now: int = 1_000) -> object:
    return await store.accept(
        sid,
        client_msg_id=cid,
        message_id=f"m-{cid}",
        response_id=rid,
        content=f"hello {cid}",
        accepted_body=encode(MessageAccepted(client_msg_id=cid, message_id=f"m-{cid}", content="hi")),
        started_body=encode(
            ResponseStarted(response_id=rid, in_reply_to=f"m-{cid}", profile="p", trace_id="t")
        ),
        now_ms=now,
        lease_ms=LEASE,
    )


def delta(sid: str, rid: str, text: str) -> DeltaWrite:
    return DeltaWrite(sid, rid, text, encode(ResponseDelta(response_id=rid, text=text)))


def done(rid: str, reason: str = "stop") -> str:
    return encode(ResponseCompleted(response_id=rid, finish_reason=reason))  # type: ignore[arg-type]


async def test_new_session_is_empty(store: SessionStore) -> None:
    """A created session exists with seq 0, its owner, and no active response."""
    sid = await new_session(store)
    rec = await store.get_session(sid)
    assert rec is not None
    assert (rec.tenant, rec.user, rec.token_hash, rec.last_seq, rec.active_response) == (
        "t1",
        "u1",
        "hash",
        0,
        None,
    )
    assert await store.get_session("nope") is None


async def test_seqs_are_gap_free_and_stamped_in_the_json(store: SessionStore) -> None:
    """Every appended event gets the next seq, visible both in the entry and inside its JSON."""
    sid = await new_session(store)
    res = await accept(store, sid)
    assert res.status == "accepted"
    outs = await store.append_deltas([delta(sid, "r1", f"w{i} ") for i in range(5)])
    end = await store.finish(sid, "r1", body=done("r1"), finish_reason="stop")
    entries = await store.read(sid, 0, 100)
    assert [e.seq for e in entries] == list(range(1, 9))
    assert [o.seq for o in outs] == [3, 4, 5, 6, 7]  # type: ignore[union-attr]
    assert end is not None and end.seq == 8
    for e in entries:
        assert json.loads(e.data)["seq"] == e.seq == seq_of(e.data)


async def test_read_after_seq_returns_only_newer_events(store: SessionStore) -> None:
    """read(after_seq) starts right after the given seq and honours the limit."""
    sid = await new_session(store)
    await accept(store, sid)
    await store.append_deltas([delta(sid, "r1", "a "), delta(sid, "r1", "b ")])
    assert [e.seq for e in await store.read(sid, 2, 10)] == [3, 4]
    assert [e.seq for e in await store.read(sid, 0, 2)] == [1, 2]
    assert await store.read(sid, 4, 10) == []


async def test_history_holds_user_and_partial_assistant_turns(store: SessionStore) -> None:
    """The model's history gets the user turn at accept and the logged text at finish."""
    sid = await new_session(store)
    await accept(store, sid)
    await store.append_deltas([delta(sid, "r1", "one "), delta(sid, "r1", "two ")])
    await store.finish(sid, "r1", body=done("r1", "cancelled"), finish_reason="cancelled")
    hist = await store.history(sid)
    assert [(t["role"], t["content"]) for t in hist] == [("user", "hello c1"), ("assistant", "one two ")]
    assert hist[1]["finish_reason"] == "cancelled"


async def test_accept_returns_the_history_the_model_sees(store: SessionStore) -> None:
    """An accepted turn comes back with the whole history, its own user turn last (no second read)."""
    sid = await new_session(store)
    first: Any = await accept(store, sid)
    assert [(t["role"], t["content"]) for t in first.history] == [("user", "hello c1")]
    await store.finish(sid, "r1", body=done("r1"), finish_reason="stop")
    second: Any = await accept(store, sid, cid="c2", rid="r2", now=2_000)
    assert second.history == await store.history(sid)
    assert [t["role"] for t in second.history] == ["user", "assistant", "user"]


async def test_one_running_response_per_session(store: SessionStore) -> None:
    """A second accept while a response runs is busy; after finish it is accepted."""
    sid = await new_session(store)
    await accept(store, sid)
    busy = await accept(store, sid, cid="c2", rid="r2")
    assert busy.status == "busy" and busy.response_id == "r1"
    await store.finish(sid, "r1", body=done("r1"), finish_reason="stop")
    assert (await accept(store, sid, cid="c2", rid="r2")).status == "accepted"


async def test_repeated_client_msg_id_is_a_duplicate_even_after_completion(store: SessionStore) -> None:
    """The same client_msg_id returns the original seq and logs nothing new."""
    sid = await new_session(store)
    await accept(store, sid)
    dup = await accept(store, sid, rid="r9")
    assert (dup.status, dup.duplicate_seq, dup.response_id) == ("duplicate", 1, "r1")
    await store.finish(sid, "r1", body=done("r1"), finish_reason="stop")
    dup = await accept(store, sid, rid="r9")
    assert dup.status == "duplicate" and dup.message_id == "m-c1"
    assert len(await store.read(sid, 0, 100)) == 3


async def test_nothing_is_logged_for_a_response_after_its_terminal_event(store: SessionStore) -> None:
    """Deltas and a second finish after the terminal event are refused ('gone')."""
    sid = await new_session(store)
    await accept(store, sid)
    await store.finish(sid, "r1", body=done("r1"), finish_reason="stop")
    assert await store.append_deltas([delta(sid, "r1", "late ")]) == ["gone"]
    assert await store.finish(sid, "r1", body=done("r1"), finish_reason="stop") is None
    assert len(await store.read(sid, 0, 100)) == 3


async def test_cancel_marks_the_running_response_and_fences_its_deltas(store: SessionStore) -> None:
    """A cancel request makes later delta writes and lease renewals answer 'cancel'."""
    sid = await new_session(store)
    await accept(store, sid)
    seen: list[tuple[str, str]] = []
    store.on_cancel(lambda s, r: seen.append((s, r)))
    assert await store.request_cancel(sid, None) == ("cancelling", "r1")
    assert await store.append_deltas([delta(sid, "r1", "x ")]) == ["cancel"]
    assert await store.renew([(sid, "r1")], 99_999) == ["cancel"]
    await store.finish(sid, "r1", body=done("r1", "cancelled"), finish_reason="cancelled")
    assert await store.request_cancel(sid, "r1") == ("finished", "r1")
    assert await store.request_cancel(sid, None) == ("idle", "")
    assert (await store.request_cancel(sid, "r-other"))[0] == "unknown"


async def test_expired_lease_is_found_and_reaped_once(store: SessionStore) -> None:
    """A lease past its deadline is listed, and finish(expired_before) ends it exactly once."""
    sid = await new_session(store)
    await accept(store, sid, now=1_000)
    assert await store.expired_leases(1_000 + LEASE - 1) == []
    assert (sid, "r1") in await store.expired_leases(1_000 + LEASE + 1)
    assert (
        await store.finish(
            sid, "r1", body=done("r1", "interrupted"), finish_reason="interrupted", expired_before=1_000
        )
        is None
    )
    first = await store.finish(
        sid, "r1", body=done("r1", "interrupted"), finish_reason="interrupted", expired_before=10_000
    )
    again = await store.finish(
        sid, "r1", body=done("r1", "interrupted"), finish_reason="interrupted", expired_before=10_000
    )
    assert first is not None and again is None


async def test_expired_leases_of_sessions_in_every_index_bucket_are_all_found(store: SessionStore) -> None:
    """The reaper's scan covers every lease index bucket: 40 sessions' expired leases are all listed."""
    sids = [await new_session(store, f"spread-{i}") for i in range(40)]
    assert len({keys.index_bucket(sid) for sid in sids}) == keys.INDEX_BUCKETS  # every bucket in use
    for sid in sids:
        await accept(store, sid, now=1_000)
    expired = await store.expired_leases(1_000 + LEASE + 1, limit=100)
    assert sorted(expired) == sorted((sid, "r1") for sid in sids)
    assert len(await store.expired_leases(1_000 + LEASE + 1, limit=7)) == 7  # the bound holds over buckets


async def test_stale_response_is_reported_on_accept(store: SessionStore) -> None:
    """Accept while another response's lease has expired reports 'stale' instead of busy."""
    sid = await new_session(store)
    await accept(store, sid, now=1_000)
    res = await accept(store, sid, cid="c2", rid="r2", now=1_000 + LEASE + 1)
    assert res.status == "stale" and res.response_id == "r1"


async def test_renew_extends_the_lease(store: SessionStore) -> None:
    """A renewed lease is no longer expired at its old deadline."""
    sid = await new_session(store)
    await accept(store, sid, now=1_000)
    assert await store.renew([(sid, "r1")], 50_000) == ["ok"]
    assert (sid, "r1") not in await store.expired_leases(1_000 + LEASE + 1)
    assert await store.renew([(sid, "r-x")], 50_000) == ["gone"]


async def test_renew_many_leases_answers_each_in_order(store: SessionStore) -> None:
    """One renew call covers several sessions and answers ok / gone / cancel for each, in order."""
    a, b, c = [await new_session(store, sid) for sid in ("s1", "s2", "s3")]
    for sid in (a, b, c):
        await accept(store, sid, now=1_000)
    await store.request_cancel(c, "r1")
    leases = [(a, "r1"), (b, "r-old"), (c, "r1")]
    assert await store.renew(leases, 50_000) == ["ok", "gone", "cancel"]
    expired = await store.expired_leases(1_000 + LEASE + 1)
    assert (a, "r1") not in expired and (c, "r1") in expired
    assert await store.renew([], 50_000) == []


async def test_feedback_last_write_wins_and_unknown_response_is_refused(store: SessionStore) -> None:
    """Feedback is logged each time, the stored value is the last one, unknown responses get None."""
    sid = await new_session(store)
    await accept(store, sid)
    body = '{"type":"feedback.recorded","response_id":"r1","rating":"up"}'
    assert await store.record_feedback(sid, "r1", feedback={"rating": "up"}, body=body) is not None
    assert await store.record_feedback(sid, "r1", feedback={"rating": "down"}, body=body) is not None
    assert await store.record_feedback(sid, "nope", feedback={"rating": "up"}, body=body) is None
    assert (await store.feedback(sid))["r1"]["rating"] == "down"


async def test_snapshot_has_turns_and_in_flight_text(store: SessionStore) -> None:
    """A snapshot carries the finished turns, the partial running reply and the newest seq."""
    sid = await new_session(store)
    await accept(store, sid)
    await store.append_deltas([delta(sid, "r1", "par"), delta(sid, "r1", "tial")])
    snap = await store.snapshot(sid)
    assert snap.last_seq == 4
    assert [t["role"] for t in snap.turns] == ["user"]
    assert snap.in_flight == {"role": "assistant", "id": "r1", "content": "partial"}


async def test_log_is_trimmed_to_max_length_and_replay_reports_the_gap(store: SessionStore) -> None:
    """Past log_max_len old events are dropped, and replaying from before them raises LogGap."""
    sid = await new_session(store)
    await accept(store, sid)
    for i in range(0, 300, 50):
        await store.append_deltas([delta(sid, "r1", f"{j} ") for j in range(i, i + 50)])
    entries = await store.read(sid, 0, 10_000)
    assert entries[-1].seq == 302
    assert entries[0].seq > 1 and len(entries) <= 150  # redis trims approximately ('~'), memory exactly
    try:
        async for _ in replay(store, sid, 0):
            pass
        raise AssertionError("replay from a trimmed position must raise")
    except LogGap:
        pass


async def test_live_subscriber_gets_new_events_after_replay(store: SessionStore) -> None:
    """tail() replays stored events then yields live ones, contiguous and without duplicates."""
    sid = await new_session(store)
    await accept(store, sid)
    sub = await store.subscribe(sid)
    try:
        it = tail(store, sub, 0).__aiter__()
        first = await it.__anext__()
        assert [e.seq for e in first] == [1, 2]
        await store.append_deltas([delta(sid, "r1", "a ")])
        await store.append_deltas([delta(sid, "r1", "b ")])
        got: list[int] = []
        while len(got) < 2:
            got += [e.seq for e in await it.__anext__()]
        assert got == [3, 4]
    finally:
        store.unsubscribe(sub)


async def test_subscriber_overflow_is_reported(store: SessionStore) -> None:
    """A reader that falls past its buffer bound is marked overflowed (slow consumer)."""
    sid = await new_session(store)
    await accept(store, sid)
    sub = await store.subscribe(sid, max_pending=16)
    try:
        await store.append_deltas([delta(sid, "r1", f"{i} ") for i in range(40)])
        assert sub.overflowed
    finally:
        store.unsubscribe(sub)


async def test_list_sessions_names_recently_active_sessions(store: SessionStore) -> None:
    """list_sessions(since) names sessions created or rated at or after since, least recent first, paged."""
    await new_session(store, "s-old")
    await new_session(store, "s-rated")
    since = int(time.time() * 1000) + 1
    while int(time.time() * 1000) < since:  # let the clock pass the creations (at most a millisecond)
        pass
    assert await store.list_sessions(since) == []
    await accept(store, "s-rated")
    await store.finish("s-rated", "r1", body=done("r1"), finish_reason="stop")
    body = encode(FeedbackRecorded(response_id="r1", rating="up"))
    assert await store.record_feedback("s-rated", "r1", feedback={"rating": "up"}, body=body) is not None
    assert await store.list_sessions(since) == ["s-rated"]
    assert await store.list_sessions(0) == ["s-old", "s-rated"]
    pages = [await store.list_sessions(0, offset=i, limit=1) for i in range(3)]
    assert pages == [["s-old"], ["s-rated"], []]


async def test_sessions_expire_after_their_ttl(any_store_kind: str, request: object) -> None:
    """Every key of an idle session expires with the session TTL; an expired session is not found."""
    import time

    from parley.sessions import open_store

    from .conftest import store_url

    short = open_store(store_url(any_store_kind, request), session_ttl_ms=300)  # type: ignore[arg-type]
    await short.start()
    try:
        sid = await new_session(short, "s-ttl")
        await accept(short, sid)
        await short.finish(sid, "r1", body=done("r1"), finish_reason="stop")
        assert await short.get_session(sid) is not None
        deadline = time.monotonic() + 5
        while await short.get_session(sid) is not None:  # the behaviour under test is the passing of time
            assert time.monotonic() < deadline, "session did not expire"
            await asyncio.sleep(0.05)
        assert await short.read(sid, 0, 10) == []
        assert await short.history(sid) == []
    finally:
        await short.close()


async def test_new_redis_connections_skip_the_metadata_lookup(redis_url: str, monkeypatch: Any) -> None:
    """A burst that grows the store's connection pool never reads redis-py's version from package metadata."""
    import redis.utils

    from parley.sessions import open_store

    def no_lookup() -> str:
        raise AssertionError("redis-py looked its version up for a new connection")

    monkeypatch.setattr(redis.utils, "get_lib_version", no_lookup)
    s = open_store(redis_url)
    await s.start()
    try:
        await asyncio.gather(*(s.create_session(f"drv{i}", "t", "u", "h") for i in range(8)))
        assert all([await s.get_session(f"drv{i}") for i in range(8)])
    finally:
        await s.close()


async def test_index_entries_of_a_burst_go_out_as_one_command_per_index(redis_url: str) -> None:
    """Index writes made together reach Redis as one ZADD (and one ZREM) per index, in the order made."""
    import redis.asyncio as aioredis

    from parley.sessions import keys, open_store

    admin = aioredis.Redis.from_url(redis_url, decode_responses=True)

    async def calls(command: str) -> int:
        stats = await admin.info("commandstats")
        return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))

    s: Any = open_store(redis_url)
    await s.start()
    try:
        before = await calls("zadd"), await calls("zrem")
        for i in range(20):
            s._index(keys.leases_key(0), f"burst{i}\tr1", 10_000 + i)
        s._index(keys.leases_key(0), "burst0\tr1", None)  # removed after being added: stays out
        s._index(keys.leases_key(0), "burst1\tr1", 5_000)  # an older deadline: the later one stays
        await s.expired_leases(0)  # a read of the index waits for the writes
        after = await calls("zadd"), await calls("zrem")
        scores = dict(await admin.zrange(keys.leases_key(0), 0, -1, withscores=True))
    finally:
        await s.close()
        await admin.aclose()
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)
    assert "burst0\tr1" not in scores and scores["burst1\tr1"] == 10_001 and len(scores) == 19


async def test_index_writes_keep_their_order_and_deadlines_only_grow(redis_url: str) -> None:
    """A removal after an earlier batch's add wins, and a lower score for a member already in Redis
    leaves its (later) deadline in place."""
    import redis.asyncio as aioredis

    from parley.sessions import keys, open_store

    s: Any = open_store(redis_url)
    await s.start()
    try:
        s._index(keys.leases_key(0), "a\tr1", 10_000)
        s._index(keys.leases_key(0), "b\tr1", 10_000)
        await s.expired_leases(0)  # the first batch is in Redis
        s._index(keys.leases_key(0), "a\tr1", None)
        s._index(keys.leases_key(0), "b\tr1", 5_000)
        expired = await s.expired_leases(9_999)
    finally:
        await s.close()
    admin = aioredis.Redis.from_url(redis_url, decode_responses=True)
    scores = dict(await admin.zrange(keys.leases_key(0), 0, -1, withscores=True))
    await admin.aclose()
    assert scores == {"b\tr1": 10_000} and expired == []


async def test_index_reads_do_not_wait_out_steady_index_traffic(redis_url: str) -> None:
    """While index entries keep arriving, a read of the index waits only for the writes made before it."""
    from parley.sessions import keys, open_store

    s: Any = open_store(redis_url)
    await s.start()
    stop = False

    async def feed() -> int:
        for i in range(200_000):  # bounded: a writer that waited for idleness would see it end
            if stop:
                return i
            s._index(keys.leases_key(0), f"steady{i}\tr1", 10_000 + i)
            await asyncio.sleep(0)
        return -1

    feeder = asyncio.create_task(feed())
    try:
        s._index(keys.leases_key(0), "first\tr1", 1)
        assert ("first", "r1") in await s.expired_leases(2)
        stop = True
        assert await feeder != -1  # the read returned while entries were still arriving
    finally:
        stop = True
        await feeder
        await s.close()


async def test_a_cancelled_subscribe_leaves_no_reader(redis_url: str) -> None:
    """A subscribe cancelled while waiting for Redis's confirmation leaves no reader in the fan-out."""
    from parley.sessions import open_store

    s: Any = open_store(redis_url)
    await s.start()
    try:
        pending = asyncio.create_task(s.subscribe("s-cancel"))
        for _ in range(100):  # until it registered its reader (it then waits for the confirmation)
            if s.fanout.sessions():
                break
            await asyncio.sleep(0)
        assert s.fanout.sessions() == ["s-cancel"] and not pending.done()
        pending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pending
        assert s.fanout.sessions() == []
    finally:
        await s.close()


@pytest.mark.parametrize("kind", ["redis", "cluster"])
async def test_a_lease_is_in_the_index_once_its_turn_is_accepted(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """When accept returns, the lease is already in Redis's index (a process killed right then is reaped),
    and a turn that was not accepted leaves no entry behind."""
    import redis
    from redis.cluster import RedisCluster

    from parley.sessions import keys, open_store

    from .conftest import store_url

    url = store_url(kind, request)
    s: Any = open_store(url, log_max_len=50)
    plain = "redis://" + url.split("://", 1)[1]
    # a blocking client: its read happens before this process's event loop can run anything else
    admin: Any = RedisCluster.from_url(plain) if kind == "cluster" else redis.Redis.from_url(plain)
    await s.start()
    try:
        sid = await new_session(s, "lease-now")
        await accept(s, sid, "c1", "r1", now=1_000)
        assert admin.zscore(keys.leases_of(sid), f"{sid}\tr1") == 1_000 + LEASE
        await accept(s, sid, "c2", "r2", now=1_001)  # busy: r1 is still generating
        await s.expired_leases(0)  # index reads wait for this process's index writes
        assert admin.zscore(keys.leases_of(sid), f"{sid}\tr2") is None
    finally:
        await s.close()
        admin.close()
