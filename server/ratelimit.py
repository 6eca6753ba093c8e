"""Per-user and per-tenant limits: message and token rates, open connections, new sessions.

Rates are token buckets refilled continuously over ``keys.RATE_WINDOW_MS`` (a limit
of N per minute allows a burst of N, then one every 60/N s). A ``message.send``
takes one from the user's and the tenant's message buckets and needs at least
one token left in both token buckets; generated tokens are charged when a
response ends, so a long reply can push a bucket into debt (at most one window's
worth) and the next message waits until it is paid off.

``RedisLimiter`` keeps every bucket and counter in Redis (Lua, Redis ``TIME``), so
limits hold across instances; ``MemoryLimiter`` has the same semantics inside
one process (the ``memory://`` store). A limiter that cannot reach Redis lets the
request through and logs it: the store being down already refuses everything
that matters, and a limiter must not turn a Redis blip into an outage.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from parley.sessions import StoreKind, keys, parse_store_url
from parley.sessions.fastpath import client_options
from parley.sessions.outage import StoreHealth, store_address

from .service import Principal
from .settings import Settings

log = logging.getLogger("parley.limits")

#: The store URL scheme of Redis Cluster (as in ``sessions.redis_store``).

Kind = Literal["messages", "tokens", "connections", "sessions"]
Scope = Literal["user", "tenant"]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request was refused and when trying again can succeed."""

    kind: Kind
    scope: Scope
    retry_after_ms: int
    limit: int


@dataclass(frozen=True, slots=True)
class Limits:
    user_messages: int
    tenant_messages: int
    user_tokens: int
    tenant_tokens: int
    connections: int
    sessions: int
    session_window_ms: int
    window_ms: int = keys.RATE_WINDOW_MS

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            user_messages=settings.user_messages_per_minute,
            tenant_messages=settings.tenant_messages_per_minute,
            user_tokens=settings.user_tokens_per_minute,
            tenant_tokens=settings.tenant_tokens_per_minute,
            connections=settings.max_connections_per_user,
            sessions=settings.max_sessions_per_user,
            session_window_ms=settings.session_ttl_ms,
        )


class Limiter(Protocol):
    limits: Limits

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def take_message(self, who: Principal) -> Refusal | None:
        """Count one message.send against the user and tenant; a refusal counts nothing."""
        ...

    async def charge_tokens(self, who: Principal, tokens: int) -> None:
        """Charge generated tokens (after the fact: a bucket may go into debt)."""
        ...

    async def open_connection(self, who: Principal, conn_id: str) -> Refusal | None: ...
    async def close_connection(self, who: Principal, conn_id: str) -> None: ...
    async def keep_connections(self, conns: Sequence[tuple[Principal, str]]) -> None:
        """Refresh the expiry of this instance's open connections (``keys.CONNECTION_REFRESH_MS``)."""
        ...

    async def new_session(self, who: Principal) -> Refusal | None:
        """Count one new session of the user within the session TTL; a refusal counts nothing."""
        ...


def _now_ms() -> int:
    return int(time.time() * 1000)


# ------------------------------------------------------------------ memory


@dataclass(slots=True)
class _Bucket:
    level: float
    ts: int


