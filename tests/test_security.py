"""Security over real sockets: tokens, tenant isolation, origins, limits, rate limits, slow consumers."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import websockets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection, connect

from parley.client import ParleyClient, ParleyClosed
from parley.server.auth import Authenticator
from parley.server.config_error import ConfigError
from parley.server.settings import Settings

from .support import ROOT, live_server, reference_reply

SECRET = "s3cret-for-tests-only-0123456789abcdef"  # 38 bytes


def mint(
    secret: Any = SECRET,
    *,
    sub: str | None = "u1",
    tenant: str | None = "t1",
    exp_in: float | None = 300,
    **kw: Any,
) -> str:
    """A signed token; pass None to leave a required claim out."""
    claims: dict[str, Any] = dict(kw)
    if sub is not None:
        claims["sub"] = sub
    if tenant is not None:
        claims["tenant"] = tenant
    if exp_in is not None:
        claims["exp"] = int(time.time() + exp_in)
    alg = claims.pop("alg", "HS256" if isinstance(secret, str | bytes) else "RS256")
    return jwt.encode(claims, secret, algorithm=alg)


def hs256_with(key: bytes, claims: dict[str, Any]) -> str:
    """An HS256 token signed with arbitrary bytes (PyJWT refuses a PEM as an HMAC key; attackers do not)."""
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + b64(json.dumps(claims).encode())
    return head + "." + b64(hmac.new(key, head.encode(), hashlib.sha256).digest())


def other_algorithm() -> str:
    """A token correctly signed with the server's secret, but with HS512 instead of HS256."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyJWT warns that the key is short for HS512
        return mint(SECRET, alg="HS512")


