"""Whether a backing store is reachable, told once: a warning when it is lost, one when it is back.

During a Redis outage every generation, reader, renewal and index write fails many
times a second; each logging its own traceback drowned the one fact an operator
needs. So every failure reports here (``failed``) and every success too (``ok``: one
attribute test on the hot path). The first failure after a success logs one warning
naming the store's address (never its credentials) and the cause; while the outage
lasts a reminder follows every ``REMINDER_S``; the first success logs one warning
with the outage's duration and the writes retried or given up meanwhile.
Tracebacks only at debug level. The counters feed ``/metrics``.
"""

from __future__ import annotations

import logging
import time
from urllib.parse import urlsplit

#: How often a continuing outage is mentioned again (one line, no traceback).
REMINDER_S = 30.0
#: Longest cause text kept: a driver's message names the address and errno, nothing longer is useful.
CAUSE_CHARS = 200


def store_address(url: str) -> str:
    """``host:port`` (or the socket path) of a store URL; never its user name or password."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path or "unix socket"
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:  # a malformed port: name the host only
        port = None
    return f"{host}:{port or 6379}"


def describe(exc: BaseException) -> str:
    """The root cause in one short line: the driver's error under our own wrapper."""
    root: BaseException = exc
    while root.__cause__ is not None and root.__cause__ is not root:
        root = root.__cause__
    text = str(root).strip().replace("\n", " ")
    out = f"{type(root).__name__}: {text}" if text else type(root).__name__
    return out[:CAUSE_CHARS]


class StoreHealth:
    """Outage state of one store connection: logs its transitions and counts what failed."""

    __slots__ = (
        "_dropped_now",
        "_next_reminder",
        "_retried_now",
        "address",
        "cause",
        "down_since",
        "log",
        "name",
        "outage_seconds",
        "outages",
        "sessions_lost",
        "writes_dropped",
        "writes_failed",
    )

    def __init__(self, name: str, address: str, logger: logging.Logger | None = None) -> None:
        self.name = name  # what the lines call it: "session store", "limiter"
        self.address = address
        self.log = logger or logging.getLogger("parley.redis")
        self.down_since: float | None = None  # monotonic start of the current outage
        self.cause = ""
        self.outages = 0
        self.outage_seconds = 0.0  # of finished outages; ``outage_total`` adds the current one
        self.writes_failed = 0  # write attempts that failed (each retry counts)
        self.writes_dropped = 0  # writes given up for good
        self.sessions_lost = 0  # sessions found gone while readers or a generation held them
        self._retried_now = 0
        self._dropped_now = 0
        self._next_reminder = 0.0

    @property
    def up(self) -> bool:
        return self.down_since is None

    @property
    def outage_total(self) -> float:
        """Seconds spent unreachable since start, the current outage included."""
        current = 0.0 if self.down_since is None else time.monotonic() - self.down_since
        return self.outage_seconds + current

    def ok(self) -> None:
        """A call succeeded: if an outage was on, it is over (one line)."""
        if self.down_since is None:
            return
        lasted = time.monotonic() - self.down_since
        self.outage_seconds += lasted
        self.down_since = None
        self.log.warning(
            "%s reachable again at %s after %.1f s",
            self.name,
            self.address,
            lasted,
            extra={
                "fields": {
                    "store": self.address,
                    "outage_s": round(lasted, 3),
                    "writes_retried": self._retried_now,
                    "writes_dropped": self._dropped_now,
                }
            },
        )
        self._retried_now = self._dropped_now = 0

    def failed(self, exc: BaseException) -> None:
        """A call failed because the store is unreachable: one warning per outage, a reminder now and then."""
        now = time.monotonic()
        self.log.debug("%s call failed", self.name, exc_info=exc)
        if self.down_since is None:
            self.down_since = now
            self.outages += 1
            self.cause = describe(exc)
            self._next_reminder = now + REMINDER_S
            self.log.warning(
                "%s unreachable at %s (%s)",
                self.name,
                self.address,
                self.cause,
                extra={"fields": {"store": self.address, "cause": self.cause}},
            )
        elif now >= self._next_reminder:
            self._next_reminder = now + REMINDER_S
            self.log.warning(
                "%s still unreachable at %s after %.0f s (%s)",
                self.name,
                self.address,
                now - self.down_since,
                describe(exc),
                extra={
                    "fields": {
                        "store": self.address,
                        "cause": describe(exc),
                        "outage_s": round(now - self.down_since, 3),
                        "writes_retried": self._retried_now,
                        "writes_dropped": self._dropped_now,
                    }
                },
            )

    def write_retried(self, n: int = 1) -> None:
        """``n`` writes failed and will be tried again."""
        self.writes_failed += n
        self._retried_now += n

    def write_dropped(self, n: int = 1) -> None:
        """``n`` writes failed and were given up (someone else repairs their effect, or nobody needs it)."""
        self.writes_failed += n
        self.writes_dropped += n
        self._dropped_now += n
