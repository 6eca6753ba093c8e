"""Webhooks of async jobs: signing, the host allowlist, backoff, the store's delivery records, and
deliveries to a real local receiver that checks signatures with the independent standardwebhooks package."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from parley.protocol.errors import InvalidMessage, UpstreamUnavailable
from parley.protocol.http import Job, JobStatus, ResponseResult, WebhookState
from parley.protocol.messages import Usage
from parley.server.config_error import ConfigError
from parley.server.metrics import Metrics
from parley.server.settings import Settings
from parley.server.webhooks import (
    Delivery,
    HostAllowlist,
    UrlPolicy,
    WebhookConfig,
    Webhooks,
    WebhookSigner,
    backoff_ms,
    delivery_id,
)
from parley.sessions import SessionStore, open_store

from .conftest import store_url

SECRET = "whsec_" + base64.b64encode(b"parley-webhook-test-secret-32-by").decode()


async def eventually(
    predicate: Callable[[], Awaitable[bool] | bool], what: str, within: float = 10.0
) -> None:
    """Poll a condition until it holds, bounded (never a fixed sleep)."""
    deadline = time.monotonic() + within
    while True:
        result = predicate()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def finished_job(
    session_id: str = "s_1", response_id: str = "r_1", status: JobStatus = JobStatus.COMPLETED
) -> Job:
    result = ResponseResult(
        response_id=response_id,
        text="hello there",
        finish_reason="stop" if status is JobStatus.COMPLETED else "error",
        usage=Usage(input_tokens=3, output_tokens=2),
        trace_id="t" * 32,
        first_seq=1,
        last_seq=5,
    )
    return Job(session_id=session_id, response_id=response_id, status=status, result=result)


# ------------------------------------------------------------------ a real receiver


@dataclass
class Receiver:
    """A Starlette app on loopback that verifies each webhook with standardwebhooks and answers as told."""

    port: int = 0
    answers: list[int] = field(default_factory=list)  # statuses to answer in turn (then 200)
    hang_first: int = 0  # this many requests are held until the client gives up
    received: list[dict[str, Any]] = field(default_factory=list)
    bad_signatures: int = 0
    elsewhere: int = 0  # requests to /elsewhere, where a 3xx points
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, host: str = "127.0.0.1", path: str = "/hook") -> str:
        return f"http://{host}:{self.port}{path}"

    async def endpoint(self, request: Request) -> Response:
        body = await request.body()
        try:
            payload = Webhook(SECRET).verify(body, dict(request.headers))
        except Exception:
            self.bad_signatures += 1
            return Response(status_code=400)
        self.received.append(
            {"id": request.headers["webhook-id"], "payload": payload, "host": request.headers["host"]}
        )
        if len(self.received) <= self.hang_first:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.release.wait(), 10)
            return Response(status_code=200)
        index = len(self.received) - 1 - self.hang_first
        status = self.answers[index] if index < len(self.answers) else 200
        headers = {"location": self.url(path="/elsewhere")} if 300 <= status < 400 else None
        return Response(status_code=status, headers=headers)

    async def redirected(self, request: Request) -> Response:
        self.elsewhere += 1
        return Response(status_code=200)

    def ids(self) -> list[str]:
        return [r["id"] for r in self.received]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = Starlette(
        routes=[
            Route("/hook", rec.endpoint, methods=["POST"]),
            Route("/elsewhere", rec.redirected, methods=["GET", "POST"]),
        ]
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    rec.port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    await eventually(lambda: server.started or task.done(), "the receiver to start")
    yield rec
    rec.release.set()
    server.should_exit = True
    with contextlib.suppress(Exception):
        await asyncio.wait_for(task, 10)
    sock.close()


@pytest.fixture
async def wh_store(store_kind: str, request: pytest.FixtureRequest) -> AsyncIterator[SessionStore]:
    s = open_store(store_url(store_kind, request))
    await s.start()
    yield s
    await s.close()


def make_webhooks(store: Any, allowed: str = "127.0.0.1", **config: Any) -> tuple[Webhooks, Metrics]:
    metrics = Metrics()
    options = {"backoff_base_ms": 10, "backoff_max_ms": 40, "timeout_ms": 2_000, "poll_ms": 20, **config}
    hooks = Webhooks(
        store,
        signer=WebhookSigner(SECRET),
        policy=UrlPolicy(HostAllowlist.parse(allowed)),
        config=WebhookConfig(**options),
        metrics=metrics.webhooks,
    )
    return hooks, metrics


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels or None) or 0.0


# ------------------------------------------------------------------ signing


def test_signature_is_standard_webhooks() -> None:
    """Our signature is the one the standardwebhooks package computes, and it verifies there."""
    signer = WebhookSigner(SECRET)
    body, ts = b'{"type":"response.completed"}', int(time.time())
    headers = signer.headers("msg_r_1", ts, body)
    assert headers["webhook-signature"] == Webhook(SECRET).sign("msg_r_1", _utc(ts), body)
    assert Webhook(SECRET).verify(body, headers) == {"type": "response.completed"}


def _utc(ts: int) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC)


@pytest.mark.parametrize(
    ("secret", "says"),
    [
        ("c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0", "whsec_"),
        ("whsec_not base64!!", "base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), "5 bytes"),
        ("whsec_" + base64.b64encode(b"x" * 65).decode(), "65 bytes"),
    ],
)
def test_a_bad_secret_is_a_config_error(secret: str, says: str) -> None:
    """A secret without whsec_, not base64, or of the wrong size is refused at start-up in one line."""
    with pytest.raises(ConfigError) as caught:
        WebhookSigner(secret)
    assert says in str(caught.value)


def test_settings_build_webhooks_or_say_why_not() -> None:
    """Hosts without a secret, or a bad allowlist entry, are ConfigErrors; neither set: webhooks off."""
    store = open_store("memory://")
    with pytest.raises(ConfigError, match="PARLEY_WEBHOOK_SECRET is not"):
        Webhooks.from_settings(Settings(webhook_allowed_hosts="hooks.example.com"), store)
    with pytest.raises(ConfigError, match="ALLOWED_HOSTS"):
        Webhooks.from_settings(Settings(webhook_allowed_hosts="bad host!", webhook_secret=SECRET), store)
    off = Webhooks.from_settings(Settings(), store)
    assert not off.enabled
    on = Webhooks.from_settings(
        Settings(webhook_allowed_hosts="hooks.example.com", webhook_secret=SECRET, webhook_max_attempts=3),
        store,
    )
    assert on.enabled and on.config.max_attempts == 3


async def test_webhooks_off_refuse_every_url() -> None:
    """With no secret or no hosts configured, any webhook_url is a clear invalid_message."""
    off = Webhooks.from_settings(Settings(), open_store("memory://"))
    with pytest.raises(InvalidMessage, match="webhooks are off"):
        await off.register("s", "r", "https://hooks.example.com/x")


# ------------------------------------------------------------------ the allowlist


def test_allowlist_parses_names_suffixes_addresses_and_networks() -> None:
    """Each kind of entry is recognized; anything else names the bad entry."""
    allow = HostAllowlist.parse(" Hooks.Example.com, *.corp.example, 10.0.0.0/8, 192.168.1.5, ::1 ,")
    assert allow.names_host("hooks.example.com") and allow.names_host("HOOKS.EXAMPLE.COM.")
    assert allow.names_host("a.corp.example") and not allow.names_host("corp.example")
    assert not allow.names_host("evil-hooks.example.com") and not allow.names_host("hooks.example.com.evil")
    assert allow.lists_address(_ip("10.2.3.4")) and allow.lists_address(_ip("192.168.1.5"))
    assert allow.lists_address(_ip("::1")) and not allow.lists_address(_ip("192.168.1.6"))
    for bad in ("bad host", "10.0.0.0/40", "a..b", "*."):
        with pytest.raises(ValueError, match="is not"):
            HostAllowlist.parse(bad)
    assert not HostAllowlist.parse(" , ")


def _ip(text: str) -> Any:
    import ipaddress

    return ipaddress.ip_address(text)


def fixed_resolver(table: dict[str, list[str]]) -> Any:
    """A DNS answer table (the resolver is the boundary: a name can resolve anywhere)."""

    async def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise socket.gaierror("no such host")
        return table[host]

    return resolve


@pytest.mark.parametrize(
    ("allowed", "url", "says"),
    [
        ("hooks.example.com", "https://other.example.com/x", "not in PARLEY_WEBHOOK_ALLOWED_HOSTS"),
        ("hooks.example.com", "https://93.184.216.34/x", "address 93.184.216.34 is not in"),
        ("rebind.example.com", "https://rebind.example.com/x", "resolves to 10.1.2.3"),
        ("mixed.example.com", "https://mixed.example.com/x", "resolves to 127.0.0.1"),
        ("gone.example.com", "https://gone.example.com/x", "does not resolve"),
        ("hooks.example.com", "ftp://hooks.example.com/x", "http:// or https://"),
        ("hooks.example.com", "https://u:p@hooks.example.com/x", "without credentials"),
        ("", "https://hooks.example.com/x", "webhooks are off"),
        ("::ffff:0:0/96", "http://[::ffff:169.254.169.254]/x", "not in"),
    ],
)
async def test_refused_urls_say_why(allowed: str, url: str, says: str) -> None:
    """Unlisted hosts, names resolving to unlisted private addresses, and bad shapes are refused."""
    policy = UrlPolicy(
        HostAllowlist.parse(allowed),
        fixed_resolver(
            {
                "hooks.example.com": ["93.184.216.34"],
                "rebind.example.com": ["10.1.2.3"],
                "mixed.example.com": ["93.184.216.34", "127.0.0.1"],
            }
        ),
    )
    with pytest.raises(InvalidMessage) as caught:
        await policy.target(url)
    assert says in caught.value.message


async def test_a_listed_network_admits_a_private_address_and_pins_it() -> None:
    """A name resolving to a private address passes when that network is listed; the request goes to it."""
    policy = UrlPolicy(
        HostAllowlist.parse("hooks.internal, 10.0.0.0/8"), fixed_resolver({"hooks.internal": ["10.9.8.7"]})
    )
    target = await policy.target("https://hooks.internal:8443/in?a=1")
    assert target.url == "https://10.9.8.7:8443/in?a=1" and target.address == "10.9.8.7"
    assert target.host_header == "hooks.internal:8443" and target.sni == "hooks.internal"
    v6 = UrlPolicy(HostAllowlist.parse("v6.example"), fixed_resolver({"v6.example": ["2606:4700::1111"]}))
    assert (await v6.target("http://v6.example/x")).url == "http://[2606:4700::1111]:80/x"


async def test_loopback_needs_its_address_listed_not_only_its_name() -> None:
    """Through the real resolver, "localhost" alone is refused; listing its addresses admits it."""
    with pytest.raises(InvalidMessage, match="non-public"):
        await UrlPolicy(HostAllowlist.parse("localhost")).target("http://localhost:9/x")
    target = await UrlPolicy(HostAllowlist.parse("localhost, 127.0.0.1, ::1")).target("http://localhost:9/x")
    assert target.address in ("127.0.0.1", "::1") and target.host_header == "localhost:9"


# ------------------------------------------------------------------ backoff and records


@given(st.integers(min_value=1, max_value=200), st.floats(min_value=0, max_value=0.999999))
def test_backoff_is_exponential_jittered_and_bounded(attempts: int, draw: float) -> None:
    """Each wait is in the upper half of min(max, base*2^(n-1)): never above the cap, never zero."""
    wait = backoff_ms(attempts, 100, 30_000, lambda: draw)
    step = min(30_000, 100 * 2 ** (attempts - 1))
    assert step // 2 <= wait <= step <= 30_000


def test_backoff_grows_then_stops_growing() -> None:
    """Without jitter's spread the steps double from the base until the cap."""
    top = [backoff_ms(n, 1000, 8000, lambda: 0.999999) for n in range(1, 7)]
    assert top == [999, 1999, 3999, 7999, 7999, 7999]


