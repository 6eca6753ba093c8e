"""The production store: Redis Streams for the log, Lua for atomic changes, pub/sub for live delivery.

One pub/sub connection per process carries both the control channel (cancel) and
the events channels of the sessions that have local readers here; the listener
re-creates it and makes every reader re-read the log after any connection loss,
so a Redis restart never leaves a reader silently stale. A restart that lost the data
(or a flush) is noticed by ``loss.py`` and answered as ``session_lost``; every outage
is logged once, by ``outage.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from parley.protocol import seq_of
from parley.protocol.errors import InternalError, SessionNotFound, UpstreamUnavailable

from . import keys, redis_lua
from .fanout import Fanout, Subscriber
from .fastpath import client_options, with_hiredis_packing
from .loss import LossWatch
from .outage import StoreHealth, store_address
from .redis_mux import Multiplexed
from .store import (
    AcceptResult,
    CallRecord,
    CallsOutcome,
    CancelOutcome,
    Continuation,
    DeltaOutcome,
    DeltaWrite,
    LeaseOutcome,
    LogEntry,
    SessionRecord,
    Snapshot,
    ToolRun,
    WebhookClaim,
)
from .url import StoreKind, parse_store_url

#: The tool-call scripts (redis_lua.py), registered with the others.
TOOL_SCRIPTS = ("END_CALLS", "ANSWER", "START_RUN", "WAIT_END")

log = logging.getLogger("parley.redis")

P = ParamSpec("P")
T = TypeVar("T")
Item = TypeVar("Item")

#: What a client is told to wait before retrying while Redis is unreachable.
OUTAGE_RETRY_AFTER_MS = 1000
#: Redis connections per process: enough for bursts of hellos; more would only queue inside Redis.
MAX_CONNECTIONS = 64
#: Socket timeouts: a dead Redis must surface as an error quickly, never as a hang.
SOCKET_TIMEOUT_S = 2.0
CONNECT_TIMEOUT_S = 1.0
#: Pub/sub listener back-off while Redis is unreachable (kept short: readers wait on it).
RESUBSCRIBE_BACKOFF_S = (0.05, 0.1, 0.2, 0.5, 1.0)


def _guard(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Map Redis failures to the protocol's errors at the store boundary; tell the outage tracker."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        health: StoreHealth = args[0].health  # type: ignore[attr-defined]
        try:
            result = await fn(*args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            health.failed(exc)
            raise UpstreamUnavailable(
                "session store unavailable", retry_after_ms=OUTAGE_RETRY_AFTER_MS
            ) from exc
        except RedisError as exc:
            log.exception("redis error")
            raise InternalError() from exc
        if health.down_since is not None:
            health.ok()
        return result

    return wrapper


def _entry(raw: list[Any]) -> LogEntry:
    return LogEntry(int(raw[0]), raw[1])


class RedisStore:
    """``SessionStore`` on Redis (standalone; cluster-safe key layout)."""

    def __init__(
        self,
        url: str,
        *,
        log_max_len: int = keys.LOG_MAX_LEN,
        session_ttl_ms: int = keys.SESSION_TTL_MS,
        history_max_turns: int = keys.HISTORY_MAX_TURNS,
    ) -> None:
        self.url = url
        self.instance_id = uuid.uuid4().hex[:12]
        self.log_max_len = log_max_len
        self.session_ttl_ms = session_ttl_ms
        self.history_max_turns = history_max_turns
        self.fanout = Fanout(on_last=self._on_last_reader)
        self.health = StoreHealth("session store", store_address(url))
        options: dict[str, Any] = dict(
            decode_responses=True,
            socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            **client_options(),
        )
        parsed = parse_store_url(url)
        self.cluster = parsed.kind is StoreKind.CLUSTER
        if self.cluster:
            # every key of a session shares its {hash tag}, so each script runs on one node;
            # classic PUBLISH is broadcast cluster-wide, so pub/sub uses one plain connection to a seed node
            plain = parsed.redis_url
            self._r: Any = RedisCluster.from_url(plain, **options)
            self._ps_client: Any = aioredis.Redis.from_url(plain, **options)
        else:
            # a blocking pool: a burst of commands waits (up to the socket timeout) for a free
            # connection instead of failing with MaxConnectionsError
            pool = aioredis.BlockingConnectionPool.from_url(
                url, max_connections=MAX_CONNECTIONS, timeout=SOCKET_TIMEOUT_S, **options
            )
            pool.connection_class = with_hiredis_packing(pool.connection_class)
            self._r = aioredis.Redis(connection_pool=pool)
            self._ps_client = self._r
        # the hot commands (the scripts, the session lookup, log reads) share one pipelined connection
        # (redis_mux.py); a cluster (the client picks each slot's node itself) and TLS stay on redis-py
        self._mux = (
            Multiplexed(url, connect_timeout=CONNECT_TIMEOUT_S, reply_timeout=SOCKET_TIMEOUT_S)
            if Multiplexed.serves(url)
            else None
        )
        self._scripts = {
            name: self._r.register_script(getattr(redis_lua, name))
            for name in (
                "CREATE",
                "ACCEPT",
                "DELTAS",
                "RENEW",
                "FINISH",
                "CANCEL",
                "FEEDBACK",
                "SNAPSHOT",
                *TOOL_SCRIPTS,
            )
        }
        self.loss = LossWatch(self._r, self.fanout, self.health, self._announce_lost)
        self._epoch_watch: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._cancel_callbacks: list[Callable[[str, str], None]] = []
        self._channels: set[str] = set()  # events channels we want subscribed
        self._confirmed: dict[str, asyncio.Future[None]] = {}
        self._live: set[str] = set()  # events channels whose SUBSCRIBE Redis has confirmed
        self._pubsub: Any = None
        self._listener: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        # (UN)SUBSCRIBEs go out from one task, batched: in order, and a burst of hellos costs a few
        # commands instead of a queue of readers each waiting for the pub/sub connection in turn
        self._to_subscribe: set[str] = set()
        self._to_unsubscribe: set[str] = set()
        self._changes = asyncio.Event()
        self._subscriber: asyncio.Task[None] | None = None
        # index entries (leases, sessions) waiting for the one task that writes them: key -> member
        self._index_adds: dict[str, dict[str, int]] = {}
        self._index_removes: dict[str, set[str]] = {}
        self._index_writer: asyncio.Task[None] | None = None
        self._index_next: asyncio.Future[None] | None = None  # done once the entries waiting are written
        self._index_inflight: asyncio.Future[None] | None = None  # done once the batch being written is
        self._closed = False

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="parley-redis-pubsub")
        self._subscriber = asyncio.create_task(self._send_subscriptions(), name="parley-redis-subscribe")
        self._epoch_watch = asyncio.create_task(self.loss.watch(), name="parley-redis-epoch")

    async def close(self) -> None:
        self._closed = True
        self._changes.set()
        await self._indexed()
        for task in (self._subscriber, self._listener, self._epoch_watch, *self._background):
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
        if self._mux is not None:
            await self._mux.aclose()
        await self._r.aclose()
        if self._ps_client is not self._r:
            await self._ps_client.aclose()

    @_guard
    async def ping(self) -> None:
        await self._r.ping()

    def _args(self, session_id: str, *extra: Any) -> list[Any]:
        channel = keys.events_channel(session_id)
        return [
            self.log_max_len,
            channel,
            self.instance_id,
            self.session_ttl_ms,
            self._self_subscribed(channel),
            *extra,
        ]

    async def _run(
        self, name: str, keys: list[str], args: Sequence[Any] = (), *, before: Sequence[Any] = ()
    ) -> Any:
        """Run one of the store's Lua scripts (redis_lua.py), after the command ``before`` if given."""
        script = self._scripts[name]
        if self._mux is not None:
            return await self._mux.evalsha(script.sha, script.script, keys, args, before=before)
        if before:  # no pipelined connection (a cluster, TLS): the command costs a round trip first
            await self._r.execute_command(*before)
        return await script(keys=keys, args=args)

    async def _hgetall(self, key: str) -> dict[str, str]:
        if self._mux is None:
            return dict(await self._r.hgetall(key))
        flat = await self._mux.call("HGETALL", key)
        return dict(zip(flat[::2], flat[1::2], strict=True))

    def _self_subscribed(self, channel: str) -> str:
        """ "1": our own subscription is confirmed, so a script may skip a PUBLISH that only this
        instance would receive (in a cluster NUMSUB is per node: always publish there)."""
        return "1" if channel in self._live and not self.cluster else "0"

    # ------------------------------------------------------------ sessions

    @_guard
    async def create_session(self, session_id: str, tenant: str, user: str, token_hash: str) -> None:
        ok = await self._run(
            "CREATE",
            keys.session_keys(session_id, 1),
            self._args(session_id, tenant, user, token_hash, int(time.time() * 1000)),
        )
        if not ok:
            raise InternalError("session id collision")
        self._index(keys.sessions_index_of(session_id), session_id, int(time.time() * 1000))

    @_guard
    async def get_session(self, session_id: str) -> SessionRecord | None:
        m = await self._hgetall(keys.session_key(session_id, keys.META))
        if not m:
            return None
        return SessionRecord(
            session_id, m["tenant"], m["user"], m["token"], int(m.get("seq", 0)), m.get("active")
        )

    @_guard
    async def accept(
        self,
        session_id: str,
        *,
        client_msg_id: str,
        message_id: str,
        response_id: str,
        content: str,
        accepted_body: str,
        started_body: str,
        now_ms: int,
        lease_ms: int,
    ) -> AcceptResult:
        turn = json.dumps({"role": "user", "id": message_id, "content": content})
        lease = f"{session_id}\t{response_id}"
        # The lease enters the index before the turn can be accepted (ahead of ACCEPT on the same
        # connection: no round trip of its own), so a process that dies right after ACCEPT still
        # leaves a lease for the reaper to find. A turn not accepted has its entry removed again.
        res = await self._run(
            "ACCEPT",
            keys.session_keys(session_id),
            self._args(
                session_id,
                client_msg_id,
                message_id,
                response_id,
                turn,
                accepted_body,
                started_body,
                now_ms,
                lease_ms,
                self.history_max_turns,
            ),
            before=("ZADD", keys.leases_of(session_id), "GT", now_ms + lease_ms, lease),
        )
        status = res[0]
        if status != "accepted":
            self._index(keys.leases_of(session_id), lease, None)
        if status == "missing":  # expired, or lost by Redis: readers still tailing it must hear so
            self.loss.lost(session_id)
            raise SessionNotFound("no such session (or it was lost)")
        if status == "duplicate":
            seq, mid, rid = res[1].split("|", 2)
            return AcceptResult("duplicate", duplicate_seq=int(seq), message_id=mid, response_id=rid)
        if status in ("busy", "waiting"):
            return AcceptResult(status, response_id=res[1], lease_deadline_ms=int(res[2]))
        if status == "stale":
            return AcceptResult(status, response_id=res[1])
        entries = [LogEntry(int(res[1]), res[2]), LogEntry(int(res[3]), res[4])]
        self.fanout.publish(session_id, entries)
        history = [json.loads(t) for t in res[5]]
        return AcceptResult(
            "accepted", entries, message_id=message_id, response_id=response_id, history=history
        )

    def _index(self, key: str, member: str, score: int | None) -> None:
        """Add (or, with no score, remove) an index entry without making the caller wait for the reply.

        The indexes (leases, recently active sessions) serve other processes, the reaper and
        the feedback export, never the request at hand. Entries wait in a batch that one task
        writes (one ZADD / ZREM per index for a burst of turns or hellos), in order. A lost
        write costs little: a lease is written again at its next renewal, a session at its next
        event, and the reaper skips an entry whose response is no longer active. Scores only
        grow (``GT``): a late write cannot move a lease deadline back. Reads of an index wait
        for this process's writes.
        """
        adds = self._index_adds.setdefault(key, {})
        removes = self._index_removes.setdefault(key, set())
        if score is None:
            adds.pop(member, None)
            removes.add(member)
        else:
            removes.discard(member)
            adds[member] = max(score, adds.get(member, score))
        if self._index_next is None:
            self._index_next = asyncio.get_running_loop().create_future()
        if self._index_writer is None:
            self._index_writer = asyncio.create_task(self._write_indexes(), name="parley-redis-index")

    async def _write_indexes(self) -> None:
        try:
            while self._index_adds or self._index_removes:
                adds, self._index_adds = self._index_adds, {}
                removes, self._index_removes = self._index_removes, {}
                done, self._index_next = self._index_next, None
                self._index_inflight = done
                try:
                    writes = [(key, "ZADD", members) for key, members in adds.items() if members]
                    writes += [(key, "ZREM", members) for key, members in removes.items() if members]
                    # one command per index bucket touched, all at once (each bucket may be on its own shard)
                    outcomes = await asyncio.gather(
                        *(
                            self._r.zadd(key, members, gt=True)  # type: ignore[arg-type]
                            if command == "ZADD"
                            else self._r.zrem(key, *members)
                            for key, command, members in writes
                        ),
                        return_exceptions=True,
                    )
                    for (_, _, members), outcome in zip(writes, outcomes, strict=True):
                        if isinstance(outcome, Exception):  # an outage: logged once, repaired later
                            self.health.failed(outcome)
                            self.health.write_dropped(len(members))
                finally:
                    self._index_inflight = None
                    if done is not None and not done.done():
                        done.set_result(None)
        finally:
            self._index_writer = None

    async def _indexed(self) -> None:
        """Wait until this process's index writes made so far are written (not for later ones: under
        steady traffic the writer never idles)."""
        batch = self._index_next or self._index_inflight
        if batch is not None:
            await asyncio.shield(batch)

    async def _batched(
        self,
        items: Sequence[Item],
        session_of: Callable[[Item], str],
        call: Callable[[Sequence[Item]], Awaitable[list[Any]]],
    ) -> list[Any]:
        """Run a many-session script over ``items`` in one call, or in a cluster (where a call may
        only touch one slot) one call per session, concurrently; answers come back in item order."""
        if not self.cluster:
            return await call(items)
        by_session: dict[str, list[int]] = {}
        for i, item in enumerate(items):
            by_session.setdefault(session_of(item), []).append(i)
        groups = list(by_session.values())
        done = await asyncio.gather(*(call([items[i] for i in g]) for g in groups))
        ordered = {i: r for g, chunk in zip(groups, done, strict=True) for i, r in zip(g, chunk, strict=True)}
        return [ordered[i] for i in range(len(items))]

    @_guard
    async def append_deltas(self, writes: Sequence[DeltaWrite]) -> list[DeltaOutcome]:
        """One script call for the whole per-tick batch of every local generation (one per session
        in a cluster, where a call may only touch one slot)."""

        async def call(batch: Sequence[DeltaWrite]) -> list[Any]:
            ks: list[str] = []
            args: list[Any] = [self.log_max_len, self.instance_id, self.session_ttl_ms]
            for w in batch:
                meta, log, partial, channel = keys.delta_keys(w.session_id)
                ks += (meta, log, partial)
                args += (channel, self._self_subscribed(channel), w.response_id, w.text, w.body)
            return list(await self._run("DELTAS", ks, args))

        results = await self._batched(writes, lambda w: w.session_id, call)
        out: list[DeltaOutcome] = []
        for w, res in zip(writes, results, strict=True):
            if len(res) == 1:
                if res[0] == -2:
                    self.loss.lost(w.session_id)
                out.append("cancel" if res[0] == -1 else "gone")
            else:
                entry = _entry(res)
                self.fanout.publish(w.session_id, [entry])
                out.append(entry)
        return out

    @_guard
    async def renew(self, leases: Sequence[tuple[str, str]], deadline_ms: int) -> list[LeaseOutcome]:
        """One script call for all leases (one per session in a cluster); the live ones go to the index."""
        if not leases:
            return []

        async def call(batch: Sequence[tuple[str, str]]) -> list[LeaseOutcome]:
            ks = [keys.session_key(sid, keys.META) for sid, _ in batch]
            return list(await self._run("RENEW", ks, [deadline_ms, *(rid for _, rid in batch)]))

        results = await self._batched(leases, lambda lease: lease[0], call)
        for i, ((sid, rid), r) in enumerate(zip(leases, results, strict=True)):
            if r == "ok":
                self._index(keys.leases_of(sid), f"{sid}\t{rid}", deadline_ms)
            elif r == "lost":
                self.loss.lost(sid)
                results[i] = "gone"
        await self._indexed()
        return results

    @_guard
    async def finish(
        self,
        session_id: str,
        response_id: str,
        *,
        body: str,
        finish_reason: str,
        expired_before: int | None = None,
    ) -> LogEntry | None:
        res = await self._run(
            "FINISH",
            keys.session_keys(session_id),
            self._args(
                session_id,
                response_id,
                body,
                finish_reason,
                self.history_max_turns,
                "" if expired_before is None else expired_before,
            ),
        )
        self._index(keys.leases_of(session_id), f"{session_id}\t{response_id}", None)
        if len(res) == 1:
            if res[0] == -1:
                self.loss.lost(session_id)
            return None
        entry = _entry(res)
        self.fanout.publish(session_id, [entry])
        return entry

    @_guard
    async def expired_leases(self, now_ms: int, limit: int = 100) -> list[tuple[str, str]]:
        """The ``limit`` earliest expired leases over every index bucket (each scanned, each bounded)."""
        await self._indexed()
        found = await asyncio.gather(
            *(
                self._r.zrangebyscore(key, "-inf", now_ms, start=0, num=limit, withscores=True)
                for key in keys.LEASES_KEYS
            )
        )
        members = sorted(((score, m) for bucket in found for m, score in bucket), key=lambda x: x[0])
        return [tuple(m.split("\t", 1)) for _, m in members[:limit]]  # type: ignore[misc]

    @_guard
    async def request_cancel(self, session_id: str, response_id: str | None) -> tuple[CancelOutcome, str]:
        res = await self._run(
            "CANCEL",
            keys.session_keys(session_id, 6),
            self._args(session_id, response_id or "", keys.CONTROL_CHANNEL, session_id),
        )
        return res[0], res[1]

    @_guard
    async def record_feedback(
        self, session_id: str, response_id: str, *, feedback: dict[str, Any], body: str
    ) -> LogEntry | None:
        res = await self._run(
            "FEEDBACK",
            keys.session_keys(session_id),
            self._args(session_id, response_id, json.dumps(feedback), body),
        )
        if len(res) == 1:
            return None
        entry = _entry(res)
        self.fanout.publish(session_id, [entry])
        self._index(keys.sessions_index_of(session_id), session_id, int(time.time() * 1000))
        return entry

    @_guard
    async def feedback(self, session_id: str) -> dict[str, dict[str, Any]]:
        raw = await self._r.hgetall(keys.session_key(session_id, keys.FEEDBACK))
        return {rid: json.loads(v) for rid, v in raw.items()}

    @_guard
    async def list_sessions(self, since_ms: int, offset: int = 0, limit: int = 1000) -> list[str]:
        """From the sessions index buckets, merged by activity; index entries of expired sessions are
        pruned a batch per bucket per call. A page at ``offset`` reads up to ``offset + limit`` entries
        of every bucket (the order is across buckets)."""
        await self._indexed()
        horizon = int(time.time() * 1000) - self.session_ttl_ms
        stale = await asyncio.gather(
            *(self._r.zrangebyscore(k, "-inf", horizon, start=0, num=500) for k in keys.SESSIONS_INDEX_KEYS)
        )
        for key, sids in zip(keys.SESSIONS_INDEX_KEYS, stale, strict=True):
            if sids:
                alive = await asyncio.gather(*(self._r.exists(keys.session_key(s, keys.META)) for s in sids))
                dead = [sid for sid, n in zip(sids, alive, strict=True) if not n]
                if dead:
                    await self._r.zrem(key, *dead)
        found = await asyncio.gather(
            *(
                self._r.zrangebyscore(k, since_ms, "+inf", start=0, num=offset + limit, withscores=True)
                for k in keys.SESSIONS_INDEX_KEYS
            )
        )
        merged = sorted(((score, sid) for bucket in found for sid, score in bucket))
        return [sid for _, sid in merged[offset : offset + limit]]

    # ------------------------------------------------------------ reading

    @_guard
    async def read(self, session_id: str, after_seq: int, limit: int) -> list[LogEntry]:
        log_key, start = keys.session_key(session_id, keys.LOG), f"{after_seq + 1}-0"
        if self._mux is None:
            raw = await self._r.xrange(log_key, min=start, max="+", count=limit)
            return [LogEntry(int(eid.split("-", 1)[0]), fields["d"]) for eid, fields in raw]
        # an entry is [id, [field, value]]: the log's entries have the one field "d"
        flat = await self._mux.call("XRANGE", log_key, start, "+", "COUNT", limit)
        return [LogEntry(int(eid.split("-", 1)[0]), fields[1]) for eid, fields in flat]

    @_guard
    async def snapshot(self, session_id: str) -> Snapshot:
        seq, active, text, turns = await self._run("SNAPSHOT", keys.session_keys(session_id, 4))
        in_flight = {"role": "assistant", "id": active, "content": text} if active else None
        return Snapshot(int(seq), [json.loads(t) for t in turns], in_flight)

    @_guard
    async def history(self, session_id: str) -> list[dict[str, Any]]:
        turns = await self._r.lrange(keys.session_key(session_id, keys.HISTORY), 0, -1)
        return [json.loads(t) for t in turns]

    # ------------------------------------------------------------ live delivery

    def on_cancel(self, callback: Callable[[str, str], None]) -> None:
        self._cancel_callbacks.append(callback)

    async def subscribe(self, session_id: str, max_pending: int = 4096) -> Subscriber:
        """Register a reader; returns once live events of the session are sure to reach it."""
        sub = self.fanout.subscribe(session_id, max_pending)
        channel = keys.events_channel(session_id)
        if channel not in self._channels:
            self._channels.add(channel)
            self._to_subscribe.add(channel)
            self._changes.set()
        fut = self._confirmed.get(channel)
        if fut is None and channel not in self._live:
            fut = self._confirmed[channel] = asyncio.get_running_loop().create_future()
        if fut is not None:
            try:
                async with asyncio.timeout(SOCKET_TIMEOUT_S):
                    await asyncio.shield(fut)
            except BaseException as exc:  # a timeout, an outage, or the caller gone: leave no reader behind
                self.fanout.unsubscribe(sub)
                if isinstance(exc, (TimeoutError, UpstreamUnavailable)):
                    raise UpstreamUnavailable(
                        "session store unavailable", retry_after_ms=OUTAGE_RETRY_AFTER_MS
                    ) from exc
                raise
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.fanout.unsubscribe(sub)

    def _on_last_reader(self, session_id: str) -> None:
        channel = keys.events_channel(session_id)
        self._channels.discard(channel)
        self._live.discard(channel)  # from now on every append publishes again
        self._confirmed.pop(channel, None)
        self._to_unsubscribe.add(channel)
        self._changes.set()

    async def _send_subscriptions(self) -> None:
        """The one sender of SUBSCRIBE/UNSUBSCRIBE: what readers asked for since the last round, in order.

        A channel is (un)subscribed only if that is still wanted when the round is sent; after a lost
        connection the listener subscribes to every wanted channel anyway.
        """
        while not self._closed:  # (a cancel that redis-py swallows mid-command must still end this)
            await self._changes.wait()
            self._changes.clear()
            await self._connected.wait()
            drop = [c for c in self._to_unsubscribe if c not in self._channels]
            add = [c for c in self._to_subscribe if c in self._channels]
            self._to_unsubscribe.clear()
            self._to_subscribe.clear()
            pubsub = self._pubsub
            if pubsub is None:
                continue
            with contextlib.suppress(RedisError, OSError):  # the listener reconnects and resubscribes
                if drop:
                    await pubsub.unsubscribe(*drop)
                if add:
                    await pubsub.subscribe(*add)

    async def _listen(self) -> None:
        """The process's one pub/sub reader; re-created (and readers resynced) after any failure."""
        attempt = 0
        while True:
            pubsub = self._ps_client.pubsub(ignore_subscribe_messages=False)
            try:
                await pubsub.subscribe(
                    keys.CONTROL_CHANNEL, keys.instance_channel(self.instance_id), *self._channels
                )
                self._pubsub = pubsub
                self._connected.set()
                self.health.ok()
                self.fanout.resync_all()
                if attempt:  # Redis may have come back without its data: check what readers here hold
                    log.debug("redis pub/sub re-established; resyncing readers")
                    self._spawn(self._audit(), "parley-redis-audit")
                attempt = 0
                while True:
                    msg = await pubsub.get_message(timeout=5.0)
                    if msg is not None:
                        self._dispatch(msg)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                raise
            except Exception as exc:  # connection lost: rebuild and resync
                self._connected.clear()
                self._pubsub = None
                self._live.clear()
                for fut in self._confirmed.values():
                    if not fut.done():
                        fut.set_exception(UpstreamUnavailable("pub/sub lost"))
                        fut.exception()
                self._confirmed.clear()
                self.health.failed(exc)  # one warning per outage, naming the address and the cause
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                await asyncio.sleep(RESUBSCRIBE_BACKOFF_S[min(attempt, len(RESUBSCRIBE_BACKOFF_S) - 1)])
                attempt += 1

    def _dispatch(self, msg: dict[str, Any]) -> None:
        kind, channel = msg["type"], msg["channel"]
        if kind == "subscribe":
            if channel in self._channels:
                self._live.add(channel)
            fut = self._confirmed.pop(channel, None)  # not kept once confirmed: memory per idle session
            if fut is not None and not fut.done():
                fut.set_result(None)
            return
        if kind != "message":
            return
        data: str = msg["data"]
        if channel == keys.CONTROL_CHANNEL:
            parts = data.split("\t")
            if len(parts) == 3 and parts[0] == "cancel":
                for cb in self._cancel_callbacks:
                    cb(parts[1], parts[2])
            elif len(parts) == 2 and parts[0] == keys.LOST_MESSAGE:
                self.loss.lost(parts[1], announce=False)
            return
        origin, _, event = data.partition("\n")
        if origin == self.instance_id:
            return  # already delivered from memory right after our own append
        session_id = channel[len(keys.PREFIX) + 2 : -len("}:events")]
        self.fanout.publish(session_id, [LogEntry(seq_of(event), event)])

    # ------------------------------------------------------------ lost sessions (loss.py)

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        task.set_name(name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _audit(self) -> None:
        try:
            await self.loss.audit()
        except (RedisError, OSError) as exc:  # down again: the epoch watcher audits once it is back
            log.debug("audit after reconnect failed", exc_info=exc)

    def _announce_lost(self, session_id: str) -> None:
        """Tell the other instances (their readers end without waiting for their own audit)."""

        async def publish() -> None:
            with contextlib.suppress(RedisError, OSError):
                await self._r.publish(keys.CONTROL_CHANNEL, f"{keys.LOST_MESSAGE}\t{session_id}")

        self._spawn(publish(), "parley-redis-lost")

    # ------------------------------------------------------------ tool calls (store.ToolCallStore)
    # The scripts are END_CALLS, ANSWER, START_RUN and WAIT_END in redis_lua.py; a wait is indexed in
    # its session's keys.tool_wait_index shard (ahead of the script that starts it, like a lease).

    def _calls_outcome(self, session_id: str, res: list[Any]) -> CallsOutcome:
        status = res[0]
        if status == "lost":
            self.loss.lost(session_id)
            return CallsOutcome("gone")
        if status in ("gone", "cancel", "unknown", "closed", "same"):
            return CallsOutcome(status, response_id=res[1] if len(res) > 1 else "")
        if status == "duplicate":
            return CallsOutcome(status, response_id=res[1], accepted_seq=int(res[2]))
        flat = res[1]
        entries = [LogEntry(int(flat[i]), flat[i + 1]) for i in range(0, len(flat), 2)]
        if entries:
            self.fanout.publish(session_id, entries)
        if status == "continue":
            _, _, next_id, context, turns, runs, waited = res
            return CallsOutcome(
                "continue",
                entries,
                response_id=next_id,
                continues=waited,
                context=context,
                history=[json.loads(t) for t in turns],
                runs=[ToolRun(cid, spec) for cid, spec in runs],
            )
        return CallsOutcome(status, entries, response_id=res[2] if len(res) > 2 else "")

    @_guard
    async def end_with_calls(
        self,
        session_id: str,
        response_id: str,
        *,
        call_bodies: Sequence[str],
        calls: Sequence[CallRecord],
        turn: str,
        body: str,
        continuation: Continuation,
        now_ms: int,
        lease_ms: int,
        wait_deadline_ms: int,
    ) -> CallsOutcome:
        member = f"{session_id}\t{response_id}"
        index = keys.tool_wait_index(session_id)
        args = self._args(
            session_id,
            response_id,
            body,
            "tool_calls",
            self.history_max_turns,
            turn,
            now_ms,
            lease_ms,
            wait_deadline_ms,
            continuation.response_id,
            continuation.started_body,
            continuation.context,
            len(call_bodies),
            *call_bodies,
        )
        for c in calls:
            args += (c.call_id, c.kind[0], c.spec)
        res = await self._run(
            "END_CALLS", keys.session_keys(session_id), args, before=("ZADD", index, wait_deadline_ms, member)
        )
        out = self._calls_outcome(session_id, res)
        self._index(keys.leases_of(session_id), f"{session_id}\t{response_id}", None)
        if out.status != "ended":
            self._index(index, member, None)
        if out.status == "continue":
            self._index(keys.leases_of(session_id), f"{session_id}\t{out.response_id}", now_ms + lease_ms)
        return out

    @_guard
    async def answer_call(
        self,
        session_id: str,
        call_id: str,
        *,
        mode: str,
        body: str,
        turn: str,
        now_ms: int,
        lease_ms: int,
        runner: str = "",
    ) -> CallsOutcome:
        res = await self._run(
            "ANSWER",
            keys.session_keys(session_id),
            self._args(
                session_id, call_id, mode, body, turn, now_ms, lease_ms, runner, self.history_max_turns
            ),
        )
        out = self._calls_outcome(session_id, res)
        if out.status == "continue":
            self._index(keys.tool_wait_index(session_id), f"{session_id}\t{out.continues}", None)
            self._index(keys.leases_of(session_id), f"{session_id}\t{out.response_id}", now_ms + lease_ms)
        return out

    @_guard
    async def start_run(self, session_id: str, runner: str, call_id: str) -> Any:
        return await self._run(
            "START_RUN", keys.session_keys(session_id), self._args(session_id, runner, call_id)
        )

    @_guard
    async def end_wait(
        self,
        session_id: str,
        response_id: str,
        *,
        body: str,
        finish_reason: str,
        expired_before: int | None = None,
    ) -> list[LogEntry] | None:
        res = await self._run(
            "WAIT_END",
            keys.session_keys(session_id),
            self._args(
                session_id,
                response_id,
                body,
                finish_reason,
                self.history_max_turns,
                "" if expired_before is None else expired_before,
            ),
        )
        # ended now, or it no longer waits (the index entry was stale): either way out of the index
        self._index(keys.tool_wait_index(session_id), f"{session_id}\t{response_id}", None)
        if res and res[0] == "lost":
            self.loss.lost(session_id)
            return None
        if not res:
            return None
        entries = [LogEntry(int(res[0]), res[1]), LogEntry(int(res[2]), res[3])]
        self.fanout.publish(session_id, entries)
        return entries

    @_guard
    async def expired_waits(self, now_ms: int, limit: int = 100) -> list[tuple[str, str]]:
        await self._indexed()
        found: list[tuple[str, str]] = []
        for index in keys.TOOL_WAIT_INDEXES:
            members = await self._r.zrangebyscore(index, "-inf", now_ms, start=0, num=limit - len(found))
            found += [tuple(m.split("\t", 1)) for m in members]  # type: ignore[misc]
            if len(found) >= limit:
                break
        return found

    # ------------------------------------------------------------ webhook deliveries
    # (server/webhooks.py; the scripts are in redis_lua.py, the keys in keys.py)

    @functools.cached_property
    def _webhook_scripts(self) -> dict[str, Any]:
        names = ("WEBHOOK_CREATE", "WEBHOOK_ARM", "WEBHOOK_CLAIM", "WEBHOOK_SETTLE")
        return {name: self._r.register_script(getattr(redis_lua, name)) for name in names}

    @_guard
    async def webhook_create(
        self, delivery_id: str, fields: Mapping[str, str], *, due_ms: int, ttl_ms: int
    ) -> bool:
        script = self._webhook_scripts["WEBHOOK_CREATE"]
        ks = [keys.WEBHOOKS_DUE, keys.webhook_key(delivery_id)]
        return bool(await script(keys=ks, args=[delivery_id, due_ms, ttl_ms, *_flat(fields)]))

    @_guard
    async def webhook_get(self, delivery_id: str) -> dict[str, str] | None:
        record = await self._r.hgetall(keys.webhook_key(delivery_id))
        return dict(record) or None

    @_guard
    async def webhook_arm(
        self, delivery_id: str, fields: Mapping[str, str], *, due_ms: int, from_state: str
    ) -> bool:
        script = self._webhook_scripts["WEBHOOK_ARM"]
        ks = [keys.WEBHOOKS_DUE, keys.webhook_key(delivery_id)]
        return bool(await script(keys=ks, args=[delivery_id, due_ms, from_state, *_flat(fields)]))

    @_guard
    async def webhook_claim(self, now_ms: int, lease_ms: int, limit: int) -> list[WebhookClaim]:
        script = self._webhook_scripts["WEBHOOK_CLAIM"]
        fence, found = await script(
            keys=[keys.WEBHOOKS_DUE], args=[now_ms, lease_ms, limit, keys.WEBHOOK_RECORD_PREFIX]
        )
        return [
            WebhookClaim(delivery_id, int(fence), dict(zip(flat[::2], flat[1::2], strict=True)))
            for delivery_id, flat in found
        ]

    @_guard
    async def webhook_settle(
        self, delivery_id: str, fields: Mapping[str, str], *, due_ms: int | None, fence: int
    ) -> bool:
        script = self._webhook_scripts["WEBHOOK_SETTLE"]
        ks = [keys.WEBHOOKS_DUE, keys.webhook_key(delivery_id)]
        due = "" if due_ms is None else due_ms
        return bool(await script(keys=ks, args=[delivery_id, fence, due, *_flat(fields)]))


def _flat(fields: Mapping[str, str]) -> list[str]:
    """A record's fields as HSET arguments: field, value, field, value ..."""
    return [item for pair in fields.items() for item in pair]
