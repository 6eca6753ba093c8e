"""Webhooks of async jobs: a delivery record per job, signed, retried, sent only to allowed hosts.

A job that names a ``webhook_url`` gets a delivery record when it is created (``register``:
the URL is checked then, so a refused URL is the job's 400, never a silent drop). The record
waits for the job; the generation that ends the job arms it with the result (``job_finished``).
A worker on every instance claims due records atomically through the session store
(``webhook_claim``), so two instances never make the same attempt, and a process that dies
mid-attempt leaves its claim to expire and the delivery to the next worker.

Each attempt POSTs the same body with the same ``webhook-id`` (at-least-once: receivers
deduplicate on it), signed as the Standard Webhooks specification says: ``webhook-signature:
v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` under ``PARLEY_WEBHOOK_SECRET``. Non-2xx
answers, timeouts and network errors are retried with exponential backoff and jitter up to
``PARLEY_WEBHOOK_MAX_ATTEMPTS``. Nothing is sent to a host outside
``PARLEY_WEBHOOK_ALLOWED_HOSTS``: the resolved addresses are checked too (a private or loopback
address only when listed), and the request goes to the checked address itself, so a name that
resolves differently a moment later cannot redirect it (docs/security.md, "Webhooks").
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import random
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from parley.protocol.errors import InvalidMessage, ParleyError, UpstreamUnavailable
from parley.protocol.http import Job, WebhookPayload, WebhookState, WebhookStatus
from parley.sessions import keys
from parley.sessions.store import WebhookClaim, WebhookStore

from .config_error import ConfigError
from .metrics import WebhookMetrics
from .settings import Settings

log = logging.getLogger("parley.webhooks")

SECRET_PREFIX = "whsec_"
#: Standard Webhooks: secrets of 24 to 64 random bytes.
MIN_SECRET_BYTES, MAX_SECRET_BYTES = 24, 64
#: A claim outlives one attempt by this much (the attempt itself is bounded by its timeout).
CLAIM_MARGIN_MS = 5_000
#: Deliveries a worker takes per claim (by default), and attempts it runs at once.
CLAIM_BATCH = 32
MAX_CONCURRENT_ATTEMPTS = 16
USER_AGENT = "parley-webhooks/1"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]
#: What part 2's HTTP layer gives the worker: a job as its poll shows it, None once it is gone.
JobLookup = Callable[[str, str], Awaitable[Job | None]]


def _now_ms() -> int:
    return int(time.time() * 1000)


def delivery_id(response_id: str) -> str:
    """The ``webhook-id`` of a job's delivery: one per job, the same on every attempt."""
    return f"msg_{response_id}"


# ------------------------------------------------------------------ signing