def test_delivery_record_round_trips_and_refuses_bad_transitions() -> None:
    """A record survives its string form; a delivered one cannot go back to pending."""
    d = Delivery("msg_r", "s", "r", "https://h/x", WebhookState.WAITING, 123)
    assert Delivery.of(d.fields()) == d
    done = d.to(WebhookState.PENDING, body="{}").to(WebhookState.DELIVERED, attempts=1, delivered_at_ms=5000)
    assert Delivery.of(done.fields()) == done
    assert done.status().delivered_at is not None and done.status().attempts == 1
    with pytest.raises(ValueError):
        done.to(WebhookState.PENDING)


# ------------------------------------------------------------------ the store's records


async def test_store_creates_each_delivery_once(store: SessionStore) -> None:
    """Creating an existing record changes nothing (a retried job keeps its delivery)."""
    assert await store.webhook_create("msg_a", {"state": "waiting", "n": "1"}, due_ms=10, ttl_ms=60_000)
    assert not await store.webhook_create("msg_a", {"state": "pending", "n": "2"}, due_ms=10, ttl_ms=60_000)
    assert await store.webhook_get("msg_a") == {"state": "waiting", "n": "1"}
    assert await store.webhook_get("msg_none") is None


async def test_store_arms_only_from_the_expected_state(store: SessionStore) -> None:
    """Arming is once: the second arm (a racing re-check) finds the record no longer waiting."""
    await store.webhook_create("msg_a", {"state": "waiting"}, due_ms=10_000, ttl_ms=60_000)
    assert await store.webhook_arm("msg_a", {"state": "pending", "body": "B"}, due_ms=5, from_state="waiting")
    assert not await store.webhook_arm(
        "msg_a", {"state": "pending", "body": "C"}, due_ms=5, from_state="waiting"
    )
    assert (await store.webhook_get("msg_a") or {})["body"] == "B"
    assert not await store.webhook_arm("msg_none", {"state": "pending"}, due_ms=5, from_state="waiting")