class MemoryLimiter:
    """One process's limits, with the same arithmetic as the Lua scripts below."""

    MAX_ENTRIES = 100_000  # buckets and counters kept (least recently used are forgotten)

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._buckets: OrderedDict[tuple[str, ...], _Bucket] = OrderedDict()
        self._conns: dict[tuple[str, str], dict[str, int]] = {}
        self._sessions: OrderedDict[tuple[str, str], dict[str, int]] = OrderedDict()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def _bucket(self, key: tuple[str, ...], cap: int, now: int) -> _Bucket:
        b = self._buckets.get(key)
        if b is None:
            b = self._buckets[key] = _Bucket(float(cap), now)
            if len(self._buckets) > self.MAX_ENTRIES:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            if now > b.ts:
                b.level = min(cap, b.level + (now - b.ts) * cap / self.limits.window_ms)
                b.ts = now
        return b

    def _buckets_of(self, who: Principal, kind: str) -> list[tuple[tuple[str, ...], int, Scope]]:
        lim = self.limits
        user_cap, tenant_cap = (
            (lim.user_messages, lim.tenant_messages)
            if kind == "msgs"
            else (lim.user_tokens, lim.tenant_tokens)
        )
        return [
            ((kind, who.tenant, who.user), user_cap, "user"),
            ((kind, who.tenant), tenant_cap, "tenant"),
        ]

    async def take_message(self, who: Principal) -> Refusal | None:
        now = _now_ms()
        worst: Refusal | None = None
        taken: list[_Bucket] = []
        for kind, label in (("msgs", "messages"), ("toks", "tokens")):
            for key, cap, scope in self._buckets_of(who, kind):
                if cap <= 0:
                    continue
                b = self._bucket(key, cap, now)
                if b.level < 1:
                    wait = math.ceil((1 - b.level) * self.limits.window_ms / cap)
                    if worst is None or wait > worst.retry_after_ms:
                        worst = Refusal(label, scope, wait, cap)  # type: ignore[arg-type]
                elif kind == "msgs":
                    taken.append(b)
        if worst is not None:
            return worst
        for b in taken:
            b.level -= 1
        return None

    async def charge_tokens(self, who: Principal, tokens: int) -> None:
        now = _now_ms()
        for key, cap, _ in self._buckets_of(who, "toks"):
            if cap > 0 and tokens > 0:
                b = self._bucket(key, cap, now)
                b.level = max(-cap, b.level - tokens)

    async def open_connection(self, who: Principal, conn_id: str) -> Refusal | None:
        cap = self.limits.connections
        if cap <= 0:
            return None
        now = _now_ms()
        conns = self._conns.setdefault((who.tenant, who.user), {})
        for cid in [c for c, exp in conns.items() if exp <= now]:
            del conns[cid]
        if conn_id not in conns and len(conns) >= cap:
            return Refusal("connections", "user", keys.CONNECTION_REFRESH_MS, cap)
        conns[conn_id] = now + keys.CONNECTION_TTL_MS
        return None

    async def close_connection(self, who: Principal, conn_id: str) -> None:
        conns = self._conns.get((who.tenant, who.user))
        if conns is not None:
            conns.pop(conn_id, None)
            if not conns:
                del self._conns[(who.tenant, who.user)]

    async def keep_connections(self, conns: Sequence[tuple[Principal, str]]) -> None:
        expiry = _now_ms() + keys.CONNECTION_TTL_MS
        for who, cid in conns:
            entry = self._conns.get((who.tenant, who.user))
            if entry is not None and cid in entry:
                entry[cid] = expiry

    async def new_session(self, who: Principal) -> Refusal | None:
        cap = self.limits.sessions
        if cap <= 0:
            return None
        now, window = _now_ms(), self.limits.session_window_ms
        key = (who.tenant, who.user)
        created = self._sessions.setdefault(key, {})
        self._sessions.move_to_end(key)
        for sid in [s for s, ts in created.items() if ts <= now - window]:
            del created[sid]
        if len(created) >= cap:
            return Refusal("sessions", "user", min(created.values()) + window - now, cap)
        created[uuid.uuid4().hex] = now
        if len(self._sessions) > self.MAX_ENTRIES:
            self._sessions.popitem(last=False)
        return None


# ------------------------------------------------------------------ redis

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

_REFILL = """
local function refill(key, cap, window, now)
  local b = redis.call('HMGET', key, 'l', 't')
  local level = tonumber(b[1]) or cap
  local ts = tonumber(b[2]) or now
  if now > ts then level = math.min(cap, level + (now - ts) * cap / window) end
  return level
end
"""