class WebhookSigner:
    """Standard Webhooks signatures under one ``whsec_<base64>`` secret."""

    def __init__(self, secret: str) -> None:
        if not secret.startswith(SECRET_PREFIX):
            raise ConfigError(
                "PARLEY_WEBHOOK_SECRET must start with whsec_", "use whsec_ + base64 of 24-64 random bytes"
            )
        try:
            key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(
                "PARLEY_WEBHOOK_SECRET is not whsec_ + base64", "use whsec_ + base64 of 24-64 random bytes"
            ) from None
        if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
            raise ConfigError(
                f"PARLEY_WEBHOOK_SECRET holds {len(key)} bytes",
                f"use {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} random bytes, base64, after whsec_",
            )
        self._key = key

    def sign(self, msg_id: str, timestamp: int, body: bytes) -> str:
        """``v1,<base64 HMAC-SHA256 of "msg_id.timestamp.body">``."""
        digest = hmac.new(self._key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
        return "v1," + base64.b64encode(digest).decode()

    def headers(self, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": self.sign(msg_id, timestamp, body),
        }


# ------------------------------------------------------------------ where deliveries may go


def _address(text: str) -> IPAddress | None:
    """An IP address (an IPv4-mapped IPv6 address as its IPv4 one), or None for a name."""
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass(frozen=True, slots=True)
class HostAllowlist:
    """``PARLEY_WEBHOOK_ALLOWED_HOSTS``: exact names, ``*.suffix`` names, addresses and networks."""

    names: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = ()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, text: str) -> HostAllowlist:
        """Comma-separated entries; ValueError naming the first one that is none of the four."""
        names: set[str] = set()
        suffixes: list[str] = []
        networks: list[IPNetwork] = []
        for raw in text.split(","):
            entry = raw.strip().lower().rstrip(".")
            if not entry:
                continue
            if "/" in entry:
                try:
                    networks.append(ipaddress.ip_network(entry, strict=False))
                except ValueError:
                    raise ValueError(f"{raw.strip()!r} is not a network (e.g. 10.0.0.0/8)") from None
                continue
            ip = _address(entry.strip("[]"))
            if ip is not None:
                networks.append(ipaddress.ip_network(ip))
                continue
            wildcard = entry.startswith("*.")
            name = entry[2:] if wildcard else entry
            labels = name.split(".")
            if not name or any(
                not label or len(label) > 63 or not label.replace("-", "").replace("_", "").isalnum()
                for label in labels
            ):
                raise ValueError(f"{raw.strip()!r} is not a host name, *.suffix, address or network")
            if wildcard:
                suffixes.append("." + name)
            else:
                names.add(name)
        return cls(frozenset(names), tuple(suffixes), tuple(networks))

    def __bool__(self) -> bool:
        return bool(self.names or self.suffixes or self.networks)

    def names_host(self, host: str) -> bool:
        """Whether a URL's host (a name) is listed, exactly or under a ``*.`` suffix."""
        host = host.lower().rstrip(".")
        return host in self.names or any(host.endswith(s) for s in self.suffixes)

    def lists_address(self, ip: IPAddress) -> bool:
        return any(ip.version == net.version and ip in net for net in self.networks)


def _public(ip: IPAddress) -> bool:
    """Reachable on the internet: not private, loopback, link-local, reserved, shared or multicast."""
    return ip.is_global and not ip.is_multicast


@dataclass(frozen=True, slots=True)
class Target:
    """A checked URL: where the request goes (the checked address) and what it says it goes to."""

    url: str  # the request URL with the checked address in place of the name
    host_header: str  # the URL's own host[:port]
    sni: str | None  # the name TLS verifies (https to a name)
    address: str


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for ``host`` (in its order, without repeats)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class UrlPolicy:
    """Decides where a webhook may be sent; every refusal is ``InvalidMessage`` saying why."""

    def __init__(self, allowlist: HostAllowlist, resolver: Resolver = system_resolver) -> None:
        self.allowlist = allowlist
        self.resolver = resolver

    async def target(self, url: str) -> Target:
        """Check ``url`` (scheme, listed host, every resolved address) and pin it to one address."""
        if not self.allowlist:
            raise InvalidMessage("webhooks are off on this server (PARLEY_WEBHOOK_ALLOWED_HOSTS is empty)")
        try:
            parts = urlsplit(url)
            host, port = parts.hostname, parts.port
        except ValueError:
            raise InvalidMessage("webhook_url is not a valid URL") from None
        if parts.scheme not in ("http", "https") or not host or parts.username or parts.password:
            raise InvalidMessage("webhook_url must be an http:// or https:// URL without credentials")
        port = port or (443 if parts.scheme == "https" else 80)
        literal = _address(host)
        if literal is not None:
            if not self.allowlist.lists_address(literal):
                raise InvalidMessage(f"webhook_url: address {host} is not in PARLEY_WEBHOOK_ALLOWED_HOSTS")
            addresses = [str(literal)]
        else:
            if not self.allowlist.names_host(host):
                raise InvalidMessage(f"webhook_url: host {host!r} is not in PARLEY_WEBHOOK_ALLOWED_HOSTS")
            try:
                addresses = await self.resolver(host, port)
            except (OSError, UnicodeError):  # no such name, or one IDNA cannot encode
                raise InvalidMessage(f"webhook_url: host {host!r} does not resolve") from None
            if not addresses:
                raise InvalidMessage(f"webhook_url: host {host!r} does not resolve")
        for text in addresses:
            ip = _address(text)
            if ip is None or not (_public(ip) or self.allowlist.lists_address(ip)):
                raise InvalidMessage(
                    f"webhook_url: host {host!r} resolves to {text}, a non-public address that is not "
                    "in PARLEY_WEBHOOK_ALLOWED_HOSTS"
                )
        pinned = addresses[0]
        ip = ipaddress.ip_address(pinned.split("%", 1)[0])
        netloc = f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
        path = parts.path or "/"
        request_url = f"{parts.scheme}://{netloc}{path}" + (f"?{parts.query}" if parts.query else "")
        sni = host if parts.scheme == "https" and literal is None else None
        return Target(request_url, parts.netloc, sni, pinned)


