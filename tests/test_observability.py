"""Operators' view over real sockets: Prometheus metrics, JSON logs, traceparent, feedback export."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import websockets
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from parley.client import ParleyClient, ParleyClosed
from parley.server.metrics import GAP_BUCKETS, LoopHistogram

from .support import ROOT, ServerProcess

SECRET = "observability-secret-0123456789abcdef"
ADMIN = "admin-token-for-tests-0123456789abcdef"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01"


async def scrape(http: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, keyed by (name, sorted labels)."""
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{http}/metrics")).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_are_exposed_and_move(server: Any, store_kind: str) -> None:
    """/metrics has parley_ connections, sessions, generations, ttft, gaps, tokens, errors, resumes, Redis."""
    before = await scrape(server.http)
    async with ParleyClient(server.url) as c:
        during = await scrape(server.http)
        await c.ask("measure me")
        await c.send_raw("not json")
        await c.next_event("error")
    async with ParleyClient(
        server.url, session_id=c.session_id, resume_token=c.resume_token, last_seq=2
    ) as r:
        await r.next_event("response.completed")
    with pytest.raises(ParleyClosed):
        await ParleyClient(server.url, session_id=c.session_id, resume_token="wrong").connect()
    after = await scrape(server.http)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # Parley's own metrics are parley_*; the standard process_* and python_info come from the client library
    assert all(name.startswith(("parley_", "process_", "python_info")) for name, _ in after)
    assert value(after, "parley_build_info", version=version("parley"), protocol="parley.v1") == 1
    assert value(after, "process_resident_memory_bytes") > 0
    assert value(during, "parley_connections") >= 1
    assert moved("parley_connections_opened_total") >= 3
    assert moved("parley_sessions_created_total") == 1
    assert moved("parley_responses_total", finish_reason="stop") == 1
    assert moved("parley_tokens_total", provider="echo", direction="output") == 20
    assert moved("parley_ttft_seconds_count", provider="echo") == 1
    assert moved("parley_inter_token_seconds_count", provider="echo") == 19
    assert moved("parley_errors_total", code="invalid_message") == 1
    assert moved("parley_errors_total", code="session_not_found") == 1
    assert moved("parley_resumes_total", outcome="replayed") == 1
    assert moved("parley_resumes_total", outcome="not_found") == 1
    assert moved("parley_connection_closes_total", code="4004") == 1
    assert ("parley_generations_running", ()) in after and ("parley_sessions_active", ()) in after
    if store_kind == "redis":
        assert moved("parley_redis_latency_seconds_count", op="accept") >= 1
        assert moved("parley_redis_latency_seconds_count", op="append_deltas") >= 1


@pytest.mark.parametrize("where", ["header", "metadata"])
async def test_traceparent_is_honoured(server: Any, where: str) -> None:
    """A W3C traceparent (header or hello.metadata) becomes the response's trace_id."""
    headers = {"traceparent": TRACEPARENT} if where == "header" else {}
    metadata = {"traceparent": TRACEPARENT} if where == "metadata" else {}
    async with connect(server.url, subprotocols=["parley.v1"], additional_headers=headers) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "hello", "protocol": "parley.v1", "metadata": metadata}))
        assert json.loads(await ws.recv())["type"] == "session.ready"
        await ws.send(json.dumps({"type": "message.send", "client_msg_id": "c1", "content": "trace me"}))
        events = []
        while not events or events[-1]["type"] != "response.completed":
            events.append(json.loads(await ws.recv()))
    started = next(e for e in events if e["type"] == "response.started")
    assert started["trace_id"] == TRACE


async def until_in_log(proc: ServerProcess, *needles: str, timeout: float = 20) -> str:  # noqa: ASYNC109
    """Bounded polling of the server's log file until lines containing every needle were written."""
    deadline = time.monotonic() + timeout
    while True:
        text = proc.log()
        if all(needle in text for needle in needles):
            return text
        assert time.monotonic() < deadline, f"{needles!r} never all logged:\n{text}"
        await asyncio.sleep(0.05)


