"""The pipelined Redis connection behind the store's hot commands, against real redis-servers."""

from __future__ import annotations

import asyncio
import hashlib
import signal
from collections.abc import Iterator

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from parley.sessions.redis_mux import Multiplexed

from .support import RedisServer


def mux(url: str, reply_timeout: float = 2.0) -> Multiplexed:
    return Multiplexed(url, connect_timeout=1.0, reply_timeout=reply_timeout)


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of the test's own, to stop, freeze or protect with a password."""
    server = RedisServer()
    server.start()
    yield server
    if server.proc is not None:
        server.proc.send_signal(signal.SIGCONT)
    server.stop()


async def test_concurrent_callers_each_get_their_own_reply(redis_url: str) -> None:
    """Hundreds of calls issued at once, mixed with failing ones, each resolve with their own reply."""
    m = mux(redis_url)
    try:
        await m.call("SET", "text", "not a number")
        calls = [m.call("INCRBY", f"n{i}", i) for i in range(300)]
        calls.insert(150, m.call("INCR", "text"))
        results = await asyncio.gather(*calls, return_exceptions=True)
        failed = results.pop(150)
        assert isinstance(failed, ResponseError) and "not an integer" in str(failed)
        assert results == list(range(300))
        assert await m.call("GET", "n299") == "299"  # replies decoded as text
    finally:
        await m.aclose()


async def test_a_caller_that_gives_up_does_not_shift_the_replies(redis_url: str) -> None:
    """A cancelled call's reply is dropped; the calls after it still get their own replies."""
    m = mux(redis_url)
    try:
        await m.call("MSET", "a", "1", "b", "2")
        pipe = await m._ready()
        first = pipe.request(("GET", "a"))  # queued for the loop turn's write...
        first.cancel()  # ...and its caller leaves before the reply
        assert await m.call("GET", "b") == "2"
        assert await m.call("GET", "a") == "1"
    finally:
        await m.aclose()


async def test_a_script_redis_forgot_is_loaded_again(redis_url: str, redis_server: RedisServer) -> None:
    """EVALSHA of a script unknown to Redis (flushed, restarted, failed over) loads it and runs it."""
    m = mux(redis_url)
    script = "return ARGV[1] .. KEYS[1]"
    sha = hashlib.sha1(script.encode()).hexdigest()
    try:
        redis_server.command("SCRIPT", "FLUSH")
        assert await m.evalsha(sha, script, ["k"], ["v-"]) == "v-k"
        assert await m.evalsha(sha, script, ["k2"], ["w-"]) == "w-k2"
    finally:
        await m.aclose()


async def test_calls_fail_fast_while_redis_is_down_and_work_once_it_is_back(own_redis: RedisServer) -> None:
    """With Redis gone every call fails with a connection error; after a restart the next call reconnects."""
    m = mux(own_redis.url)
    try:
        assert await m.call("PING") == "PONG"
        own_redis.stop()
        results = await asyncio.gather(*(m.call("PING") for _ in range(50)), return_exceptions=True)
        assert all(isinstance(r, RedisConnectionError) for r in results), results
        own_redis.start()
        assert await m.call("PING") == "PONG"
    finally:
        await m.aclose()


async def test_a_redis_that_stops_answering_fails_the_waiting_calls(own_redis: RedisServer) -> None:
    """A frozen Redis (SIGSTOP) fails the waiting calls with a timeout; once it runs again, calls work."""
    m = mux(own_redis.url, reply_timeout=0.4)
    try:
        assert await m.call("PING") == "PONG"
        assert own_redis.proc is not None
        own_redis.proc.send_signal(signal.SIGSTOP)
        with pytest.raises(RedisTimeoutError):
            await asyncio.wait_for(m.call("PING"), 5)
        own_redis.proc.send_signal(signal.SIGCONT)
        assert await asyncio.wait_for(m.call("PING"), 5) == "PONG"
    finally:
        await m.aclose()


async def test_password_and_database_come_from_the_url() -> None:
    """AUTH and SELECT from the URL: keys land in the database it names, on a password-protected Redis."""
    server = RedisServer()
    server.start()
    server.command("CONFIG", "SET", "requirepass", "s3cret")
    try:
        m = mux(f"redis://:s3cret@127.0.0.1:{server.port}/3")
        await m.call("SET", "where", "db3")
        await m.aclose()
        assert server.command("-a", "s3cret", "--no-auth-warning", "-n", "3", "GET", "where").strip() == "db3"
        wrong = mux(f"redis://:nope@127.0.0.1:{server.port}/0")
        with pytest.raises(ResponseError):
            await wrong.call("PING")
        await wrong.aclose()
    finally:
        server.stop()


def test_tls_and_cluster_urls_stay_with_redis_py() -> None:
    """Only plain TCP and Unix-socket URLs are multiplexed; TLS keeps redis-py's certificate options."""
    assert Multiplexed.serves("redis://h:6379/0") and Multiplexed.serves("unix:///run/redis.sock")
    assert not Multiplexed.serves("rediss://h:6380/0")
    assert not Multiplexed.serves("redis+cluster://h:7000")