# ------------------------------------------------------------------ the delivery record


def backoff_ms(attempts: int, base_ms: int, max_ms: int, rand: Callable[[], float] = random.random) -> int:
    """The wait after the ``attempts``-th failed attempt: base * 2^(attempts-1), capped at
    ``max_ms``, then "equal jitter" (a uniform draw from its upper half), so retries of many
    deliveries that failed together spread out but none waits less than half its step."""
    step = min(max_ms, base_ms * 2 ** min(max(attempts - 1, 0), 62))
    return int(step / 2 + rand() * step / 2)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One job's webhook: what is sent, where, and how it went so far (a store record)."""

    id: str
    session_id: str
    response_id: str
    url: str
    state: WebhookState
    created_ms: int
    body: str = ""  # the signed payload, fixed when the job finished (every attempt sends it)
    attempts: int = 0  # POSTs sent
    last_status: int | None = None
    last_error: str | None = None
    delivered_at_ms: int | None = None

    def fields(self) -> dict[str, str]:
        """The record as the store keeps it (strings; absent values as empty strings)."""
        return {
            "id": self.id,
            "session_id": self.session_id,
            "response_id": self.response_id,
            "url": self.url,
            "state": self.state.value,
            "created_ms": str(self.created_ms),
            "body": self.body,
            "attempts": str(self.attempts),
            "last_status": "" if self.last_status is None else str(self.last_status),
            "last_error": self.last_error or "",
            "delivered_at_ms": "" if self.delivered_at_ms is None else str(self.delivered_at_ms),
        }

    @classmethod
    def of(cls, fields: Mapping[str, str]) -> Delivery:
        def opt(name: str) -> int | None:
            value = fields.get(name, "")
            return int(value) if value else None

        return cls(
            id=fields["id"],
            session_id=fields["session_id"],
            response_id=fields["response_id"],
            url=fields["url"],
            state=WebhookState(fields["state"]),
            created_ms=int(fields["created_ms"]),
            body=fields.get("body", ""),
            attempts=int(fields.get("attempts", "0")),
            last_status=opt("last_status"),
            last_error=fields.get("last_error") or None,
            delivered_at_ms=opt("delivered_at_ms"),
        )

    def status(self) -> WebhookStatus:
        """The public part, for the job's poll."""
        delivered = self.delivered_at_ms
        return WebhookStatus(
            state=self.state,
            attempts=self.attempts,
            last_status=self.last_status,
            last_error=self.last_error,
            delivered_at=None if delivered is None else datetime.fromtimestamp(delivered / 1000, UTC),
        )

    def to(self, state: WebhookState, **changes: Any) -> Delivery:
        """This record in ``state`` (ValueError for a transition a delivery cannot make)."""
        return replace(self, state=self.state.to(state), **changes)


def payload(job: Job, finished_ms: int) -> str:
    """The body POSTed for a finished job (Standard Webhooks' ``type``, ``timestamp``, ``data``)."""
    data = job.model_copy(update={"webhook": None})  # its own delivery state would be stale at once
    body = WebhookPayload(timestamp=datetime.fromtimestamp(finished_ms / 1000, UTC), data=data)
    return body.model_dump_json(exclude_none=True)


# ------------------------------------------------------------------ the service