async def test_store_claims_are_exclusive_until_their_lease_ends(store: SessionStore) -> None:
    """A claimed record is invisible to other claims until now + lease; then it is due again."""
    for i in range(3):
        await store.webhook_create(
            f"msg_{i}", {"state": "pending", "i": str(i)}, due_ms=100 + i, ttl_ms=60_000
        )
    await store.webhook_create("msg_later", {"state": "pending"}, due_ms=5_000, ttl_ms=60_000)
    first = await store.webhook_claim(now_ms=1_000, lease_ms=500, limit=2)
    assert [c.delivery_id for c in first] == ["msg_0", "msg_1"] and {c.fence for c in first} == {1_500}
    assert first[0].fields == {"state": "pending", "i": "0"}
    second = await store.webhook_claim(now_ms=1_000, lease_ms=500, limit=10)
    assert [c.delivery_id for c in second] == ["msg_2"]
    assert await store.webhook_claim(now_ms=1_499, lease_ms=500, limit=10) == []
    again = await store.webhook_claim(now_ms=1_500, lease_ms=500, limit=10)
    assert [c.delivery_id for c in again] == ["msg_0", "msg_1", "msg_2"] and again[0].fence == 2_000


async def test_store_settles_only_under_the_current_claim(store: SessionStore) -> None:
    """A worker whose claim was taken over cannot overwrite the new claimant's outcome."""
    await store.webhook_create("msg_a", {"state": "pending", "attempts": "0"}, due_ms=0, ttl_ms=60_000)
    [old] = await store.webhook_claim(now_ms=1_000, lease_ms=100, limit=5)
    [new] = await store.webhook_claim(now_ms=1_100, lease_ms=100, limit=5)
    assert not await store.webhook_settle("msg_a", {"attempts": "9"}, due_ms=None, fence=old.fence)
    assert await store.webhook_settle("msg_a", {"attempts": "1"}, due_ms=3_000, fence=new.fence)
    assert (await store.webhook_get("msg_a") or {})["attempts"] == "1"
    assert await store.webhook_claim(now_ms=2_999, lease_ms=100, limit=5) == []
    [later] = await store.webhook_claim(now_ms=3_000, lease_ms=100, limit=5)
    assert await store.webhook_settle(
        "msg_a", {}, due_ms=None, fence=later.fence
    )  # done: leaves the schedule
    assert await store.webhook_claim(now_ms=10**12, lease_ms=100, limit=5) == []
    assert (await store.webhook_get("msg_a") or {})["attempts"] == "1"


