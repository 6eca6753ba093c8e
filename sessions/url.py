"""The one parser of store URLs: which backend a ``PARLEY_STORE`` / ``--store`` value names.

Everything that picks a backend by URL (the store, the limiter, the metrics wrapper,
``parley feedback export``) asks ``parse_store_url`` instead of testing prefixes itself.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class StoreKind(enum.Enum):
    MEMORY = "memory"  # in this process only: one instance, nothing survives a restart
    REDIS = "redis"  # one Redis server (TCP, TLS or a Unix socket)
    CLUSTER = "cluster"  # a Redis Cluster, reached through any seed node


#: Every accepted scheme and the backend it selects.
SCHEMES: dict[str, StoreKind] = {
    "memory": StoreKind.MEMORY,
    "redis": StoreKind.REDIS,
    "rediss": StoreKind.REDIS,
    "unix": StoreKind.REDIS,
    "redis+cluster": StoreKind.CLUSTER,
}
#: What to say when a URL is refused.
ACCEPTED = (
    "use memory://, redis://HOST:PORT/DB, rediss://HOST:PORT/DB (TLS), unix:///PATH/redis.sock "
    "or redis+cluster://SEED-HOST:PORT"
)


class UnsupportedStoreUrl(ValueError):
    """The URL names no backend Parley has; ``what`` and ``fix`` are one short clause each."""

    def __init__(self, url: str) -> None:
        shown = url.split("://", 1)[0] + "://..." if "://" in url else repr(url)  # never echo a password
        self.what = f"unsupported store URL {shown}"
        self.fix = ACCEPTED
        super().__init__(f"{self.what}: {self.fix}")


@dataclass(frozen=True, slots=True)
class StoreUrl:
    url: str  # as given
    scheme: str
    kind: StoreKind

    @property
    def redis_url(self) -> str:
        """The URL redis-py is given: a cluster's seed node as ``redis://``; others as they are."""
        if self.kind is StoreKind.CLUSTER:
            return "redis://" + self.url[len("redis+cluster://") :]
        return self.url

    @property
    def shared(self) -> bool:
        """Several processes can share it (multi-instance, limits across instances)."""
        return self.kind is not StoreKind.MEMORY


def parse_store_url(url: str) -> StoreUrl:
    """The backend ``url`` names; ``UnsupportedStoreUrl`` (a ``ValueError``) if none."""
    scheme, sep, _ = url.partition("://")
    kind = SCHEMES.get(scheme.lower()) if sep else None
    if kind is None:
        raise UnsupportedStoreUrl(url)
    return StoreUrl(url, scheme.lower(), kind)