async def small_window_client(live: Any) -> ClientConnection:
    """A client on a 4 KiB receive window that buffers one message: it fills quickly when it stops reading."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", live.port))
    sock.setblocking(False)
    return await connect(
        live.url, sock=sock, subprotocols=["parley.v1"], max_queue=1, ping_interval=None, max_size=None
    )  # type: ignore[list-item]


async def until(predicate: Any, timeout: float = 10.0) -> None:  # noqa: ASYNC109
    """Bounded polling for a server-side condition (a readiness check, never used to order events)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def public_pem(key: rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


async def hello_answer(url: str, **hello: Any) -> tuple[dict[str, Any], int | None]:
    """Send one hello; return the first answer and the close code that followed it (None if still open)."""
    ws = await connect(url, subprotocols=["parley.v1"], compression=None, max_queue=None)  # type: ignore[list-item]
    await ws.send(json.dumps({"type": "hello", "protocol": "parley.v1", **hello}))
    first = json.loads(await asyncio.wait_for(ws.recv(), 10))
    if first["type"] == "session.ready":
        await ws.close()
        return first, None
    with pytest.raises(websockets.ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 10)
    return first, ws.close_code


@pytest.fixture
async def authed() -> Any:
    """A memory-store server with HS256 auth on."""
    async with live_server(
        store="memory://", auth_jwt_secret=SECRET, echo_tokens_per_second=0, echo_reply_tokens=20
    ) as live:
        yield live


# ------------------------------------------------------------------ authentication


async def test_valid_token_opens_a_session_owned_by_its_tenant_and_user(authed: Any) -> None:
    """A valid HS256 token opens a session owned by (tenant claim, sub claim)."""
    async with ParleyClient(authed.url, token=mint(sub="alice", tenant="acme")) as c:
        assert (await c.ask("hi")).finish_reason == "stop"
    rec = await authed.state.store.get_session(c.session_id)
    assert (rec.tenant, rec.user) == ("acme", "alice")


@pytest.mark.parametrize(
    "token",
    [
        None,
        "",
        "not-a-jwt",
        mint("another-secret-of-at-least-32-bytes!!"),
        mint(exp_in=-120),
        mint(tenant=None),
        mint(sub=None),
        mint(exp_in=None),
        mint(tenant=""),
        jwt.encode({"sub": "u1", "tenant": "t1", "exp": int(time.time()) + 300}, None, algorithm="none"),
        other_algorithm(),
    ],
    ids=[
        "missing",
        "empty",
        "garbage",
        "forged",
        "expired",
        "no-tenant",
        "no-sub",
        "no-exp",
        "empty-tenant",
        "alg-none",
        "other-alg",
    ],
)
async def test_bad_token_is_unauthorized_and_closes_4001(authed: Any, token: str | None) -> None:
    """Missing, malformed, forged, expired, claim-less or wrong-algorithm tokens: unauthorized, 4001."""
    hello = {} if token is None else {"token": token}
    err, code = await hello_answer(authed.url, **hello)
    assert err["type"] == "error" and err["code"] == "unauthorized" and err["retryable"] is False
    assert code == 4001
    if token:
        assert token not in json.dumps(err)


async def test_expiry_within_leeway_is_accepted() -> None:
    """A token expired less than the leeway ago is still accepted (clock skew), one past it is not."""
    async with live_server(store="memory://", auth_jwt_secret=SECRET, auth_leeway_s=30) as live:
        ready, code = await hello_answer(live.url, token=mint(exp_in=-10))
        assert ready["type"] == "session.ready" and code is None
        err, code = await hello_answer(live.url, token=mint(exp_in=-45))
        assert err["code"] == "unauthorized" and code == 4001


@pytest.mark.parametrize("as_path", [False, True], ids=["pem-text", "pem-file"])
async def test_rs256_public_key_verifies_tokens(tmp_path: Path, as_path: bool) -> None:
    """With an RS256 public key (PEM text or a file path) tokens of its private key pass, others fail."""
    key, other = rsa_key(), rsa_key()
    pem = public_pem(key)
    setting = pem
    if as_path:
        (tmp_path / "key.pem").write_text(pem)
        setting = str(tmp_path / "key.pem")
    async with live_server(store="memory://", auth_jwt_public_key=setting) as live:
        ready, _ = await hello_answer(live.url, token=mint(key, tenant="t9"))
        assert ready["type"] == "session.ready"
        confused = hs256_with(pem.encode(), {"sub": "u1", "tenant": "t1", "exp": int(time.time()) + 300})
        for bad in (mint(other), confused):  # another key; HS256 "signed" with the public key itself
            err, code = await hello_answer(live.url, token=bad)
            assert (err["code"], code) == ("unauthorized", 4001)


def test_weak_or_ambiguous_auth_settings_are_refused_at_startup() -> None:
    """A secret under 32 bytes, both keys at once, a short RSA key or leeway over 30 s never start."""
    with pytest.raises(ValidationError, match="at least 32 bytes"):
        Settings(auth_jwt_secret="x" * 31)
    with pytest.raises(ValidationError, match="not both"):
        Settings(auth_jwt_secret=SECRET, auth_jwt_public_key=public_pem(rsa_key()))
    with pytest.raises(ValidationError):
        Settings(auth_leeway_s=31)
    with pytest.raises(ConfigError, match="2048"):
        Authenticator(Settings(auth_jwt_public_key=public_pem(rsa_key(1024))))
    out = subprocess.run(
        [sys.executable, "-m", "parley.server.cli", "serve"],
        env={"PATH": "/usr/bin:/bin", "PARLEY_AUTH_JWT_SECRET": "short"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "at least 32 bytes" in out.stderr


async def test_tenant_comes_from_the_token_never_from_metadata(authed: Any) -> None:
    """hello.metadata.tenant_id and user_id are ignored when auth is on."""
    token = mint(sub="bob", tenant="acme")
    async with ParleyClient(authed.url, token=token, metadata={"tenant_id": "evil", "user_id": "root"}) as c:
        pass
    rec = await authed.state.store.get_session(c.session_id)
    assert (rec.tenant, rec.user) == ("acme", "bob")


@pytest.mark.parametrize("auth_on", [True, False], ids=["auth-on", "auth-off"])
@pytest.mark.parametrize("param", ["token", "access_token", "jwt"])
async def test_token_in_the_query_string_is_refused_before_accept(auth_on: bool, param: str) -> None:
    """A handshake carrying a token in the URL is refused with HTTP 401, auth on or off."""
    extra = {"auth_jwt_secret": SECRET} if auth_on else {}
    async with live_server(store="memory://", **extra) as live:
        with pytest.raises(websockets.InvalidStatus) as info:
            await connect(f"{live.url}?{param}={mint()}", subprotocols=["parley.v1"])  # type: ignore[list-item]
        assert info.value.response.status_code == 401
        assert json.loads(info.value.response.body)["code"] == "unauthorized"


async def test_expired_token_closes_the_connection_within_one_revalidation_interval() -> None:
    """An open connection whose token expires gets unauthorized, then close 4001, within one interval."""
    async with live_server(
        store="memory://", auth_jwt_secret=SECRET, auth_leeway_s=0, auth_revalidate_ms=300
    ) as live:
        exp = int(time.time()) + 2
        token = jwt.encode({"sub": "u1", "tenant": "t1", "exp": exp}, SECRET, algorithm="HS256")
        ws = await connect(live.url, subprotocols=["parley.v1"])  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "hello", "protocol": "parley.v1", "token": token}))
        assert json.loads(await ws.recv())["type"] == "session.ready"
        events = []
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                events.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
        closed_at = time.time()
        assert ws.close_code == 4001
        assert events[-1]["type"] == "error" and events[-1]["code"] == "unauthorized"
        assert exp <= closed_at <= exp + 0.3 + 1.0  # the interval, plus scheduling slack