async def test_store_forgets_expired_records(store: SessionStore) -> None:
    """A record past its TTL is gone, and a claim drops it from the schedule."""
    await store.webhook_create("msg_short", {"state": "pending"}, due_ms=0, ttl_ms=1)
    await eventually(lambda: _gone(store, "msg_short"), "the record to expire", 5)
    assert await store.webhook_claim(now_ms=10**12, lease_ms=100, limit=5) == []


async def _gone(store: SessionStore, delivery: str) -> bool:
    return await store.webhook_get(delivery) is None


# ------------------------------------------------------------------ deliveries to a real receiver


async def test_a_finished_job_is_delivered_once_signed(wh_store: SessionStore, receiver: Receiver) -> None:
    """register + job_finished: one signed POST, verified by the receiver; the job shows delivered."""
    hooks, metrics = make_webhooks(wh_store)
    await hooks.start()
    try:
        record = await hooks.register("s_1", "r_1", receiver.url())
        assert record.state is WebhookState.WAITING and record.id == delivery_id("r_1")
        assert (await hooks.status("r_1")).state is WebhookState.WAITING  # type: ignore[union-attr]
        assert await hooks.job_finished(finished_job())
        assert not await hooks.job_finished(finished_job())  # armed once
        await eventually(lambda: _state(hooks, "r_1", WebhookState.DELIVERED), "delivery")
    finally:
        await hooks.aclose()
    assert receiver.ids() == ["msg_r_1"] and receiver.bad_signatures == 0
    payload = receiver.received[0]["payload"]
    assert payload["type"] == "response.completed" and payload["data"]["result"]["text"] == "hello there"
    assert payload["data"]["status"] == "completed" and "webhook" not in payload["data"]
    status = await hooks.status("r_1")
    assert status is not None and status.attempts == 1 and status.last_status == 200 and status.delivered_at
    assert sample(metrics, "parley_webhook_deliveries_total", outcome="delivered") == 1
    assert sample(metrics, "parley_webhook_attempts_total") == 1


