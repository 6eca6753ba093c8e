"""Session state and the per-session event log; knows nothing of WebSockets."""

from __future__ import annotations

from typing import Any

from .fanout import Fanout, Listener, Subscriber
from .store import AcceptResult, DeltaWrite, LogEntry, SessionRecord, SessionStore, Snapshot
from .tail import LogGap, SlowConsumer, fresh, replay, tail

#: Every store URL scheme ``open_store`` accepts (Redis over TCP, TLS, a Unix socket, or a Cluster).
STORE_SCHEMES = ("memory://", "redis://", "rediss://", "unix://", "redis+cluster://")


def open_store(url: str, **limits: Any) -> SessionStore:
    """A store chosen by URL: ``memory://``, ``redis://host:port/db`` or ``redis+cluster://seed:port``."""
    if url.startswith("memory://"):
        from .memory import MemoryStore

        return MemoryStore(**limits)
    if url.startswith(STORE_SCHEMES):
        from .redis_store import RedisStore

        return RedisStore(url, **limits)
    scheme = url.partition("://")[0] + "://" if "://" in url else repr(url[:20])
    raise ValueError(f"unsupported store URL {scheme}: use {', '.join(STORE_SCHEMES)}")


__all__ = [
    "STORE_SCHEMES",
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
