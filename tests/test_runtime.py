"""The runtime's wiring refuses what it cannot build with one ConfigError that says what is accepted."""

from __future__ import annotations

import pytest

from parley.server.config_error import ConfigError
from parley.server.runtime import Runtime
from parley.server.settings import Settings
from parley.sessions import StoreKind, parse_store_url


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("memory://", StoreKind.MEMORY),
        ("redis://127.0.0.1:6379/0", StoreKind.REDIS),
        ("rediss://cache.example:6380/1", StoreKind.REDIS),
        ("unix:///run/redis.sock", StoreKind.REDIS),
        ("redis+cluster://seed:7000", StoreKind.CLUSTER),
    ],
)
def test_one_parser_names_the_backend_of_every_accepted_url(url: str, kind: StoreKind) -> None:
    """Each accepted scheme selects its backend; a cluster URL is handed to redis-py as redis://."""
    parsed = parse_store_url(url)
    assert parsed.kind is kind
    assert parsed.redis_url.startswith(("memory://", "redis://", "rediss://", "unix://"))


def unchecked(**fields: str) -> Settings:
    """Settings carrying values their own validators refuse: the Runtime's checks are a second line."""
    settings = Settings()
    for name, value in fields.items():
        setattr(settings, name, value)
    return settings


def test_an_unknown_store_url_is_a_config_error_listing_the_schemes() -> None:
    """PARLEY_STORE=mysql://... stops start-up with what is accepted, without echoing the URL's secrets."""
    with pytest.raises(ConfigError) as info:
        Runtime(unchecked(store="mysql://user:hunter2@db/0"))
    text = str(info.value)
    assert "memory://" in text and "redis+cluster://" in text and "unix://" in text
    assert "hunter2" not in text


def test_an_unknown_model_is_a_config_error_listing_the_forms() -> None:
    """--model gpt-4o (no provider prefix) stops start-up naming echo and openai:MODEL."""
    with pytest.raises(ConfigError) as info:
        Runtime(unchecked(model="gpt-4o"))
    assert "gpt-4o" in info.value.what and "openai:MODEL" in info.value.fix and "echo" in info.value.fix


def test_the_runtime_wires_one_of_each() -> None:
    """A default runtime: a memory store, the echo provider, the core on the one service, no limiter."""
    runtime = Runtime(Settings())
    assert set(runtime.catalog.providers) == {"echo"}
    assert runtime.limiter is None and runtime.connections == set() and not runtime.draining
    assert runtime.admission.service is runtime.service and runtime.handlers.meter is runtime.meter