async def test_logs_are_json_with_ids_and_never_text_or_tokens(tmp_path: Path) -> None:
    """Every log line is JSON; lines carry trace/session/response ids; no token or message text appears;
    handshake chatter (open, accepted) is left out while refusals are logged."""
    proc = ServerProcess(
        {"PARLEY_STORE": "memory://", "PARLEY_AUTH_JWT_SECRET": SECRET, "PARLEY_ECHO_TOKENS_PER_SECOND": "0"}
    )
    proc.start()
    try:
        token = jwt.encode({"sub": "u-log", "tenant": "t-log", "exp": int(time.time()) + 300}, SECRET)
        secret_text = "zanzibar-quokka-7731 is my password"
        async with connect(
            proc.url,
            subprotocols=["parley.v1"],  # type: ignore[list-item]
            additional_headers={"traceparent": TRACEPARENT},
        ) as ws:
            await ws.send(json.dumps({"type": "hello", "protocol": "parley.v1", "token": token}))
            ready = json.loads(await ws.recv())
            await ws.send(json.dumps({"type": "message.send", "client_msg_id": "c1", "content": secret_text}))
            reply, rid = "", ""
            while (event := json.loads(await ws.recv()))["type"] != "response.completed":
                if event["type"] == "response.delta":
                    reply += event["text"]
                    rid = event["response_id"]
        forged = jwt.encode({"sub": "x", "tenant": "y", "exp": int(time.time()) + 300}, "f" * 40)
        with pytest.raises(ParleyClosed):
            await ParleyClient(proc.url, token=forged).connect()
        query_token = jwt.encode({"sub": "q", "tenant": "q", "exp": int(time.time()) + 300}, SECRET)
        with pytest.raises(websockets.InvalidStatus):
            await connect(f"{proc.url}?token={query_token}")
        # the refusal's line may be written after the client saw the 401: wait for it too
        text = await until_in_log(proc, '"response finished"', '[redacted]\\" 401')
    finally:
        proc.stop(signal.SIGKILL)
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]  # every line parses
    assert all({"ts", "level", "logger", "msg"} <= set(line) for line in lines)
    opened = [line for line in lines if line["msg"] == "session ready"]
    assert opened and opened[0]["trace_id"] == TRACE and opened[0]["session_id"] == ready["session_id"]
    assert (opened[0]["tenant"], opened[0]["user"]) == ("t-log", "u-log")
    finished = next(line for line in lines if line["msg"] == "response finished")
    assert finished["response_id"] == rid and finished["session_id"] == ready["session_id"]
    assert finished["trace_id"] == TRACE and finished["output_tokens"] == 60
    for secret in (token, forged, query_token, secret_text, "zanzibar", reply.strip()):
        assert secret not in text
    assert "Traceback" not in text
    assert not [line for line in lines if line["msg"] == "connection open" or "[accepted]" in line["msg"]]
    assert [line for line in lines if line["msg"].endswith('"WebSocket /v1/ws?[redacted]" 401')]


def test_auth_off_is_announced_loudly_at_startup() -> None:
    """Without a JWT key the server starts, and its first log lines warn that auth is off."""
    proc = ServerProcess({"PARLEY_STORE": "memory://"})
    proc.start()
    try:
        warnings = [json.loads(line) for line in proc.log().splitlines() if "AUTH IS OFF" in line]
    finally:
        proc.stop(signal.SIGKILL)
    assert warnings and warnings[0]["level"] == "warning"


async def rated_session(url: str, tenant: str, content: str, rating: str) -> tuple[str, str]:
    async with ParleyClient(url, metadata={"tenant_id": tenant, "user_id": f"user-{tenant}"}) as c:
        reply = await c.ask(content)
        await c.feedback(reply.response_id, rating, comment="because", tags=["t"])
        await c.next_event("feedback.recorded")
        return c.session_id or "", reply.response_id