# ------------------------------------------------------------------ tenant isolation


async def test_another_tenants_session_looks_like_no_session(server_factory: Any) -> None:
    """Right session id and resume token under another tenant or user: the same answer as a made-up id."""
    async with server_factory(auth_jwt_secret=SECRET) as live:
        async with ParleyClient(live.url, token=mint(sub="u1", tenant="acme")) as owner:
            await owner.ask("private")
        sid, tok = owner.session_id, owner.resume_token
        answers = []
        for token, session_id in (
            (mint(sub="u1", tenant="other"), sid),
            (mint(sub="u2", tenant="acme"), sid),
            (mint(sub="u1", tenant="acme"), "s_made_up"),
        ):
            answers.append(await hello_answer(live.url, token=token, session_id=session_id, resume_token=tok))
        assert answers[0] == answers[1] == answers[2]
        err, code = answers[0]
        assert (err["code"], code) == ("session_not_found", 4004)
        ready, _ = await hello_answer(
            live.url, token=mint(sub="u1", tenant="acme"), session_id=sid, resume_token=tok
        )
        assert ready["resumed"] is True


async def test_feedback_and_cancel_of_another_sessions_response_look_like_unknown(server: Any) -> None:
    """Naming a response of another session in feedback or cancel gets the same error as a made-up id."""
    async with ParleyClient(server.url) as a, ParleyClient(server.url) as b:
        rid = (await a.ask("mine")).response_id
        answers = []
        for target in (rid, "r_made_up"):
            await b.feedback(target, "down")
            fb = await b.next_event("error", "feedback.recorded")
            await b.cancel(target)
            cancel = await b.next_event("error")
            answers.append((fb["code"], fb["message"], cancel["code"], cancel["message"]))
        assert answers[0] == answers[1]
        assert answers[0][0] == answers[0][2] == "invalid_message"
        assert rid not in (await server.state.store.feedback(b.session_id))
        assert await server.state.store.feedback(a.session_id) == {}


# ------------------------------------------------------------------ origin and transport limits


@pytest.mark.parametrize(
    "origin",
    [
        "https://app.example.com.evil.com",
        "https://evil-app.example.com",
        "http://app.example.com",  # scheme differs
        "https://app.example.com:8443",  # port differs
        "null",
        "https://evil.example",
    ],
)
async def test_look_alike_origins_are_refused_with_403(origin: str) -> None:
    """Only exact allowed origins pass: look-alikes, other schemes or ports and null get HTTP 403."""
    async with live_server(store="memory://", allowed_origins="https://app.example.com") as live:
        with pytest.raises(websockets.InvalidStatus) as info:
            await connect(live.url, origin=origin)  # type: ignore[arg-type]
        assert info.value.response.status_code == 403
        async with ParleyClient(live.url, origin="https://app.example.com") as ok:
            assert ok.session_id


async def test_compression_is_off_by_default(server: Any) -> None:
    """A client offering permessage-deflate gets no compression unless the server enables it."""
    async with connect(server.url, subprotocols=["parley.v1"], compression="deflate") as ws:  # type: ignore[list-item]
        assert "permessage-deflate" not in (ws.response.headers.get("Sec-WebSocket-Extensions") or "")


async def test_history_is_capped_at_history_max_turns(server_factory: Any) -> None:
    """The stored conversation keeps only the newest history_max_turns turns."""
    async with server_factory(history_max_turns=4) as live, ParleyClient(live.url) as c:
        for i in range(3):
            await c.ask(f"turn {i}")
        turns = await live.state.store.history(c.session_id)
    assert [t["role"] for t in turns] == ["user", "assistant"] * 2
    assert turns[0]["content"] == "turn 1"


