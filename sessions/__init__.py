"""Session state and the per-session event log; knows nothing of WebSockets."""

from __future__ import annotations

from typing import Any

from .fanout import Fanout, Listener, Subscriber
from .store import AcceptResult, DeltaWrite, LogEntry, SessionRecord, SessionStore, Snapshot
from .tail import LogGap, SlowConsumer, fresh, replay, tail
from .url import SCHEMES, StoreKind, StoreUrl, UnsupportedStoreUrl, parse_store_url

#: Every store URL scheme ``open_store`` accepts (Redis over TCP, TLS, a Unix socket, or a Cluster).
STORE_SCHEMES = tuple(f"{scheme}://" for scheme in SCHEMES)


def open_store(url: str, **limits: Any) -> SessionStore:
    """A store chosen by URL (``sessions/url.py``); ``UnsupportedStoreUrl`` for anything else."""
    if parse_store_url(url).kind is StoreKind.MEMORY:
        from .memory import MemoryStore

        return MemoryStore(**limits)
    from .redis_store import RedisStore

    return RedisStore(url, **limits)


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
    "StoreKind",
    "StoreUrl",
    "Subscriber",
    "UnsupportedStoreUrl",
    "fresh",
    "open_store",
    "parse_store_url",
    "replay",
    "tail",
]
