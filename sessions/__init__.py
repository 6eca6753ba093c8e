"""Session state and the per-session event log; knows nothing of WebSockets."""

from __future__ import annotations

from typing import Any

from .fanout import Fanout, Listener, Subscriber
from .store import AcceptResult, DeltaWrite, LogEntry, SessionRecord, SessionStore, Snapshot
from .tail import LogGap, SlowConsumer, fresh, replay, tail


def open_store(url: str, **limits: Any) -> SessionStore:
    """A store chosen by URL: ``memory://``, ``redis://host:port/db`` or ``redis+cluster://seed:port``."""
    if url.startswith("memory://"):
        from .memory import MemoryStore

        return MemoryStore(**limits)
    if url.startswith(("redis://", "rediss://", "unix://", "redis+cluster://")):
        from .redis_store import RedisStore

        return RedisStore(url, **limits)
    raise ValueError(f"unsupported store URL {url!r}: use memory:// or redis://HOST:PORT/DB")


__all__ = [
    "AcceptResult",
    "DeltaWrite",
    "Fanout",
    "Listener",
    "LogEntry",
    "LogGap",
    "SessionRecord",
    "SessionStore",
    "SlowConsumer",
    "Snapshot",
    "Subscriber",
    "fresh",
    "open_store",
    "replay",
    "tail",
]
