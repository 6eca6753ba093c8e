"""The outage tracker: one warning per outage, a reminder now and then, the address without credentials."""

from __future__ import annotations

import logging

import pytest

from parley.sessions import outage
from parley.sessions.outage import StoreHealth, store_address


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("redis://:hunter2@db.internal:6380/0", "db.internal:6380"),
        ("rediss://user:hunter2@db.internal/1", "db.internal:6379"),
        ("redis+cluster://10.0.0.7:7000", "10.0.0.7:7000"),
        ("redis://[::1]:6379/0", "[::1]:6379"),
        ("unix:///run/redis.sock", "/run/redis.sock"),
    ],
)
def test_the_address_names_host_and_port_never_the_password(url: str, address: str) -> None:
    """Log lines name where the store is, never its credentials."""
    assert store_address(url) == address


def test_many_failures_are_one_warning_then_one_when_back(caplog: pytest.LogCaptureFixture) -> None:
    """A thousand failures in an outage log one warning (no traceback) and the recovery one more."""
    health = StoreHealth("session store", "db:6379", logging.getLogger("test.outage"))
    caplog.set_level(logging.INFO, logger="test.outage")
    cause = ConnectionError("Error 111 connecting to db:6379. Connection refused.")
    for _ in range(1000):
        health.failed(cause)
        health.write_retried()
    health.write_dropped(2)
    health.ok()
    health.ok()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings[0].getMessage() == (
        "session store unreachable at db:6379"
        " (ConnectionError: Error 111 connecting to db:6379. Connection refused.)"
    )
    assert len(warnings) == 2 and all(r.exc_info is None for r in warnings)
    back = warnings[1]
    assert back.getMessage().startswith("session store reachable again at db:6379 after ")
    assert back.fields["writes_retried"] == 1000 and back.fields["writes_dropped"] == 2  # type: ignore[attr-defined]
    assert health.up and health.outages == 1 and health.writes_failed == 1002 and health.writes_dropped == 2


def test_a_long_outage_is_reminded_of(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While an outage lasts, a reminder follows every REMINDER_S, not every failure."""
    monkeypatch.setattr(outage, "REMINDER_S", 0.0)
    health = StoreHealth("limiter store", "db:6379", logging.getLogger("test.outage"))
    caplog.set_level(logging.INFO, logger="test.outage")
    health.failed(TimeoutError("timed out"))
    health.failed(TimeoutError("timed out"))
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs[0].startswith("limiter store unreachable") and msgs[1].startswith(
        "limiter store still unreachable"
    )
