"""Every Redis key, channel, TTL and limit of the session store, defined once.

All of a session's keys share the hash tag ``{<session_id>}`` so they live in one
Redis Cluster slot and one Lua script can touch them atomically.
"""

from __future__ import annotations

import functools
import zlib

PREFIX = "parley"

# Per-session keys, in the order the Lua scripts expect them (KEYS[1..7]).
META = "meta"  # hash: tenant, user, token (sha256 of resume token), created, seq, active, lease, cancel
LOG = "log"  # stream: entry id "<seq>-0", field "d" = the event JSON with its seq
PARTIAL = "partial"  # string: text of the running response so far (for interrupted + snapshots)
HISTORY = "hist"  # list: JSON turns {role, id, content, finish_reason} the model sees
MSGIDS = "msgids"  # hash: client_msg_id -> "seq|message_id|response_id" (idempotency)
RESPONSES = "resp"  # hash: response_id -> "running" or its finish_reason (validates cancel/feedback)
FEEDBACK = "fb"  # hash: response_id -> feedback JSON (last write wins)
#: hash, tool calls (issue 17): call_id -> "kind|state|seq" (kind c client, s server, a server after
#: approval; state w waiting for the client, q queued to run, r run started, d done: its result is
#: logged at seq), "<call_id>:a" -> JSON {name, arguments}, "r:<response_id>" -> its call ids.
#: While a response waits, META also holds wait (its id), wait_left (answers missing), wait_deadline,
#: wait_next / wait_started / wait_ctx (the continuation to start once the last answer is in).
CALLS = "calls"

SESSION_KEYS = (META, LOG, PARTIAL, HISTORY, MSGIDS, RESPONSES, FEEDBACK, CALLS)


def session_key(session_id: str, kind: str) -> str:
    return f"{PREFIX}:{{{session_id}}}:{kind}"


def session_keys(session_id: str, count: int = len(SESSION_KEYS)) -> list[str]:
    """The first ``count`` of a session's keys, in script order (a script declares only what it uses)."""
    return [session_key(session_id, kind) for kind in SESSION_KEYS[:count]]


def events_channel(session_id: str) -> str:
    """Pub/sub channel carrying a session's new events to other instances."""
    return f"{PREFIX}:{{{session_id}}}:events"


#: Sessions whose delta keys are kept built: more than one process streams to at once (a miss
#: only builds the four strings again).
DELTA_KEYS_CACHED = 4096


@functools.lru_cache(maxsize=DELTA_KEYS_CACHED)
def delta_keys(session_id: str) -> tuple[str, str, str, str]:
    """Meta, log and partial keys and the events channel: what each appended delta names. Built
    once per session, not per delta (a flush names hundreds of sessions, ~1 µs of formatting each)."""
    meta, log, partial = session_keys(session_id, 3)
    return meta, log, partial, events_channel(session_id)


#: Per-process pub/sub channel nobody publishes to: its subscriber count (PUBSUB NUMSUB) tells an
#: append script that the process's own pub/sub connection is alive, so an events channel with a
#: single subscriber is known to have only that process listening (and publishing can be skipped).
INSTANCE_CHANNEL_PREFIX = f"{PREFIX}:instance:"


def instance_channel(instance_id: str) -> str:
    return INSTANCE_CHANNEL_PREFIX + instance_id


#: Global pub/sub channel for cross-instance control (cancel). Messages: "cancel\t<sid>\t<rid>".
CONTROL_CHANNEL = f"{PREFIX}:control"

#: The two process-wide indexes below are sharded into INDEX_BUCKETS sorted sets each, a session's
#: entries in bucket ``crc32(session_id) % INDEX_BUCKETS``, each bucket under its own hash tag
#: ``{ix<n>}``: in a Redis Cluster the buckets spread over the shards (16 tags land 6/5/5 on three
#: masters), so every instance's lease renewals and every new session no longer land on one shard,
#: and no key grows with the whole fleet (1 million sessions: ~62,500 members a bucket,
#: docs/operations.md). Readers (the reaper, the feedback export) scan every bucket. Sixteen: more
#: buckets than shards in any cluster we expect, few enough that a scan of all is cheap.
INDEX_BUCKETS = 16


def index_bucket(session_id: str) -> int:
    """The bucket of a session's index entries (stable across processes and restarts)."""
    return zlib.crc32(session_id.encode()) % INDEX_BUCKETS


def leases_key(bucket: int) -> str:
    """Sorted set: member "<sid>\t<rid>", score = lease deadline (ms). Lets any instance find
    generations whose process died. Written outside the scripts (an index, not session state)."""
    return f"{PREFIX}:{{ix{bucket}}}:leases"


def sessions_index_key(bucket: int) -> str:
    """Sorted set: member = session_id, score = last activity (ms); lets feedback export and operators
    enumerate sessions without SCAN. Trimmed by score when sessions expire."""
    return f"{PREFIX}:{{ix{bucket}}}:sessions"


def leases_of(session_id: str) -> str:
    """The lease index bucket a session's responses are in."""
    return leases_key(index_bucket(session_id))


def sessions_index_of(session_id: str) -> str:
    """The sessions index bucket a session is in."""
    return sessions_index_key(index_bucket(session_id))