async def test_feedback_endpoint_exports_ratings(server_factory: Any) -> None:
    """GET /v1/feedback (admin token) lists ratings since a time as JSON lines, with text only if asked."""
    async with server_factory(admin_token=ADMIN) as live:
        start = int(time.time() * 1000)
        sid_a, rid_a = await rated_session(live.url, "acme", "first question", "up")
        sid_b, rid_b = await rated_session(live.url, "globex", "second question", "down")
        auth = {"Authorization": f"Bearer {ADMIN}"}
        async with httpx.AsyncClient(base_url=live.http, headers=auth) as http:
            resp = await http.get("/v1/feedback", params={"since": start})
            assert resp.headers["content-type"].startswith("application/x-ndjson")
            rows = [json.loads(line) for line in resp.text.splitlines()]
            assert {(r["session_id"], r["response_id"], r["rating"]) for r in rows} == {
                (sid_a, rid_a, "up"),
                (sid_b, rid_b, "down"),
            }
            row = next(r for r in rows if r["response_id"] == rid_a)
            assert (row["tenant"], row["user"], row["comment"], row["tags"]) == (
                "acme",
                "user-acme",
                "because",
                ["t"],
            )
            assert "prompt" not in row and "response" not in row
            texts = (await http.get("/v1/feedback", params={"since": "1h", "include_text": "true"})).text
            full = {json.loads(line)["response_id"]: json.loads(line) for line in texts.splitlines()}
            assert full[rid_a]["prompt"] == "first question" and full[rid_a]["response"].startswith("Echo")
            later = await http.get("/v1/feedback", params={"since": int(time.time() * 1000) + 60_000})
            assert later.text == ""
            as_json = (await http.get("/v1/feedback", params={"since": start, "format": "json"})).json()
            assert len(as_json) == 2
            assert (await http.get("/v1/feedback", params={"since": "yesterday-ish"})).status_code == 400


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """``parley`` as a child process, awaited without blocking the in-process server."""
    import os

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "parley.server.cli",
        *args,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_feedback_export_cli_reads_the_store_or_a_server(redis_url: str) -> None:
    """`parley feedback export --since ... --format jsonl` reads Redis directly or a server's endpoint."""
    from .support import live_server

    async with live_server(store=redis_url, admin_token=ADMIN, echo_tokens_per_second=0) as live:
        sid, rid = await rated_session(live.url, "acme", "cli question", "up")
        code, out, err = await run_cli(
            "feedback", "export", "--store", redis_url, "--since", "1h", "--format", "jsonl"
        )
        assert code == 0, err
        rows = [json.loads(line) for line in out.splitlines()]
        assert [(r["session_id"], r["response_id"], r["rating"]) for r in rows] == [(sid, rid, "up")]
        code, out, err = await run_cli(
            "feedback", "export", "--url", live.http, "--since", "1h", "--include-text", "--format", "json",
            env={"PARLEY_ADMIN_TOKEN": ADMIN},
        )  # fmt: skip
        assert code == 0, err
        rows = json.loads(out)
        assert rows[0]["response_id"] == rid and rows[0]["prompt"] == "cli question"
        code, out, err = await run_cli(
            "feedback", "export", "--store", redis_url, "--since", "2999-01-01T00:00Z"
        )
        assert (code, out) == (0, "")
    code, _, err = await run_cli("feedback", "export", "--store", "memory://")
    assert code == 2 and "memory://" in err


def test_loop_histogram_exposes_what_prometheus_histogram_would() -> None:
    """The lock-free histogram's exposition (buckets, sum, count) equals prometheus_client's own."""
    ours_registry, theirs_registry = CollectorRegistry(), CollectorRegistry()
    ours = LoopHistogram("gap_seconds", "gaps", "provider", GAP_BUCKETS, registry=ours_registry)
    theirs = Histogram("gap_seconds", "gaps", ["provider"], buckets=GAP_BUCKETS, registry=theirs_registry)
    values = [0.0, 0.0005, 0.0007, 0.001, 0.02, 0.025, 0.3, 4.9, 5.0, 7.5, 120.0]
    for provider in ("echo", "openai"):
        for v in values if provider == "echo" else values[::3]:
            ours.labels(provider).observe(v)
            theirs.labels(provider).observe(v)

    def samples(registry: CollectorRegistry) -> list[tuple[str, list[tuple[str, str]], float]]:
        text = generate_latest(registry).decode()
        return sorted(
            (s.name, sorted(s.labels.items()), s.value)
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if not s.name.endswith("_created")
        )

    assert samples(ours_registry) == samples(theirs_registry)