# ------------------------------------------------------------------ per-user limits and rate limits


async def test_connections_per_user_are_capped_across_the_user(server_factory: Any) -> None:
    """A user's connection over the cap gets rate_limited and close 4029; closing one frees a slot."""
    async with server_factory(auth_jwt_secret=SECRET, max_connections_per_user=2) as live:
        token = mint(sub="u1")
        first = ParleyClient(live.url, token=token)
        await first.connect()
        async with ParleyClient(live.url, token=token):
            err, code = await hello_answer(live.url, token=token)
            assert (err["code"], err["retryable"], code) == ("rate_limited", True, 4029)
            assert err["retry_after_ms"] > 0
            other, _ = await hello_answer(live.url, token=mint(sub="u2"))  # another user is unaffected
            assert other["type"] == "session.ready"
            await first.close()
            await until(lambda: len(live.state.connections) == 1)  # the server has released it
            again, _ = await hello_answer(live.url, token=token)
            assert again["type"] == "session.ready"


async def test_new_sessions_per_user_are_capped_but_resume_is_not(server_factory: Any) -> None:
    """Past max_sessions_per_user a new session is rate_limited (4029); resuming an existing one works."""
    async with server_factory(auth_jwt_secret=SECRET, max_sessions_per_user=2) as live:
        token = mint(sub="u1")
        opened = [await hello_answer(live.url, token=token) for _ in range(2)]
        err, code = await hello_answer(live.url, token=token)
        assert (err["code"], code) == ("rate_limited", 4029)
        assert err["retry_after_ms"] > 60_000  # the oldest session leaves the window after one session TTL
        ready, _ = opened[0]
        again, _ = await hello_answer(
            live.url, token=token, session_id=ready["session_id"], resume_token=ready["resume_token"]
        )
        assert again["resumed"] is True


async def test_user_message_rate_limit_answers_rate_limited_and_keeps_the_connection(
    server_factory: Any,
) -> None:
    """Over messages per minute: rate_limited with retry_after_ms, the connection stays usable."""
    async with (
        server_factory(auth_jwt_secret=SECRET, user_messages_per_minute=2) as live,
        ParleyClient(live.url, token=mint()) as c,
    ):
        await c.ask("one")
        await c.ask("two")
        await c.send("three", client_msg_id="c3")
        err = await c.next_event("error")
        assert (err["code"], err["retryable"]) == ("rate_limited", True)
        assert err["ref"] == {"type": "message.send", "client_msg_id": "c3"}
        assert 1 <= err["retry_after_ms"] <= 30_000  # 2 per minute: one every 30 s
        assert "user" in err["message"]
        await c.ping("still-open")
        assert (await c.next_event("pong"))["nonce"] == "still-open"


async def test_tenant_message_rate_limit_spans_its_users(server_factory: Any) -> None:
    """The tenant bucket is shared by its users; another tenant is unaffected."""
    async with server_factory(
        auth_jwt_secret=SECRET, user_messages_per_minute=10, tenant_messages_per_minute=3
    ) as live:
        async with (
            ParleyClient(live.url, token=mint(sub="u1", tenant="acme")) as u1,
            ParleyClient(live.url, token=mint(sub="u2", tenant="acme")) as u2,
            ParleyClient(live.url, token=mint(sub="u3", tenant="other")) as u3,
        ):
            await u1.ask("a")
            await u1.ask("b")
            await u2.ask("c")
            await u2.send("d")
            err = await u2.next_event("error")
            assert err["code"] == "rate_limited" and "tenant" in err["message"]
            assert (await u3.ask("e")).finish_reason == "stop"


async def test_generated_tokens_per_minute_are_limited(server_factory: Any) -> None:
    """Tokens are charged when a reply ends; once a user's budget is spent the next message waits."""
    async with (
        server_factory(auth_jwt_secret=SECRET, user_tokens_per_minute=30, echo_reply_tokens=20) as live,
        ParleyClient(live.url, token=mint()) as c,
    ):
        await c.ask("first")  # 30 -> 10 left
        await c.ask("second")  # allowed (budget left), ends in debt: -10
        await c.send("third")
        err = await c.next_event("error")
        assert err["code"] == "rate_limited" and "tokens" in err["message"]
        assert 20_000 <= err["retry_after_ms"] <= 22_000  # 11 tokens at 30 per minute
        async with ParleyClient(live.url, token=mint(sub="u2")) as other:
            assert (await other.ask("fine")).finish_reason == "stop"