async def _state(hooks: Webhooks, response_id: str, state: WebhookState) -> bool:
    status = await hooks.status(response_id)
    return status is not None and status.state is state


async def test_fails_twice_then_succeeds_with_the_same_id(wh_store: SessionStore, receiver: Receiver) -> None:
    """Two 5xx answers are retried with backoff; the third attempt lands; all three carry one webhook-id."""
    receiver.answers = [500, 503]
    hooks, metrics = make_webhooks(wh_store)
    await hooks.start()
    try:
        await hooks.register("s_1", "r_2", receiver.url())
        await hooks.job_finished(finished_job(response_id="r_2"))
        await eventually(lambda: _state(hooks, "r_2", WebhookState.DELIVERED), "delivery")
    finally:
        await hooks.aclose()
    assert receiver.ids() == ["msg_r_2"] * 3 and receiver.bad_signatures == 0
    assert [r["payload"] for r in receiver.received].count(receiver.received[0]["payload"]) == 3
    status = await hooks.status("r_2")
    assert status is not None and status.attempts == 3 and status.last_status == 200
    assert sample(metrics, "parley_webhook_failures_total", reason="status") == 2
    assert sample(metrics, "parley_webhook_attempts_total") == 3


async def test_gives_up_after_max_attempts(wh_store: SessionStore, receiver: Receiver) -> None:
    """A receiver that always fails gets exactly max_attempts POSTs; the job then shows failed."""
    receiver.answers = [500] * 10
    hooks, metrics = make_webhooks(wh_store, max_attempts=3)
    await hooks.start()
    try:
        await hooks.register("s_1", "r_3", receiver.url())
        await hooks.job_finished(finished_job(response_id="r_3"))
        await eventually(lambda: _state(hooks, "r_3", WebhookState.FAILED), "giving up")
    finally:
        await hooks.aclose()
    assert len(receiver.received) == 3
    status = await hooks.status("r_3")
    assert status is not None and status.attempts == 3 and status.last_error == "HTTP 500"
    assert sample(metrics, "parley_webhook_deliveries_total", outcome="failed") == 1


async def test_a_timeout_is_retried(wh_store: SessionStore, receiver: Receiver) -> None:
    """A receiver that does not answer within the timeout counts as a failed attempt and is tried again."""
    receiver.hang_first = 1
    hooks, metrics = make_webhooks(wh_store, timeout_ms=300)
    await hooks.start()
    try:
        await hooks.register("s_1", "r_4", receiver.url())
        await hooks.job_finished(finished_job(response_id="r_4"))
        await eventually(lambda: _state(hooks, "r_4", WebhookState.DELIVERED), "delivery")
    finally:
        await hooks.aclose()
    assert receiver.ids() == ["msg_r_4"] * 2
    assert sample(metrics, "parley_webhook_failures_total", reason="timeout") == 1


