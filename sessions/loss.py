"""Noticing that Redis lost sessions this process holds, and telling their readers.

Redis can lose keys without any instance being told: a restart without persistence, a
failover to a replica that had not caught up, a ``FLUSHALL``. A reader would then tail
a log that never grows again and a generation would write into nothing, so every loss
is noticed and answered: ``Fanout.lose`` marks the session's readers, which end with
``error{session_lost}`` and close 4010. Three detectors, cheapest first:

- the fence: a script asked to write to a session whose ``meta`` key is gone says so
  (deltas, lease renewal, the terminal event, ``message.send``), and the store hands
  the session here at once;
- the audit: after the pub/sub connection came back (the usual sign of a restart) and
  whenever the epoch changed, every session with readers here is checked (``EXISTS``
  of its meta, pipelined in chunks);
- the epoch: a random value written once (``keys.EPOCH``, no TTL) and read every
  ``EPOCH_CHECK_S``; gone or different means data was lost since the last look, even
  when no connection dropped (a flush, a failover behind a proxy).

A session found lost is announced to the other instances (``lost\\t<sid>`` on the
control channel), so their readers end without waiting for their own audit. The bound
(docs/operations.md): readers hear of it within ``EPOCH_CHECK_S`` plus a round trip of
Redis answering again, or at once when a generation runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from . import keys
from .fanout import Fanout
from .outage import StoreHealth

log = logging.getLogger("parley.redis")

#: How often the epoch key is read: the bound on noticing a flush that dropped no connection.
EPOCH_CHECK_S = 1.0
#: Sessions checked per pipelined round trip of an audit.
AUDIT_CHUNK = 500
#: Sessions remembered as lost (so one loss is logged and counted once, whoever reports it again).
REMEMBERED = 10_000
#: Losses are logged one info line each; one warning sums up those of the last ``GATHER_S``, at
#: most once per ``SUMMARY_S``.
GATHER_S = 1.0
SUMMARY_S = 10.0


class LossWatch:
    """The three detectors of one ``RedisStore`` and the one way a loss is announced."""

    def __init__(
        self,
        redis: Any,
        fanout: Fanout,
        health: StoreHealth,
        announce: Callable[[str], None],
    ) -> None:
        self._r = redis
        self.fanout = fanout
        self.health = health
        self._announce = announce
        self.epoch: str | None = None
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._summarized = 0  # sessions_lost at the last summary warning
        self._next_summary = 0.0
        self._summary: asyncio.TimerHandle | None = None

    def lost(self, session_id: str, *, announce: bool = True) -> None:
        """The session's state is gone: end its readers here, and (found here) tell the other instances."""
        readers = self.fanout.lose(session_id)
        if session_id in self._seen or (not announce and not readers):  # (another's, not read here)
            return
        self._seen[session_id] = None
        if len(self._seen) > REMEMBERED:
            self._seen.popitem(last=False)
        self.health.sessions_lost += 1
        log.info(
            "session lost by the store",
            extra={"fields": {"session_id": session_id, "readers": readers, "found_here": announce}},
        )
        if announce:
            self._announce(session_id)
        self._summarize()

    def _summarize(self) -> None:
        """One warning sums up a burst of losses (a restart loses every session at once): written
        ``GATHER_S`` after the first loss, then at most once per ``SUMMARY_S``."""
        if self._summary is None:
            delay = max(GATHER_S, self._next_summary - time.monotonic())
            self._summary = asyncio.get_running_loop().call_later(delay, self._emit_summary)

    def _emit_summary(self) -> None:
        self._summary = None
        new = self.health.sessions_lost - self._summarized
        if new <= 0:
            return
        self._summarized = self.health.sessions_lost
        self._next_summary = time.monotonic() + SUMMARY_S
        log.warning(
            "the session store lost the state of %d session(s) read here; their readers were told "
            "(session_lost, close 4010)",
            new,
            extra={"fields": {"store": self.health.address, "sessions_lost": new}},
        )

    async def audit(self) -> int:
        """Check every session with readers here; announce the ones whose state is gone. Returns how many."""
        sessions = self.fanout.sessions()
        gone = 0
        for i in range(0, len(sessions), AUDIT_CHUNK):
            chunk = sessions[i : i + AUDIT_CHUNK]
            async with self._r.pipeline(transaction=False) as pipe:
                for sid in chunk:
                    pipe.exists(keys.session_key(sid, keys.META))
                found = await pipe.execute()
            for sid, n in zip(chunk, found, strict=True):
                if not n:
                    gone += 1
                    self.lost(sid)
        return gone

    async def watch(self) -> None:
        """The epoch detector's loop (a task of the store); failures are the outage tracker's business."""
        last: str | None = None  # moves on only once an audit of a change succeeded
        while True:
            await asyncio.sleep(EPOCH_CHECK_S)
            try:
                current = await self._r.get(keys.EPOCH)
                if current is None:
                    await self._r.set(keys.EPOCH, uuid.uuid4().hex, nx=True)
                    current = await self._r.get(keys.EPOCH)
                if last is not None and current != last:
                    await self.audit()
                last = self.epoch = current
            except (RedisError, OSError) as exc:
                log.debug("epoch check failed", exc_info=exc)