# KEYS user msgs, tenant msgs, user toks, tenant toks. ARGV window, then the four capacities (0 = none).
# Returns {0, 0} when taken, else {retry_after_ms, index of the limiting bucket}.
TAKE_MESSAGE = (
    _NOW
    + _REFILL
    + """
local window = tonumber(ARGV[1])
local levels = {}
local wait, which = 0, 0
for i = 1, 4 do
  local cap = tonumber(ARGV[i + 1])
  if cap > 0 then
    local level = refill(KEYS[i], cap, window, now)
    levels[i] = level
    if level < 1 then
      local w = math.ceil((1 - level) * window / cap)
      if w > wait then wait, which = w, i end
    end
  end
end
if wait > 0 then return {wait, which} end
for i = 1, 2 do
  local cap = tonumber(ARGV[i + 1])
  if cap > 0 then
    redis.call('HSET', KEYS[i], 'l', tostring(levels[i] - 1), 't', now)
    redis.call('PEXPIRE', KEYS[i], 2 * window)
  end
end
return {0, 0}
"""
)

# KEYS user toks, tenant toks. ARGV window, tokens, user capacity, tenant capacity.
CHARGE_TOKENS = (
    _NOW
    + _REFILL
    + """
local window, n = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 1, 2 do
  local cap = tonumber(ARGV[i + 2])
  if cap > 0 then
    local level = math.max(-cap, refill(KEYS[i], cap, window, now) - n)
    redis.call('HSET', KEYS[i], 'l', tostring(level), 't', now)
    redis.call('PEXPIRE', KEYS[i], 2 * window)
  end
end
return 1
"""
)

# KEYS the user's connections zset. ARGV cap, connection id, ttl ms. 1 = admitted, 0 = refused.
OPEN_CONNECTION = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[2]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""
)

