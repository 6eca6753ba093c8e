"""Lost session state is answered: readers get session_lost and close 4010, sends get session_not_found."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from parley.client import ParleyClient, ParleyClosed
from parley.protocol.errors import SessionNotFound
from parley.sessions import SessionStore, open_store
from parley.sessions.redis_store import RedisStore

from .conftest import store_url
from .support import RedisServer, ServerProcess, live_server, reference_reply
from .test_store import accept, delta, new_session

#: The documented bound (docs/operations.md): every reader hears of a loss within this many
#: seconds of Redis answering again (restart) or of the flush.
LOSS_BOUND_S = 5.0


async def until(predicate: Any, timeout: float, what: str) -> None:  # noqa: ASYNC109
    """Poll a condition the system under test must reach within ``timeout`` (the bound is the assertion)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.02)


async def expired(store: SessionStore, sid: str) -> None:
    deadline = time.monotonic() + 5
    while await store.get_session(sid) is not None:  # the behaviour under test is the passing of time
        assert time.monotonic() < deadline, "session did not expire"
        await asyncio.sleep(0.05)


async def terminal(c: ParleyClient, timeout: float) -> tuple[dict[str, Any], int | None]:  # noqa: ASYNC109
    """Read until the connection ends: the session_lost error and the close code that followed it."""
    err: dict[str, Any] = {}
    with pytest.raises(ParleyClosed) as info:
        async with asyncio.timeout(timeout):
            while True:
                ev = await c.next_event(timeout=timeout)
                if ev["type"] == "error" and ev["code"] == "session_lost":
                    err = ev
    return err, info.value.code


# ------------------------------------------------------------------ the store contract


async def test_a_write_to_a_vanished_session_tells_its_readers(any_store_kind: str, request: Any) -> None:
    """Deltas, renewal and the terminal write to a session whose state is gone mark its readers lost."""
    short = open_store(store_url(any_store_kind, request), session_ttl_ms=300)
    await short.start()
    try:
        sid = await new_session(short, "s-vanish")
        await accept(short, sid)
        sub = await short.subscribe(sid)
        await expired(short, sid)
        assert not sub.lost
        assert await short.append_deltas([delta(sid, "r1", "x")]) == ["gone"]
        assert sub.lost and not sub.idle
        sub.lost = False
        assert await short.renew([(sid, "r1")], int(time.time() * 1000) + 5000) == ["gone"]
        assert sub.lost
        sub.lost = False
        assert await short.finish(sid, "r1", body="{}", finish_reason="stop") is None
        assert sub.lost
        short.unsubscribe(sub)
    finally:
        await short.close()


async def test_accept_on_a_vanished_session_is_session_not_found(any_store_kind: str, request: Any) -> None:
    """message.send's store step on a session whose state is gone raises SessionNotFound (never KeyError)."""
    short = open_store(store_url(any_store_kind, request), session_ttl_ms=300)
    await short.start()
    try:
        sid = await new_session(short, "s-gone")
        sub = await short.subscribe(sid)
        await expired(short, sid)
        with pytest.raises(SessionNotFound):
            await accept(short, sid, cid="c-late", rid="r-late")
        assert sub.lost
        short.unsubscribe(sub)
    finally:
        await short.close()


async def test_a_flush_is_noticed_by_the_epoch_and_announced_to_other_instances(
    redis_url: str, redis_server: RedisServer
) -> None:
    """After FLUSHALL (no connection drops) readers on two stores are marked lost within the bound."""
    a, b = RedisStore(redis_url), RedisStore(redis_url)
    await a.start()
    await b.start()
    try:
        await until(lambda: a.loss.epoch is not None and b.loss.epoch is not None, 5, "epoch read")
        sid = await new_session(a, "s-flush")
        subs = [await a.subscribe(sid), await b.subscribe(sid)]
        keep = await new_session(a, "s-other")
        other = await b.subscribe(keep)
        redis_server.command("FLUSHALL")
        await new_session(a, keep)  # recreated: alive after the flush, so it must not be reported lost
        await until(lambda: all(s.lost for s in subs), LOSS_BOUND_S, "readers marked lost")
        assert not other.lost
        assert a.health.sessions_lost + b.health.sessions_lost >= 1
    finally:
        await a.close()
        await b.close()


async def test_a_fence_hit_on_one_instance_reaches_readers_on_another(
    redis_url: str, monkeypatch: Any
) -> None:
    """A store finding a session gone announces it on the control channel; the other's readers end."""
    monkeypatch.setattr("parley.sessions.loss.EPOCH_CHECK_S", 3600.0)  # only the announcement can tell b
    a, b = RedisStore(redis_url), RedisStore(redis_url)
    await a.start()
    await b.start()
    try:
        sid = await new_session(a, "s-fence")
        await accept(a, sid)
        sub = await b.subscribe(sid)
        await a._r.delete(*[f"parley:{{{sid}}}:{k}" for k in ("meta", "log", "partial", "hist")])
        assert await a.append_deltas([delta(sid, "r1", "x")]) == ["gone"]
        await until(lambda: sub.lost, LOSS_BOUND_S, "reader on the other instance marked lost")
    finally:
        await a.close()
        await b.close()


# ------------------------------------------------------------------ one server over real sockets


