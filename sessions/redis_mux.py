"""One pipelined Redis connection that carries the store's hot commands for every caller.

redis-py's asyncio pool spends 150-250 µs of CPU per command in a burst (a condition
variable, a timeout context, a readiness probe of the socket, observability hooks, the
release) and a socket write per command; a hello, a turn and a resume each pay it once
or twice (docs/benchmarks.md). Redis answers the commands of one connection in order,
so one connection serves any number of concurrent callers: a call packs its command
(hiredis), queues a future, and the commands of one event-loop turn leave in one write;
replies, parsed by hiredis, resolve the futures first in, first out.

A reply that takes longer than ``reply_timeout`` means Redis (or the path to it) is
stuck: the connection is dropped and every waiting call fails, as redis-py's socket
timeout would; the next call connects again. Nothing is retried here: a caller that
sees an error cannot know whether its command ran, and the protocol's own idempotency
keys decide (a resent ``message.send`` with the same ``client_msg_id`` is a duplicate).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Sequence
from typing import Any

import hiredis
from redis.asyncio.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .url import parse_store_url

log = logging.getLogger("parley.redis")


def _log_failure(fut: asyncio.Future[Any]) -> None:
    """A command nobody awaits failed: a lost connection fails the awaited command after it too (and
    the store's outage tracker reports that once), so only other errors are worth a warning."""
    if not fut.cancelled() and (exc := fut.exception()) is not None:
        lost = isinstance(exc, (RedisConnectionError, RedisTimeoutError, OSError))
        level = logging.DEBUG if lost else logging.WARNING
        log.log(level, "redis command failed (%s: %s)", type(exc).__name__, exc)


def _reply_error(message: str) -> ResponseError:
    return NoScriptError(message) if message.startswith("NOSCRIPT") else ResponseError(message)


class _Pipe(asyncio.Protocol):
    """The connection: queued futures resolved in reply order."""

    def __init__(self, reply_timeout: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._reader = hiredis.Reader(encoding="utf-8")
        self._waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self._out: list[bytes] = []
        self._reply_timeout = reply_timeout
        self._timer: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def request(self, args: Sequence[Any]) -> asyncio.Future[Any]:
        if self.lost:
            raise RedisConnectionError("connection to Redis lost")
        fut = self._loop.create_future()
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(hiredis.pack_command(tuple(args)))
        self._waiting.append((fut, self._loop.time()))
        if self._timer is None:
            self._timer = self._loop.call_later(self._reply_timeout / 4, self._check)
        return fut

    def _flush(self) -> None:
        if self._out and not self.lost and self.transport is not None:
            self.transport.write(b"".join(self._out))
        self._out.clear()

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        waiting = self._waiting
        while True:
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError as exc:
                self._drop(RedisConnectionError(f"Redis protocol error: {exc}"))
                return
            if reply is False:
                return
            if not waiting:  # nothing was asked: this is not a conversation we can follow
                self._drop(RedisConnectionError("unexpected reply from Redis"))
                return
            fut, _ = waiting.popleft()
            if fut.done():  # the caller gave up (cancelled, or the connection timed out meanwhile)
                continue
            if isinstance(reply, hiredis.ReplyError):
                fut.set_exception(_reply_error(str(reply)))
            else:
                fut.set_result(reply)

    def _check(self) -> None:
        """Every quarter reply timeout while calls wait: is the oldest reply overdue?"""
        self._timer = None
        if not self._waiting or self.lost:
            return
        if self._loop.time() - self._waiting[0][1] > self._reply_timeout:
            self._drop(RedisTimeoutError("Redis did not answer in time"))
            return
        self._timer = self._loop.call_later(self._reply_timeout / 4, self._check)

    def _drop(self, exc: Exception) -> None:
        self._fail(exc)
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, exc: Exception) -> None:
        self.lost = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiting:
            fut, _ = self._waiting.popleft()
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # some are never awaited (set-up commands after a failed one): no warning

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}"))


class Multiplexed:
    """Commands over one shared, pipelined connection; connects on first use and after a loss."""

    @staticmethod
    def serves(url: str) -> bool:
        """Plain TCP and Unix sockets; a TLS URL (``rediss://``, with its certificate options) stays
        with redis-py."""
        return parse_store_url(url).scheme in ("redis", "unix")

    def __init__(self, url: str, *, connect_timeout: float, reply_timeout: float) -> None:
        opts = parse_url(url)
        self._path: str | None = opts.get("path")
        self._host: str = opts.get("host", "localhost")
        self._port = int(opts.get("port", 6379))
        self._db = int(opts.get("db", 0) or 0)
        self._username: str | None = opts.get("username")
        self._password: str | None = opts.get("password")
        self._connect_timeout = connect_timeout
        self._reply_timeout = reply_timeout
        self._pipe: _Pipe | None = None
        self._opening: asyncio.Task[_Pipe] | None = None

    async def call(self, *args: Any) -> Any:
        return await (await self._ready()).request(args)

    async def evalsha(
        self, sha: str, script: str, keys: Sequence[str], args: Sequence[Any], *, before: Sequence[Any] = ()
    ) -> Any:
        """Run a script by digest; load it once if this Redis does not know it (a restart, a failover).

        ``before``: a command for Redis to run just ahead of the script, in the same write (no
        round trip of its own); its reply is not waited for, a failure of it only logged.
        """
        pipe = await self._ready()
        if before:
            pipe.request(before).add_done_callback(_log_failure)
        try:
            return await pipe.request(("EVALSHA", sha, len(keys), *keys, *args))
        except NoScriptError:
            await self.call("SCRIPT", "LOAD", script)
            return await self.call("EVALSHA", sha, len(keys), *keys, *args)

    async def aclose(self) -> None:
        if self._opening is not None:
            self._opening.cancel()
        pipe, self._pipe = self._pipe, None
        if pipe is not None and pipe.transport is not None:
            pipe.transport.close()

    async def _ready(self) -> _Pipe:
        """The open connection, or one attempt to open it that every caller arriving meanwhile shares
        (a burst during an outage fails together instead of queueing connect timeouts)."""
        pipe = self._pipe
        if pipe is not None and not pipe.lost:
            return pipe
        if self._opening is None:
            self._opening = asyncio.get_running_loop().create_task(self._open(), name="parley-redis-connect")
            self._opening.add_done_callback(self._opened)
        return await asyncio.shield(self._opening)

    def _opened(self, task: asyncio.Task[_Pipe]) -> None:
        self._opening = None
        if not task.cancelled() and task.exception() is None:
            self._pipe = task.result()

    async def _open(self) -> _Pipe:
        loop = asyncio.get_running_loop()

        def pipe_factory() -> _Pipe:
            return _Pipe(self._reply_timeout)

        try:
            async with asyncio.timeout(self._connect_timeout):
                if self._path:
                    _, pipe = await loop.create_unix_connection(pipe_factory, self._path)
                else:
                    _, pipe = await loop.create_connection(pipe_factory, self._host, self._port)
                setup = []
                if self._password is not None:
                    auth = (self._username, self._password) if self._username else (self._password,)
                    setup.append(pipe.request(("AUTH", *auth)))
                if self._db:
                    setup.append(pipe.request(("SELECT", self._db)))
                try:
                    for fut in setup:
                        await fut
                except BaseException:
                    pipe._drop(RedisConnectionError("Redis refused the connection's set-up"))
                    raise
        except TimeoutError as exc:
            raise RedisTimeoutError("timed out connecting to Redis") from exc
        except OSError as exc:
            raise RedisConnectionError(f"cannot connect to Redis: {exc}") from exc
        return pipe