LEASES_KEYS = tuple(leases_key(b) for b in range(INDEX_BUCKETS))
SESSIONS_INDEX_KEYS = tuple(sessions_index_key(b) for b in range(INDEX_BUCKETS))
#: The single-key indexes before issue 20; nothing reads or writes them now (docs/operations.md).
LEGACY_INDEX_KEYS = (f"{PREFIX}:leases", f"{PREFIX}:sessions")


def tool_waits_key(bucket: int) -> str:
    """Sorted set of responses waiting for tool results: member "<sid>\t<rid>", score = when the wait
    times out (ms), so the reaper on any instance ends it with tool_timeout. Like the lease index it is
    written outside the scripts (ahead of the script that starts a wait, removed when it ends) and
    sharded into the same buckets."""
    return f"{PREFIX}:{{ix{bucket}}}:toolwaits"


def tool_wait_index(session_id: str) -> str:
    """The wait-index bucket of a session."""
    return tool_waits_key(index_bucket(session_id))


TOOL_WAIT_INDEXES = tuple(tool_waits_key(b) for b in range(INDEX_BUCKETS))

#: Global string, no TTL: a random value the first instance writes (SET NX). Every instance reads
#: it each second (sessions/loss.py): gone or changed means Redis lost data (a restart without
#: persistence, a failover to an empty replica, a flush), so the sessions read here are checked.
EPOCH = f"{PREFIX}:epoch"

#: Control-channel message announcing a session whose state Redis lost: "lost\t<sid>".
LOST_MESSAGE = "lost"

# Defaults for the store's limits (each also a PARLEY_ setting).
SESSION_TTL_MS = 24 * 3600 * 1000  # a day: long enough to come back tomorrow, short enough to bound memory
LOG_MAX_LEN = 10_000  # events kept per session log; older ones are trimmed (resume then uses a snapshot)
HISTORY_MAX_TURNS = 200  # turns kept for the model; the profile's context budget trims further
REPLAY_CHUNK = 500  # events read per XRANGE during replay: bounded memory per resuming client

# ------------------------------------------------------------------ limits (server/ratelimit.py)
# Keys carry the hash tag {rl:<tenant>}, so one script can check a user's and their tenant's
# buckets atomically in one Redis Cluster slot. Tenant and user ids are percent-encoded in keys,
# so no id (however chosen) can name another tenant's or user's key.
RATE_WINDOW_MS = 60_000  # "per minute" limits are token buckets refilled continuously over this window
RATE_BUCKET_TTL_MS = 2 * RATE_WINDOW_MS  # an idle bucket is full again after this (even from full debt)
RATE_MESSAGES = "msgs"  # hash {l: level, t: ms}: the message.send bucket
RATE_TOKENS = "toks"  # hash {l, t}: the generated-tokens bucket; may go into debt down to -capacity
USER_CONNECTIONS = "conns"  # zset: connection id -> expiry ms, refreshed while the socket is open
USER_SESSIONS = "sess"  # zset: one member per new session -> creation ms; counted over one session TTL
CONNECTION_TTL_MS = 90_000  # a crashed instance's connections stop counting after this
CONNECTION_REFRESH_MS = 30_000  # how often each instance refreshes the expiry of its open connections


def limit_key(tenant: str, kind: str, user: str | None = None) -> str:
    """A tenant's (``user=None``) or a user's limit key of one kind."""
    from urllib.parse import quote

    base = f"{PREFIX}:{{rl:{quote(tenant, safe='')}}}:{kind}"
    return base if user is None else f"{base}:u:{quote(user, safe='')}"


# ------------------------------------------------------------------ webhooks (server/webhooks.py)
# Every webhook key carries the one hash tag {webhooks}: the claim script reads the schedule and
# the records it names atomically, in one Redis Cluster slot. Webhooks are few (one per async
# job that names a URL), so one node carrying them all costs nothing.
WEBHOOK_TAG = "{webhooks}"
#: zset: delivery id -> when it is next due (ms). While an attempt runs its score is the claim's
#: deadline (the fence), so a process that dies mid-attempt leaves it due again then; a delivery
#: delivered or given up leaves the set. Waiting ones (job still running) are due for a re-check.
WEBHOOKS_DUE = f"{PREFIX}:{WEBHOOK_TAG}:due"
#: Prefix of the delivery records. hash: id, session_id, response_id, url, state, body,
#: attempts, last_status, last_error, delivered_at_ms, created_ms. TTL from creation:
WEBHOOK_RECORD_PREFIX = f"{PREFIX}:{WEBHOOK_TAG}:d:"
#: the job's poll shows its webhook as long as a session lives, and every retry (8 attempts with
#: backoff capped at minutes) ends long before; an abandoned record then costs nothing.
WEBHOOK_RECORD_TTL_MS = SESSION_TTL_MS
#: How often a waiting delivery (its job still running) re-checks the job: the generation that ends
#: the job arms its delivery at once; this only catches a process that died in between.
WEBHOOK_RECHECK_MS = 5_000


def webhook_key(delivery_id: str) -> str:
    return WEBHOOK_RECORD_PREFIX + delivery_id
