"""Refused before any route: credentials in URLs (never logged), Host names not served, foreign Origins."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator

import pytest

from parley.client import ParleyClient
from parley.server.guard import credential_in_query
from parley.server.settings import Settings

from .support import ServerProcess, live_server

SECRET = "s" * 40

#: Query strings that carry a credential, each with a value found nowhere else (grepped in the log).
CREDENTIAL_QUERIES = [
    "authorization=Bearer%20v01zq",
    "bearer=v02zq",
    "auth=v03zq",
    "tok%65n=v04zq",
    "resume_token=v05zq",
    "api_key=v06zq",
    "API-Key=v07zq",
    "key=v08zq",
    "secret=v09zq",
    "access_token=v10zq",
    "tok%2565n=v11zq",  # encoded twice
    "Token=v12zq",
    "client_secret=v13zq",
    "password=v14zq",
    "x=eyJhbGciOiJIUzI1NiJ9.eyJ2MTV6cSI6MX0.v15zq",  # a JWT under any name
    "q=Bearer+v16zq",
    "since=1&AccessToken=v17zq",
    "x-api-key=v18zq",
]
PATHS = ["/v1/ws", "/healthz", "/readyz", "/metrics", "/", "/v1/asyncapi.json", "/v1/feedback"]


async def raw_request(port: int, path: str, host: str | None = None, extra: str = "") -> tuple[int, str]:
    """One HTTP/1.1 request written byte for byte (no client library re-encodes the query): status, body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"GET {path} HTTP/1.1\r\nHost: {host or f'127.0.0.1:{port}'}\r\nConnection: close\r\n{extra}\r\n"
    writer.write(head.encode("latin-1"))
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[-1].decode("latin-1")


UPGRADE = (
    "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: parley.v1\r\n"
)


async def upgrade(port: int, path: str = "/v1/ws", host: str | None = None, origin: str | None = None) -> int:
    """The status of a WebSocket upgrade request (101 accepted)."""
    extra = UPGRADE + (f"Origin: {origin}\r\n" if origin else "")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"GET {path} HTTP/1.1\r\nHost: {host or f'127.0.0.1:{port}'}\r\n{extra}\r\n"
    writer.write(head.encode("latin-1"))
    line = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    return int(line.split(b" ", 2)[1])


# ------------------------------------------------------------------ credentials in URLs


@pytest.mark.parametrize("query", CREDENTIAL_QUERIES)
def test_credential_shaped_parameters_are_recognised(query: str) -> None:
    """Names and values that carry a credential are found in any case, spelling or percent-encoding."""
    assert credential_in_query(query.encode())


@pytest.mark.parametrize(
    "query", ["", "since=24h&limit=10&format=json&include_text=true", "until=2026-01-01T00%3A00%3A00Z"]
)
def test_ordinary_parameters_pass(query: str) -> None:
    """The query parameters Parley's own routes read are not mistaken for credentials."""
    assert not credential_in_query(query.encode())


@pytest.fixture
def proc() -> Iterator[ServerProcess]:
    p = ServerProcess({"PARLEY_STORE": "memory://", "PARLEY_LOG_LEVEL": "info"})
    p.start()
    yield p
    p.stop(signal.SIGKILL)


@pytest.mark.slow
async def test_credentials_in_any_url_are_refused_and_never_logged(proc: ServerProcess) -> None:
    """Each credential-in-URL variant on every path (the upgrade too) gets 401; no value reaches the log."""
    for query in CREDENTIAL_QUERIES:
        for path in PATHS:
            if path == "/v1/ws":
                status = await upgrade(proc.port, f"{path}?{query}")
            else:
                status, body = await raw_request(proc.port, f"{path}?{query}")
                assert json.loads(body)["code"] == "unauthorized"
            assert status == 401, (path, query)
    # a request that passes still works, and its refusals' lines were written meanwhile
    async with ParleyClient(proc.url) as c:
        assert (await c.ask("still serving")).finish_reason == "stop"
    deadline = time.monotonic() + 10
    while proc.log().count("[redacted]") < len(CREDENTIAL_QUERIES):  # uvicorn logs each WS refusal
        assert time.monotonic() < deadline, proc.log()[-2000:]
        await asyncio.sleep(0.05)
    text = proc.log()
    for n in range(1, len(CREDENTIAL_QUERIES) + 1):
        assert f"v{n:02d}zq" not in text
    assert "Traceback" not in text


# ------------------------------------------------------------------ hosts and origins


async def test_dns_rebinding_host_is_refused() -> None:
    """With auth off, a Host that is not a loopback name is refused, even with a matching Origin."""
    async with live_server(store="memory://") as live:
        rebind = f"rebind.attacker.test:{live.port}"
        assert await upgrade(live.port, host=rebind, origin=f"http://{rebind}") == 400
        assert (await raw_request(live.port, "/", host=rebind))[0] == 400
        assert (await raw_request(live.port, "/metrics", host=rebind))[0] == 400
        assert (await raw_request(live.port, "/healthz", host=rebind))[0] == 200  # probes use pod IPs
        for host in (f"localhost:{live.port}", f"127.0.0.1:{live.port}", f"127.1.2.3:{live.port}", "[::1]"):
            assert await upgrade(live.port, host=host, origin=f"http://{host}") == 101, host
        assert await upgrade(live.port, host=f"localhost:{live.port}", origin="http://localhost:1") == 403


async def test_allowed_hosts_are_configurable() -> None:
    """PARLEY_ALLOWED_HOSTS replaces the default: listed names and wildcards pass, loopback names do not."""
    async with live_server(store="memory://", allowed_hosts="chat.example.com, *.corp.example") as live:
        assert await upgrade(live.port, host="chat.example.com", origin="https://chat.example.com") == 101
        assert await upgrade(live.port, host="a.corp.example:8443") == 101
        assert await upgrade(live.port, host="corp.example") == 400
        assert await upgrade(live.port, host=f"localhost:{live.port}") == 400
        assert (await raw_request(live.port, "/", host="chat.example.com"))[0] == 200


async def test_with_auth_on_any_host_is_served_and_origins_are_still_checked() -> None:
    """Auth on, no list: any Host is served (a rebound page has no token); a foreign Origin is still 403."""
    async with live_server(store="memory://", auth_jwt_secret=SECRET) as live:
        assert await upgrade(live.port, host="app.example.com", origin="https://app.example.com") == 101
        assert await upgrade(live.port, host="app.example.com", origin="https://evil.example") == 403


def test_the_bound_address_is_an_allowed_host() -> None:
    """``--host 10.1.2.3`` serves requests addressed to 10.1.2.3 (auth off), not other addresses."""
    from parley.server.guard import HostRules

    rules = HostRules.from_settings(Settings(host="10.1.2.3"))
    assert rules.allows("10.1.2.3:8000") and not rules.allows("10.1.2.4:8000")
    assert not HostRules.from_settings(Settings(host="0.0.0.0")).allows("10.1.2.3")