# KEYS the user's connections zset. ARGV connection id, ttl ms. Only refreshes a member still there.
KEEP_CONNECTION = (
    _NOW
    + """
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
)

# KEYS the user's sessions zset. ARGV cap, window ms, session id. 0 = counted, else retry_after_ms.
NEW_SESSION = (
    _NOW
    + """
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(1, tonumber(oldest[2]) + window - now)
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], window)
return 0
"""
)

_TAKE_LABELS: dict[int, tuple[Kind, Scope]] = {
    1: ("messages", "user"),
    2: ("messages", "tenant"),
    3: ("tokens", "user"),
    4: ("tokens", "tenant"),
}


class RedisLimiter:
    """Limits shared by every instance, kept in Redis (see ``sessions.keys`` for the key layout)."""

    def __init__(self, url: str, limits: Limits) -> None:
        import redis.asyncio as aioredis
        from redis.asyncio.cluster import RedisCluster

        self.limits = limits
        # an outage is logged once (and a reminder now and then), not once per request
        self.health = StoreHealth("limiter store", store_address(url), log)
        options: dict[str, Any] = dict(
            decode_responses=True, socket_timeout=2.0, socket_connect_timeout=1.0, **client_options()
        )
        parsed = parse_store_url(url)
        self.cluster = parsed.kind is StoreKind.CLUSTER
        self._r: Any
        if self.cluster:  # every script's keys share the tenant's hash tag: one slot per call
            self._r = RedisCluster.from_url(parsed.redis_url, **options)
        else:
            self._r = aioredis.Redis.from_url(url, max_connections=16, **options)
        self._scripts = {
            name: self._r.register_script(src)
            for name, src in (
                ("take", TAKE_MESSAGE),
                ("charge", CHARGE_TOKENS),
                ("open", OPEN_CONNECTION),
                ("keep", KEEP_CONNECTION),
                ("session", NEW_SESSION),
            )
        }

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        await self._r.aclose()

    async def _run(self, name: str, keys_: list[str], args: list[object]) -> object:
        from redis.exceptions import RedisError

        try:
            result = await self._scripts[name](keys=keys_, args=args)
        except (RedisError, OSError) as exc:  # unavailable: requests are let through meanwhile
            self.health.failed(exc)
            return None
        self.health.ok()
        return result

    def _rate_keys(self, who: Principal, kind: str) -> list[str]:
        return [keys.limit_key(who.tenant, kind, who.user), keys.limit_key(who.tenant, kind)]

    async def take_message(self, who: Principal) -> Refusal | None:
        lim = self.limits
        res = await self._run(
            "take",
            self._rate_keys(who, keys.RATE_MESSAGES) + self._rate_keys(who, keys.RATE_TOKENS),
            [lim.window_ms, lim.user_messages, lim.tenant_messages, lim.user_tokens, lim.tenant_tokens],
        )
        if not isinstance(res, list) or int(res[0]) <= 0:
            return None
        kind, scope = _TAKE_LABELS[int(res[1])]
        caps = {1: lim.user_messages, 2: lim.tenant_messages, 3: lim.user_tokens, 4: lim.tenant_tokens}
        return Refusal(kind, scope, int(res[0]), caps[int(res[1])])

    async def charge_tokens(self, who: Principal, tokens: int) -> None:
        lim = self.limits
        if tokens > 0 and (lim.user_tokens > 0 or lim.tenant_tokens > 0):
            await self._run(
                "charge",
                self._rate_keys(who, keys.RATE_TOKENS),
                [lim.window_ms, tokens, lim.user_tokens, lim.tenant_tokens],
            )

    def _conns_key(self, who: Principal) -> str:
        return keys.limit_key(who.tenant, keys.USER_CONNECTIONS, who.user)

    async def open_connection(self, who: Principal, conn_id: str) -> Refusal | None:
        cap = self.limits.connections
        if cap <= 0:
            return None
        res = await self._run("open", [self._conns_key(who)], [cap, conn_id, keys.CONNECTION_TTL_MS])
        if res == 0:
            return Refusal("connections", "user", keys.CONNECTION_REFRESH_MS, cap)
        return None

    async def close_connection(self, who: Principal, conn_id: str) -> None:
        if self.limits.connections <= 0:
            return
        from redis.exceptions import RedisError

        try:
            await self._r.zrem(self._conns_key(who), conn_id)
        except (RedisError, OSError) as exc:  # the slot expires by itself
            self.health.failed(exc)
            self.health.write_dropped()

    async def keep_connections(self, conns: Sequence[tuple[Principal, str]]) -> None:
        if self.limits.connections <= 0 or not conns:
            return
        from redis.exceptions import RedisError

        script = self._scripts["keep"]
        try:
            if self.cluster:  # scripts cannot be pipelined across nodes
                await asyncio.gather(
                    *(script(keys=[self._conns_key(w)], args=[c, keys.CONNECTION_TTL_MS]) for w, c in conns)
                )
                return
            async with self._r.pipeline(transaction=False) as pipe:
                for who, cid in conns:
                    await script(keys=[self._conns_key(who)], args=[cid, keys.CONNECTION_TTL_MS], client=pipe)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self.health.failed(exc)
            self.health.write_dropped(len(conns))

    async def new_session(self, who: Principal) -> Refusal | None:
        cap = self.limits.sessions
        if cap <= 0:
            return None
        key = keys.limit_key(who.tenant, keys.USER_SESSIONS, who.user)
        res = await self._run("session", [key], [cap, self.limits.session_window_ms, uuid.uuid4().hex])
        if isinstance(res, int) and res > 0:
            return Refusal("sessions", "user", res, cap)
        return None


def open_limiter(settings: Settings) -> Limiter | None:
    """The limiter for the configured store, or None when identity limits are off."""
    if not settings.identity_limits_enabled:
        return None
    limits = Limits.from_settings(settings)
    if parse_store_url(settings.store).shared:
        return RedisLimiter(settings.store, limits)
    return MemoryLimiter(limits)