async def test_sustained_abuse_closes_with_4029(server_factory: Any) -> None:
    """A client that keeps hitting the rate limit is closed with 4029 after abuse_strikes refusals."""
    async with (
        server_factory(auth_jwt_secret=SECRET, user_messages_per_minute=1, abuse_strikes=3) as live,
        ParleyClient(live.url, token=mint(), auto_resume=False) as c,
    ):
        await c.ask("allowed")
        codes = []
        for i in range(3):
            await c.send(f"spam {i}")
            codes.append((await c.next_event("error"))["code"])
        assert codes == ["rate_limited"] * 3
        with pytest.raises(ParleyClosed) as info:
            await c.next_event()
        assert info.value.code == 4029


async def test_limits_follow_the_claimed_identity_when_forced_on_without_auth(server_factory: Any) -> None:
    """identity_limits=on applies the limits to hello.metadata's tenant and user when auth is off."""
    async with server_factory(identity_limits="on", user_messages_per_minute=1) as live:
        async with ParleyClient(live.url, metadata={"user_id": "x"}) as c:
            await c.ask("one")
            await c.send("two")
            assert (await c.next_event("error"))["code"] == "rate_limited"
    async with server_factory(user_messages_per_minute=1) as live, ParleyClient(live.url) as c:
        await c.ask("one")  # auth off, default "auto": no identity, no identity limits
        assert (await c.ask("two")).finish_reason == "stop"


async def test_frames_per_minute_is_enforced_per_connection() -> None:
    """Frames past the per-connection budget get rate_limited (not handled); the connection stays open."""
    async with live_server(store="memory://", frames_per_minute=5) as live, ParleyClient(live.url) as c:
        for i in range(6):
            await c.ping(str(i))
        answers = [await c.next_event("pong", "error") for _ in range(6)]
        assert [a["type"] for a in answers] == ["pong"] * 5 + ["error"]
        assert answers[-1]["code"] == "rate_limited" and answers[-1]["retry_after_ms"] > 0


async def test_limiters_agree_on_every_backend(any_store_kind: str, request: pytest.FixtureRequest) -> None:
    """Memory, Redis and Redis Cluster limiters give the same answers for buckets, debt and caps."""
    from parley.server.ratelimit import open_limiter
    from parley.server.service import Principal

    from .conftest import store_url

    limiter = open_limiter(
        Settings(
            store=store_url(any_store_kind, request),
            identity_limits="on",
            user_messages_per_minute=2,
            tenant_messages_per_minute=3,
            user_tokens_per_minute=60,
            max_connections_per_user=1,
            max_sessions_per_user=1,
        )
    )
    assert limiter is not None
    await limiter.start()
    try:
        a, b = Principal("t{1}", "a:u"), Principal("t{1}", "b")  # ids that would break naive key layouts
        assert await limiter.take_message(a) is None
        assert await limiter.take_message(a) is None
        refused = await limiter.take_message(a)
        assert refused is not None and (refused.kind, refused.scope) == ("messages", "user")
        assert 25_000 <= refused.retry_after_ms <= 30_000
        assert await limiter.take_message(b) is None  # the tenant's third
        refused = await limiter.take_message(b)
        assert refused is not None and refused.scope == "tenant"
        c = Principal("t2", "c")
        await limiter.charge_tokens(c, 200)  # 60 - 200, floored at one window's worth of debt: -60
        refused = await limiter.take_message(c)
        assert refused is not None and (refused.kind, refused.scope) == ("tokens", "user")
        assert 60_000 <= refused.retry_after_ms <= 61_000
        assert await limiter.open_connection(c, "conn-1") is None
        assert await limiter.open_connection(c, "conn-1") is None  # the same connection again
        assert (await limiter.open_connection(c, "conn-2")) is not None
        await limiter.keep_connections([(c, "conn-1")])
        await limiter.close_connection(c, "conn-1")
        assert await limiter.open_connection(c, "conn-2") is None
        assert await limiter.new_session(c) is None
        assert (await limiter.new_session(c)) is not None
    finally:
        await limiter.close()