@dataclass
class WebhookConfig:
    """The knobs of ``Webhooks`` (from ``Settings``; tests pass small numbers)."""

    max_attempts: int = 8
    timeout_ms: int = 10_000
    backoff_base_ms: int = 1_000
    backoff_max_ms: int = 600_000
    poll_ms: int = 500
    record_ttl_ms: int = keys.WEBHOOK_RECORD_TTL_MS
    recheck_ms: int = keys.WEBHOOK_RECHECK_MS
    claim_margin_ms: int = CLAIM_MARGIN_MS
    claim_batch: int = CLAIM_BATCH
    rand: Callable[[], float] = field(default=random.random)

    @property
    def claim_lease_ms(self) -> int:
        """How long a claim holds: longer than any attempt (bounded by its timeout) can take."""
        return self.timeout_ms + self.claim_margin_ms


class Webhooks:
    """Registers, arms and delivers the webhooks of async jobs; one per app (``start``/``aclose``)."""

    def __init__(
        self,
        store: WebhookStore,
        *,
        signer: WebhookSigner | None,
        policy: UrlPolicy,
        config: WebhookConfig | None = None,
        metrics: WebhookMetrics | None = None,
        lookup: JobLookup | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.store = store
        self.signer = signer
        self.policy = policy
        self.config = config or WebhookConfig()
        self.metrics = metrics
        self.lookup = lookup
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._worker: asyncio.Task[None] | None = None
        self._attempts: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_ATTEMPTS)
        self._wake = asyncio.Event()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        store: WebhookStore,
        *,
        metrics: WebhookMetrics | None = None,
        lookup: JobLookup | None = None,
    ) -> Webhooks:
        """Built at start-up: a bad secret or allowlist is a ``ConfigError``; neither set: webhooks off."""
        try:
            allowlist = HostAllowlist.parse(settings.webhook_allowed_hosts)
        except ValueError as exc:
            raise ConfigError(
                f"PARLEY_WEBHOOK_ALLOWED_HOSTS: {exc}", "list host names, IPs or CIDRs"
            ) from None
        secret = settings.webhook_secret or None
        if allowlist and secret is None:
            raise ConfigError(
                "PARLEY_WEBHOOK_ALLOWED_HOSTS is set but PARLEY_WEBHOOK_SECRET is not",
                "set a secret (whsec_ + base64 of 24-64 random bytes) to sign webhooks",
            )
        config = WebhookConfig(
            max_attempts=settings.webhook_max_attempts,
            timeout_ms=settings.webhook_timeout_ms,
            backoff_base_ms=settings.webhook_backoff_base_ms,
            backoff_max_ms=max(settings.webhook_backoff_max_ms, settings.webhook_backoff_base_ms),
            poll_ms=settings.webhook_poll_ms,
            record_ttl_ms=max(settings.session_ttl_ms, keys.WEBHOOK_RECORD_TTL_MS),
        )
        signer = WebhookSigner(secret) if secret is not None else None
        return cls(
            store, signer=signer, policy=UrlPolicy(allowlist), config=config, metrics=metrics, lookup=lookup
        )

    @property
    def enabled(self) -> bool:
        return self.signer is not None and bool(self.policy.allowlist)

    # ------------------------------------------------------------ what the HTTP layer calls

    async def check_url(self, url: str) -> None:
        """Refuse (``InvalidMessage``: a 400 at job creation) a URL no attempt could be sent to."""
        if self.signer is None:
            raise InvalidMessage("webhooks are off on this server (PARLEY_WEBHOOK_SECRET is not set)")
        try:
            async with asyncio.timeout(self.config.timeout_ms / 1000):
                await self.policy.target(url)
        except TimeoutError:
            raise UpstreamUnavailable(
                "could not resolve the webhook_url host in time", retry_after_ms=1000
            ) from None

    async def register(self, session_id: str, response_id: str, url: str) -> Delivery:
        """A job's delivery record, waiting for the job; the same job again gets the same record."""
        await self.check_url(url)
        now = _now_ms()
        record = Delivery(delivery_id(response_id), session_id, response_id, url, WebhookState.WAITING, now)
        created = await self.store.webhook_create(
            record.id, record.fields(), due_ms=now + self.config.recheck_ms, ttl_ms=self.config.record_ttl_ms
        )
        if created:
            return record
        existing = await self.store.webhook_get(record.id)
        return Delivery.of(existing) if existing else record

    async def job_finished(self, job: Job, finished_ms: int | None = None) -> bool:
        """Arm the job's delivery with its result, due now; False if it has none or is armed already.

        Called by whatever ends a job (its generation; the reaper for a dead one); the worker's
        re-check of waiting records arms the ones whose process died before calling this.
        """
        if not job.status.terminal:
            raise ValueError(f"job {job.response_id} is {job.status.value}, not finished")
        now = _now_ms()
        body = payload(job, finished_ms if finished_ms is not None else now)
        armed = await self.store.webhook_arm(
            delivery_id(job.response_id),
            {"state": WebhookState.PENDING.value, "body": body},
            due_ms=now,
            from_state=WebhookState.WAITING.value,
        )
        if armed:
            self._wake.set()
        return armed

    async def status(self, response_id: str) -> WebhookStatus | None:
        """The job's webhook for its poll, or None when the job named none."""
        fields = await self.store.webhook_get(delivery_id(response_id))
        return Delivery.of(fields).status() if fields else None

    # ------------------------------------------------------------ the worker

    async def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.create_task(self._run(), name="parley-webhooks")

    async def aclose(self) -> None:
        """Stop claiming; attempts in flight are cancelled (their claims expire, another worker retries)."""
        tasks = [t for t in (self._worker, *self._attempts) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._worker = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def run_due(self) -> int:
        """Claim what is due now and run it to the end; the number of records handled (tests, tools)."""
        claims = await self.store.webhook_claim(
            _now_ms(), self.config.claim_lease_ms, self.config.claim_batch
        )
        await asyncio.gather(*(self._handle(claim) for claim in claims))
        return len(claims)

    async def _run(self) -> None:
        while True:
            try:
                claims = await self.store.webhook_claim(
                    _now_ms(), self.config.claim_lease_ms, self.config.claim_batch
                )
            except ParleyError as exc:  # the store is down: try again at the next poll
                log.warning("webhook claim failed: %s", exc.message)
                claims = []
            for claim in claims:
                await self._slots.acquire()
                task = asyncio.create_task(
                    self._handle_in_slot(claim), name=f"parley-webhook-{claim.delivery_id}"
                )
                self._attempts.add(task)
                task.add_done_callback(self._attempts.discard)
            if claims and len(claims) == self.config.claim_batch:
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.poll_ms / 1000):
                    await self._wake.wait()

    async def _handle_in_slot(self, claim: WebhookClaim) -> None:
        try:
            await self._handle(claim)
        except ParleyError as exc:  # the store is down: the claim expires and the delivery is retried
            log.warning("webhook delivery %s: %s", claim.delivery_id, exc.message)
        except Exception:  # a bug must not stop the worker: the claim expires and is retried
            log.exception("webhook delivery %s failed unexpectedly", claim.delivery_id)
        finally:
            self._slots.release()

    async def _handle(self, claim: WebhookClaim) -> None:
        try:
            record = Delivery.of(claim.fields)
        except (KeyError, ValueError):
            log.error("unreadable webhook record %s: dropped", claim.delivery_id)
            await self.store.webhook_settle(claim.delivery_id, {}, due_ms=None, fence=claim.fence)
            return
        if record.state is WebhookState.WAITING:
            await self._recheck(record, claim.fence)
        elif record.state is WebhookState.PENDING:
            await self._attempt(record, claim.fence)
        else:  # finished records leave the schedule when settled; never send one again
            await self.store.webhook_settle(record.id, {}, due_ms=None, fence=claim.fence)

    async def _recheck(self, record: Delivery, fence: int) -> None:
        """A waiting delivery: arm it if its job ended meanwhile, give up if the job is gone."""
        if self.lookup is None:
            await self.store.webhook_settle(
                record.id, {}, due_ms=_now_ms() + self.config.recheck_ms, fence=fence
            )
            return
        job = await self.lookup(record.session_id, record.response_id)
        if job is None:
            failed = record.to(WebhookState.FAILED, last_error="the job is gone")
            await self.store.webhook_settle(record.id, failed.fields(), due_ms=None, fence=fence)
            self._count_delivery("failed")
        elif job.status.terminal:
            await self.job_finished(job)
        else:
            await self.store.webhook_settle(
                record.id, {}, due_ms=_now_ms() + self.config.recheck_ms, fence=fence
            )

    async def _attempt(self, record: Delivery, fence: int) -> None:
        """One POST; then delivered, failed for good, or pending again after a backoff."""
        status, error = await self._send(record)
        now = _now_ms()
        cfg = self.config
        if error is not None and error.startswith("refused"):
            done = record.to(WebhookState.FAILED, last_status=None, last_error=error)
            await self.store.webhook_settle(record.id, done.fields(), due_ms=None, fence=fence)
            self._count_failure("refused")
            self._count_delivery("failed")
            log.warning("webhook %s not sent: %s", record.id, error)
            return
        attempts = record.attempts + 1
        if self.metrics is not None:
            self.metrics.attempts.inc()
        if status is not None and 200 <= status < 300:
            done = record.to(
                WebhookState.DELIVERED,
                attempts=attempts,
                last_status=status,
                last_error=None,
                delivered_at_ms=now,
            )
            await self.store.webhook_settle(record.id, done.fields(), due_ms=None, fence=fence)
            self._count_delivery("delivered")
            return
        self._count_failure("status" if status is not None else (error or "network").split(":")[0])
        last_error = error if status is None else f"HTTP {status}"
        if attempts >= cfg.max_attempts:
            done = record.to(
                WebhookState.FAILED, attempts=attempts, last_status=status, last_error=last_error
            )
            await self.store.webhook_settle(record.id, done.fields(), due_ms=None, fence=fence)
            self._count_delivery("failed")
            log.warning("webhook %s failed after %d attempts (%s)", record.id, attempts, last_error)
            return
        retry = record.to(WebhookState.PENDING, attempts=attempts, last_status=status, last_error=last_error)
        wait = backoff_ms(attempts, cfg.backoff_base_ms, cfg.backoff_max_ms, cfg.rand)
        await self.store.webhook_settle(record.id, retry.fields(), due_ms=now + wait, fence=fence)

    async def _send(self, record: Delivery) -> tuple[int | None, str | None]:
        """POST the body once: (status, None), or (None, why) for a refusal, timeout or network error."""
        assert self.signer is not None  # nothing registers while webhooks are off
        try:
            async with asyncio.timeout(self.config.timeout_ms / 1000):
                try:
                    target = await self.policy.target(record.url)
                except InvalidMessage as exc:
                    return None, f"refused: {exc.message}"
                body = record.body.encode()
                headers = {
                    "host": target.host_header,
                    "content-type": "application/json",
                    "user-agent": USER_AGENT,
                    **self.signer.headers(record.id, int(time.time()), body),
                }
                extensions = {"sni_hostname": target.sni} if target.sni else {}
                # streamed and never read: a receiver cannot make us hold a large answer
                request = self._http().build_request(
                    "POST", target.url, content=body, headers=headers, extensions=extensions
                )
                response = await self._http().send(request, stream=True)
                await response.aclose()
                return response.status_code, None
        except TimeoutError:
            return None, "timeout"
        except httpx.HTTPError as exc:
            return None, f"network: {type(exc).__name__}"

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            # never a proxy from the environment (it would be another host) and never a redirect
            # (its target is not checked): the request goes to the checked address or nowhere
            self._client = httpx.AsyncClient(
                transport=self._transport, trust_env=False, follow_redirects=False, timeout=None
            )
        return self._client

    def _count_delivery(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.deliveries.labels(outcome).inc()

    def _count_failure(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.failures.labels(reason).inc()