async def test_a_host_not_allowed_is_refused_and_never_contacted(
    wh_store: SessionStore, receiver: Receiver
) -> None:
    """Unlisted hosts fail at registration; a URL disallowed later fails at its attempt; nothing is sent."""
    strict, _ = make_webhooks(wh_store, allowed="localhost")  # the name, but not its loopback address
    for url in (receiver.url("127.0.0.1"), receiver.url("localhost")):
        with pytest.raises(InvalidMessage, match="PARLEY_WEBHOOK_ALLOWED_HOSTS"):
            await strict.register("s_1", "r_5", url)
    assert await strict.status("r_5") is None
    lenient, _ = make_webhooks(wh_store, allowed="127.0.0.1")
    await lenient.register("s_1", "r_6", receiver.url())
    await lenient.job_finished(finished_job(response_id="r_6"))
    strict_worker, metrics = make_webhooks(wh_store, allowed="hooks.example.com")  # the allowlist changed
    assert await strict_worker.run_due() == 1
    await strict_worker.aclose()
    status = await strict_worker.status("r_6")
    assert status is not None and status.state is WebhookState.FAILED and status.attempts == 0
    assert status.last_error is not None and status.last_error.startswith("refused")
    assert receiver.received == [] and receiver.bad_signatures == 0
    assert sample(metrics, "parley_webhook_failures_total", reason="refused") == 1


async def test_a_waiting_delivery_is_armed_by_the_recheck(wh_store: SessionStore, receiver: Receiver) -> None:
    """If the process that ended the job died before arming it, the worker's re-check arms and delivers."""
    jobs = {"r_7": finished_job(response_id="r_7")}

    async def lookup(session_id: str, response_id: str) -> Job | None:
        return jobs.get(response_id)

    hooks, _ = make_webhooks(wh_store, recheck_ms=20)
    hooks.lookup = lookup
    await hooks.start()
    try:
        await hooks.register("s_1", "r_7", receiver.url())
        await hooks.register("s_1", "r_gone", receiver.url())
        await eventually(lambda: _state(hooks, "r_7", WebhookState.DELIVERED), "delivery")
        await eventually(lambda: _state(hooks, "r_gone", WebhookState.FAILED), "the gone job to fail")
    finally:
        await hooks.aclose()
    assert receiver.ids() == ["msg_r_7"]
    status = await hooks.status("r_gone")
    assert status is not None and status.last_error == "the job is gone"


async def test_a_retried_registration_keeps_the_first_record(
    wh_store: SessionStore, receiver: Receiver
) -> None:
    """The same job registered again (a retried POST) gets its existing delivery, never a second one."""
    hooks, _ = make_webhooks(wh_store)
    first = await hooks.register("s_1", "r_8", receiver.url())
    await hooks.job_finished(finished_job(response_id="r_8"))
    again = await hooks.register("s_1", "r_8", receiver.url())
    assert again.id == first.id and again.state is WebhookState.PENDING


@pytest.mark.parametrize("store_kind", ["redis"])
async def test_a_restart_during_retries_is_picked_up_by_a_new_instance(
    store_kind: str, redis_url: str, receiver: Receiver
) -> None:
    """An instance that failed one attempt and stopped leaves the delivery to a new one on the same Redis."""
    receiver.answers = [500]
    store_a = open_store(redis_url)
    await store_a.start()
    hooks_a, _ = make_webhooks(store_a, backoff_base_ms=200, backoff_max_ms=200)
    await hooks_a.register("s_1", "r_9", receiver.url())
    await hooks_a.job_finished(finished_job(response_id="r_9"))
    assert await hooks_a.run_due() == 1  # the first attempt: 500, due again after the backoff
    await hooks_a.aclose()
    await store_a.close()
    store_b = open_store(redis_url)
    await store_b.start()
    hooks_b, _ = make_webhooks(store_b)
    await hooks_b.start()
    try:
        await eventually(
            lambda: _state(hooks_b, "r_9", WebhookState.DELIVERED), "delivery by the new instance"
        )
    finally:
        await hooks_b.aclose()
        await store_b.close()
    assert receiver.ids() == ["msg_r_9", "msg_r_9"]
    assert json.loads(json.dumps(receiver.received[0]["payload"])) == receiver.received[1]["payload"]