# ------------------------------------------------------------------ slow consumers


def tcp_send_buffer_max() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, ValueError, IndexError):
        return 4 * 1024 * 1024


async def test_client_that_never_reads_is_closed_4009_and_can_resume() -> None:
    """A client that stops reading is closed with 4009; the generation goes on; a resume gets the rest."""
    tokens = max(600_000, tcp_send_buffer_max() // 4)  # far more than the kernel buffers hold
    async with live_server(
        store="memory://",
        echo_tokens_per_second=0,
        echo_reply_tokens=tokens,
        send_timeout_ms=3000,
        log_max_len=1_000_000,  # keep the whole reply in the log, so the resume is a replay
    ) as live:
        ws = await small_window_client(live)
        await ws.send(json.dumps({"type": "hello", "protocol": "parley.v1"}))
        ready = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "message.send", "client_msg_id": "c1", "content": "flood me"}))
        await until(lambda: any(conn.slow for conn in live.state.connections), 60)  # reading nothing
        last_seq = 0
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                last_seq = json.loads(await ws.recv()).get("seq", last_seq)
        assert ws.close_code == 4009
        async with ParleyClient(
            live.url, session_id=ready["session_id"], resume_token=ready["resume_token"], last_seq=last_seq
        ) as again:
            assert again.ready is not None and again.ready["recovered"] is True
            done = await again.next_event("response.completed", timeout=60)
            assert again.gaps == 0
        assert done["finish_reason"] == "stop" and done["usage"]["output_tokens"] == tokens


async def test_client_that_pauses_reading_gets_every_event_in_order_once_it_reads_again() -> None:
    """Live events that meet a full socket wait for it to drain: a reader that pauses (under the send
    timeout) and reads again gets the whole reply, every seq once, in order."""
    tokens = max(200_000, tcp_send_buffer_max() // 8)
    async with live_server(
        store="memory://",
        echo_tokens_per_second=0,
        echo_reply_tokens=tokens,
        send_timeout_ms=60_000,
        log_max_len=1_000_000,
    ) as live:
        ws = await small_window_client(live)
        await ws.send(json.dumps({"type": "hello", "protocol": "parley.v1"}))
        json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "message.send", "client_msg_id": "c1", "content": "hold on"}))
        (conn,) = live.state.connections
        await until(lambda: conn.deadline.due is not None, 60)  # a write waits for the socket to drain
        seqs: list[int] = []
        text: list[str] = []
        while True:
            ev = json.loads(await ws.recv())
            seqs.append(ev["seq"])
            if ev["type"] == "response.delta":
                text.append(ev["text"])
            if ev["type"] == "response.completed":
                break
        await ws.close()
        assert seqs == list(range(seqs[0], seqs[-1] + 1)) and seqs[0] == 1
        assert ev["finish_reason"] == "stop" and ev["usage"]["output_tokens"] == tokens
        assert not conn.slow
    async with live_server(store="memory://", echo_tokens_per_second=0, echo_reply_tokens=tokens) as ref:
        expected, _ = await reference_reply(ref.url, "hold on")
    assert "".join(text) == expected


# ------------------------------------------------------------------ admin endpoints


async def test_admin_endpoints_need_their_tokens() -> None:
    """/v1/feedback is off without PARLEY_ADMIN_TOKEN, else needs it as bearer; /metrics too if set."""
    admin, scrape = "a" * 40, "m" * 20
    async with live_server(store="memory://") as live, httpx.AsyncClient(base_url=live.http) as http:
        assert (await http.get("/v1/feedback")).status_code == 404
        assert (await http.get("/metrics")).status_code == 200
    async with (
        live_server(store="memory://", admin_token=admin, metrics_token=scrape) as live,
        httpx.AsyncClient(base_url=live.http) as http,
    ):
        assert (await http.get("/v1/feedback")).status_code == 401
        assert (await http.get("/v1/feedback", headers={"Authorization": "Bearer wrong"})).status_code == 401
        assert (
            await http.get("/v1/feedback", headers={"Authorization": f"Bearer {admin}"})
        ).status_code == 200
        assert (await http.get("/metrics")).status_code == 401
        assert (await http.get("/metrics", headers={"Authorization": f"Bearer {scrape}"})).status_code == 200
    with pytest.raises(ValidationError):
        Settings(admin_token="short")