async def test_a_send_after_a_flush_gets_session_not_found_then_the_reader_ends(
    redis_url: str, redis_server: RedisServer, monkeypatch: Any
) -> None:
    """With the flush not yet noticed, message.send gets session_not_found; then session_lost and 4010."""
    monkeypatch.setattr("parley.sessions.loss.EPOCH_CHECK_S", 3600.0)  # the send must be the first to notice
    async with live_server(store=redis_url, echo_tokens_per_second=0) as live:
        c = ParleyClient(live.url, auto_resume=False)
        await c.connect()
        await c.ask("before the flush")
        sid, tok = c.session_id, c.resume_token
        redis_server.command("FLUSHALL")
        cid = await c.send("after the flush")
        answer = await c.next_event("error")
        assert answer["code"] == "session_not_found" and answer["retryable"] is False
        assert answer["ref"] == {"type": "message.send", "client_msg_id": cid}
        err, code = await terminal(c, LOSS_BOUND_S)
        assert err["code"] == "session_lost" and err["retryable"] is False
        assert code == 4010
        with pytest.raises(ParleyClosed) as info:
            await ParleyClient(live.url, session_id=sid, resume_token=tok, auto_resume=False).connect()
        assert (info.value.code, info.value.reason) == (4004, "session_not_found")


# ------------------------------------------------------------------ two processes, Redis restarted

ENV = {
    "PARLEY_ECHO_TOKENS_PER_SECOND": "50",
    "PARLEY_ECHO_REPLY_TOKENS": "400",
    "PARLEY_DRAIN_TIMEOUT_MS": "0",
}


@pytest.fixture
def own_redis(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    redis = RedisServer(dir=str(tmp_path), persist=bool(getattr(request, "param", False)))
    redis.start()
    yield redis
    redis.stop()


@pytest.fixture
def pair(own_redis: RedisServer) -> Iterator[list[ServerProcess]]:
    procs = [ServerProcess({**ENV, "PARLEY_STORE": own_redis.url}) for _ in range(2)]
    for p in procs:
        p.start()
    yield procs
    for p in procs:
        p.stop(signal.SIGKILL)


def running_generations(proc: ServerProcess) -> float:
    text = httpx.get(f"{proc.http}/metrics", timeout=2).text
    line = next(x for x in text.splitlines() if x.startswith("parley_generations_running "))
    return float(line.split()[1])


@pytest.mark.slow
async def test_redis_restarted_empty_mid_reply_ends_every_reader(
    own_redis: RedisServer, pair: list[ServerProcess]
) -> None:
    """Redis restarted without its data: every watcher on both instances gets session_lost + 4010 in bound."""
    a, b = pair
    gen = ParleyClient(a.url, auto_resume=False)
    await gen.connect()
    sid, tok = gen.session_id, gen.resume_token
    await gen.send("a long reply")
    await gen.next_event("response.delta")
    watchers = [
        ParleyClient(url, session_id=sid, resume_token=tok, auto_resume=False) for url in (a.url, b.url)
    ]
    idle = ParleyClient(b.url, auto_resume=False)  # another session, idle, on the other instance
    for c in (*watchers, idle):
        await c.connect()
    idle_sid, idle_tok = idle.session_id, idle.resume_token
    own_redis.stop(signal.SIGKILL)
    own_redis.start()  # no persistence: empty
    back = time.monotonic()
    results = await asyncio.gather(*(terminal(c, LOSS_BOUND_S + 5) for c in (gen, *watchers, idle)))
    elapsed = time.monotonic() - back
    for err, code in results:
        assert err["code"] == "session_lost" and err["retryable"] is False
        assert code == 4010
    assert elapsed < LOSS_BOUND_S, f"readers told after {elapsed:.2f} s"
    assert not any(c.completed for c in (gen, *watchers))  # no invented terminal event
    # the generation stopped instead of retrying
    deadline = time.monotonic() + LOSS_BOUND_S
    while running_generations(a) != 0:
        assert time.monotonic() < deadline, "the generation is still running"
        await asyncio.sleep(0.05)
    # a later resume (or send) on either session is refused like any unknown session
    for url, s, t in ((a.url, sid, tok), (b.url, idle_sid, idle_tok)):
        with pytest.raises(ParleyClosed) as info:
            await ParleyClient(url, session_id=s, resume_token=t, auto_resume=False).connect()
        assert (info.value.code, info.value.reason) == (4004, "session_not_found")
    assert "session store unreachable" in a.log() and "session lost by the store" in a.log()
    for p in (a, b):
        assert "Traceback" not in p.log()
    print(f"redis restarted empty: every reader told within {elapsed:.2f} s")


@pytest.mark.slow
@pytest.mark.parametrize("own_redis", [True], indirect=True)
async def test_redis_restarted_with_aof_mid_reply_completes_exactly(
    own_redis: RedisServer, pair: list[ServerProcess]
) -> None:
    """Redis restarted with its AOF: the reply completes with the exact text on both instances."""
    a, b = pair
    expected, _ = await reference_reply(a.url, "survive the restart")
    gen = ParleyClient(a.url, auto_resume=False)
    await gen.connect()
    watcher = ParleyClient(b.url, session_id=gen.session_id, resume_token=gen.resume_token, auto_resume=False)
    await watcher.connect()
    cid = await gen.send("survive the restart")
    await gen.next_event("response.delta")
    own_redis.stop(signal.SIGKILL)
    own_redis.start()
    reply = await gen.collect(cid, timeout=30)
    assert reply.finish_reason == "stop" and reply.text == expected
    while reply.response_id not in watcher.completed:
        await watcher.next_event(timeout=15)
    assert "".join(watcher.texts[reply.response_id]) == expected
    for c in (gen, watcher):
        assert c.gaps == 0 and c.duplicates_dropped == 0
        await c.close()
    for p in (a, b):
        assert "session lost" not in p.log()