@pytest.mark.parametrize("store_kind", ["redis"])
async def test_a_claim_abandoned_mid_attempt_is_retried_after_its_lease(
    store_kind: str, redis_url: str, receiver: Receiver
) -> None:
    """A worker that claimed a delivery and died holds it only until its lease ends; then another sends it."""
    store = open_store(redis_url)
    await store.start()
    hooks, _ = make_webhooks(store, timeout_ms=200, claim_margin_ms=100)
    try:
        await hooks.register("s_1", "r_10", receiver.url())
        await hooks.job_finished(finished_job(response_id="r_10"))
        [claim] = await store.webhook_claim(
            int(time.time() * 1000), hooks.config.claim_lease_ms, 10
        )  # then "dies"
        assert await hooks.run_due() == 0  # still held by the dead worker's claim
        await hooks.start()
        await eventually(lambda: _state(hooks, "r_10", WebhookState.DELIVERED), "delivery after the lease")
        assert not await store.webhook_settle(
            claim.delivery_id, {"state": "pending"}, due_ms=0, fence=claim.fence
        )
    finally:
        await hooks.aclose()
        await store.close()
    assert receiver.ids() == ["msg_r_10"]


async def test_two_instances_never_send_the_same_attempt(
    store_kind: str, wh_store: SessionStore, receiver: Receiver, request: pytest.FixtureRequest
) -> None:
    """Two workers (on Redis: two stores, as two instances) share 20 deliveries: each id arrives once."""
    other = wh_store if store_kind == "memory" else open_store(str(request.getfixturevalue("redis_url")))
    if other is not wh_store:
        await other.start()
    a, _ = make_webhooks(wh_store, claim_batch=1)  # one at a time: the two workers interleave
    b, _ = make_webhooks(other, claim_batch=1)
    try:
        for i in range(20):
            await a.register("s_1", f"r_{i}", receiver.url())
            await a.job_finished(finished_job(response_id=f"r_{i}"))
        await asyncio.gather(a.start(), b.start())
        await eventually(lambda: _all_delivered(a, 20), "every delivery settled")
    finally:
        await asyncio.gather(a.aclose(), b.aclose())
        if other is not wh_store:
            await other.close()
    assert sorted(receiver.ids()) == sorted(f"msg_r_{i}" for i in range(20))


async def _all_delivered(hooks: Webhooks, n: int) -> bool:
    states = [await hooks.status(f"r_{i}") for i in range(n)]
    return all(s is not None and s.state is WebhookState.DELIVERED for s in states)


async def test_redirects_and_proxies_are_never_followed(
    wh_store: SessionStore, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 3xx is a failed attempt (its target is unchecked), and proxy variables cannot divert a POST."""
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    receiver.answers = [307]
    hooks, _ = make_webhooks(wh_store)
    await hooks.start()
    try:
        await hooks.register("s_1", "r_11", receiver.url())
        await hooks.job_finished(finished_job(response_id="r_11"))
        await eventually(lambda: _state(hooks, "r_11", WebhookState.DELIVERED), "delivery")
    finally:
        await hooks.aclose()
    assert receiver.ids() == ["msg_r_11", "msg_r_11"]
    assert {r["host"] for r in receiver.received} == {f"127.0.0.1:{receiver.port}"}
    assert receiver.elsewhere == 0


async def test_a_name_that_cannot_resolve_is_refused_not_crashed() -> None:
    """A listed suffix admitting an unencodable name gets "does not resolve", not a traceback."""
    policy = UrlPolicy(HostAllowlist.parse("*.example.com"))
    with pytest.raises(InvalidMessage, match="does not resolve"):
        await policy.target("http://" + "a" * 70 + ".example.com/x")


async def test_a_resolver_that_hangs_is_a_retryable_error_at_creation() -> None:
    """Name resolution is bounded by the attempt timeout: a stuck resolver is upstream_unavailable."""
    never = asyncio.Event()

    async def stuck(host: str, port: int) -> list[str]:
        await never.wait()
        return []

    hooks, _ = make_webhooks(open_store("memory://"), allowed="hooks.example.com", timeout_ms=100)
    hooks.policy.resolver = stuck
    with pytest.raises(UpstreamUnavailable, match="in time"):
        await hooks.register("s_1", "r_1", "https://hooks.example.com/x")
