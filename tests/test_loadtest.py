"""The load-test tool and the benchmark runner: bounded smoke runs, integrity detection, report shape.

No timing assertions: these prove the tool measures and verifies, not how fast anything is.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from parley.loadtest.cli import EXIT_INTEGRITY, EXIT_OK, build_parser, config_from_args, exit_code
from parley.loadtest.config import LoadConfig
from parley.loadtest.runner import run_load
from parley.loadtest.stats import Histogram
from parley.loadtest.wire import HandshakeError, open_ws

from .support import ROOT, ServerProcess, live_server

REPORT_KEYS = {
    "report_version", "tool", "started_at", "settings", "machine", "wall_s", "active_s", "sessions", "turns",
    "events", "heartbeats", "tokens", "frames", "tokens_per_frame", "tokens_per_s", "frames_per_s",
    "latency_ms", "resumes", "errors", "failures", "integrity", "client", "timeseries",
}  # fmt: skip
LATENCY_KEYS = {
    "ttft", "server_ttft", "gap", "delivery", "schedule_lag", "resume", "connect", "turn", "tool_round_trip",
}  # fmt: skip


def _config(url: str, **overrides: Any) -> LoadConfig:
    base: dict[str, Any] = {
        "url": url,
        "progress": False,
        "duration_s": 30,
        "grace_s": 10,
        "turn_timeout_s": 20,
    }
    base.update(overrides)
    return LoadConfig(**base)


# --------------------------------------------------------------------------- units


def test_histogram_percentiles_are_within_one_percent() -> None:
    """Percentiles of the log-bucketed histogram match exact ones to within the bucket width."""
    h = Histogram()
    values = [0.05 * i for i in range(1, 2001)]
    for v in values:
        h.record(v)
    for p in (50, 90, 99):
        exact = values[int(len(values) * p / 100) - 1]
        assert h.percentile(p) == pytest.approx(exact, rel=0.011)
    assert h.summary()["count"] == 2000


def test_histogram_merge_and_round_trip() -> None:
    """Merged and serialised histograms keep every count (what multi-process runs rely on)."""
    a, b = Histogram(), Histogram()
    for v in (0.0, 1.0, 2.0):
        a.record(v)
    for v in (3.0, 400.0):
        b.record(v)
    a.merge(b)
    back = Histogram.from_dict(json.loads(json.dumps(a.to_dict())))
    assert (back.count, back.zeros, back.max) == (5, 1, 400.0)
    assert back.percentile(100) == pytest.approx(400.0, rel=0.011)


def test_cli_parses_every_setting_into_the_config() -> None:
    """Flags map onto LoadConfig fields (chaos, pacing hint, step mode, measurement)."""
    args = build_parser().parse_args(
        ["--url", "ws://127.0.0.1:1/v1/ws", "-n", "7", "-t", "2", "--chaos", "0.5", "--chaos-at", "3",
         "--server-tokens-per-second", "50", "--step-sessions", "5", "--server-pid", "1", "--server-pid", "2",
         "--no-text-check", "-q", "--tool-calls"]
    )  # fmt: skip
    cfg = config_from_args(args)
    assert (cfg.sessions, cfg.turns, cfg.chaos, cfg.chaos_at) == (7, 2, 0.5, 3)
    assert (cfg.server_tokens_per_second, cfg.step_sessions, cfg.server_pids) == (50.0, 5, [1, 2])
    assert cfg.text_check is False and cfg.progress is False and cfg.tool_calls is True


# --------------------------------------------------------------------------- against Parley


async def test_load_run_delivers_every_token_exactly_once() -> None:
    """N sessions x T turns: every token counted, no loss, duplicate or reordering, full report shape."""
    async with live_server(store="memory://", echo_tokens_per_second=0, echo_reply_tokens=30) as srv:
        report, _ = await run_load(_config(srv.url, sessions=6, turns=3, reply_tokens=30))
    assert REPORT_KEYS <= set(report)
    assert set(report["latency_ms"]) == LATENCY_KEYS
    assert report["tokens"] == 6 * 3 * 30
    assert report["turns"]["completed"] == 18 and report["turns"]["finish_reasons"] == {"stop": 18}
    assert report["integrity"] == {
        "lost": 0, "duplicated": 0, "out_of_order": 0, "token_mismatch": 0, "text_mismatch": 0, "ok": True,
    }  # fmt: skip
    assert report["latency_ms"]["ttft"]["count"] == 18
    assert exit_code(report) == EXIT_OK


async def test_tool_calls_mode_answers_a_call_per_turn() -> None:
    """--tool-calls: each turn's first response calls the load tool; its answer continues to a full reply."""
    async with live_server(store="memory://", echo_tokens_per_second=0) as srv:
        report, _ = await run_load(_config(srv.url, sessions=4, turns=2, tool_calls=True))
    assert report["turns"]["completed"] == 8
    assert report["turns"]["finish_reasons"] == {"tool_calls": 8, "stop": 8}
    assert report["latency_ms"]["tool_round_trip"]["count"] == 8
    assert report["integrity"]["ok"] is True and exit_code(report) == EXIT_OK


async def test_sse_transport_delivers_every_token_exactly_once() -> None:
    """--transport sse: turns are POSTs answered as SSE, with the same integrity checks and figures."""
    async with live_server(store="memory://", echo_tokens_per_second=0, echo_reply_tokens=30) as srv:
        report, _ = await run_load(_config(srv.url, transport="sse", sessions=4, turns=3, reply_tokens=30))
    assert report["settings"]["transport"] == "sse"
    assert report["tokens"] == 4 * 3 * 30
    assert report["turns"]["completed"] == 12 and report["turns"]["finish_reasons"] == {"stop": 12}
    assert report["integrity"]["ok"] is True
    assert report["latency_ms"]["ttft"]["count"] == 12
    assert exit_code(report) == EXIT_OK


def test_sse_transport_refuses_chaos_and_idle_mode() -> None:
    """--transport sse with --chaos, -t 0, --burst or --tool-calls is a usage error (exit 2), one line."""
    for extra in (["--chaos", "0.5"], ["-t", "0"], ["--burst"], ["--tool-calls"]):
        out = subprocess.run(
            [sys.executable, "-m", "parley.loadtest", "--transport", "sse", *extra],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 2 and "--transport sse" in out.stderr


async def test_chaos_drops_resume_without_loss_on_redis(redis_url: str) -> None:
    """Every response dropped mid-stream is resumed and rebuilt exactly, replies equal uninterrupted ones."""
    async with live_server(store=redis_url, echo_tokens_per_second=400, echo_reply_tokens=40) as srv:
        cfg = _config(srv.url, sessions=4, turns=2, chaos=1.0, chaos_at=10, reconnect_delay_s=0.05)
        report, _ = await run_load(cfg)
    assert report["resumes"]["drops"] == 8
    assert report["resumes"]["resumes"] >= 8
    assert report["resumes"]["latency_ms"]["count"] == report["resumes"]["resumes"]
    assert report["turns"]["completed"] == 8
    assert report["integrity"]["ok"], report["integrity"]
    assert report["errors"] == {} and report["failures"] == {}


async def test_random_chaos_points_keep_integrity(redis_url: str) -> None:
    """Drops at random points (some before the first token) never lose, repeat or reorder events."""
    async with live_server(store=redis_url, echo_tokens_per_second=0, echo_reply_tokens=25) as srv:
        cfg = _config(srv.url, sessions=5, turns=3, chaos=0.7, reply_tokens=25, reconnect_delay_s=0.01)
        report, _ = await run_load(cfg)
    assert report["turns"]["completed"] == 15
    assert report["integrity"]["ok"], report["integrity"]


async def test_two_instances_resume_on_the_other_one(redis_url: str) -> None:
    """Sessions spread over two instances; every drop resumes on the other one, losing nothing."""
    settings = {"store": redis_url, "echo_tokens_per_second": 300, "echo_reply_tokens": 30}
    async with live_server(**settings) as a, live_server(**settings) as b:
        cfg = _config(
            a.url, also_urls=[b.url], resume_elsewhere=True, sessions=6, turns=2, chaos=1.0, chaos_at=8,
            reconnect_delay_s=0.02, reply_tokens=30,
        )  # fmt: skip
        report, _ = await run_load(cfg)
    assert report["resumes"]["drops"] == 12
    assert report["turns"]["completed"] == 12
    assert report["settings"]["also_urls"] == [b.url]
    assert report["integrity"]["ok"], report["integrity"]
    assert report["failures"] == {}


async def test_idle_mode_holds_connections_and_counts_heartbeats() -> None:
    """turns=0 opens every connection, holds it while heartbeats flow, then closes them all."""
    async with live_server(store="memory://", heartbeat_interval_ms=100) as srv:
        report, _ = await run_load(_config(srv.url, sessions=8, turns=0, hold_s=0.35))
    assert report["sessions"]["connected"] == 8
    assert report["sessions"]["completed"] == 8
    assert report["heartbeats"] >= 8
    assert report["latency_ms"]["connect"]["count"] == 8


async def test_burst_mode_releases_every_turn_together_and_reports_cpu_per_turn_start() -> None:
    """--burst releases each turn of every session at once and reports each burst's turn starts and CPU."""
    async with live_server(store="memory://", echo_tokens_per_second=100, echo_reply_tokens=5) as srv:
        cfg = _config(srv.url, sessions=6, turns=3, burst=True, reply_tokens=5, server_pids=[os.getpid()])
        report, _ = await run_load(cfg)
    bursts = report["bursts"]
    assert [b["turn_starts"] for b in bursts["rounds"]] == [6, 6, 6]
    assert [b["first_tokens"] for b in bursts["rounds"]] == [6, 6, 6]
    assert bursts["turn_starts"] == 18 and bursts["server_cpu_ms_per_turn_start"] >= 0
    assert report["latency_ms"]["ttft"]["count"] == 18
    assert report["turns"]["completed"] == 18 and report["integrity"]["ok"]


async def test_step_mode_reports_steps_and_capacity() -> None:
    """Step mode adds sessions per step and reports each step's p99 and the capacity found."""
    async with live_server(store="memory://", echo_tokens_per_second=100, echo_reply_tokens=20) as srv:
        cfg = _config(
            srv.url, sessions=6, turns=1, step_sessions=3, step_s=0.5, until_p99_ms=10_000,
            server_tokens_per_second=100, duration_s=10,
        )  # fmt: skip
        report, _ = await run_load(cfg)
    assert [s["sessions"] for s in report["steps"]] == [3, 6]
    assert report["capacity"]["max_sessions"] == 6
    assert report["capacity"]["stopped_by"] == "max_sessions"
    assert report["integrity"]["ok"]


async def test_refused_handshake_is_reported_not_raised() -> None:
    """A refused upgrade raises HandshakeError; in a run it is a connect failure and nothing is measured."""
    async with live_server(store="memory://") as srv:
        with pytest.raises(HandshakeError):
            await open_ws(srv.url, lambda *a: None, lambda c: None, subprotocol="parley.v0")
        report, _ = await run_load(_config(srv.url.replace("/v1/ws", "/nope"), sessions=2, turns=1))
    assert report["sessions"]["failed"] == 2
    assert report["failures"] == {"connect:http_403": 2}
    assert exit_code(report) != EXIT_OK


# --------------------------------------------------------------------------- integrity detection


def _bad_stream(kind: str) -> list[int]:
    """Seqs a broken server sends for one turn (accepted=1, started=2, deltas..., completed=last)."""
    return {
        "lost": [1, 2, 3, 5, 6],
        "duplicated": [1, 2, 3, 4, 4, 5, 6],
        "out_of_order": [1, 2, 4, 3, 5, 6],
    }[kind]


@contextlib.asynccontextmanager
async def broken_server(kind: str) -> AsyncIterator[str]:
    """A fake parley.v1 server whose log delivery is broken in one way."""

    async def handler(ws: ServerConnection) -> None:
        await ws.recv()
        ready = {"type": "session.ready", "session_id": "s1", "resume_token": "t", "last_seq": 0}
        await ws.send(json.dumps(ready))
        async for raw in ws:
            msg = json.loads(raw)
            seqs = _bad_stream(kind)
            deltas = len([s for s in seqs if s not in (1, 2, seqs[-1])])
            for seq in seqs:
                if seq == 1:
                    ev = {
                        "type": "message.accepted",
                        "client_msg_id": msg["client_msg_id"],
                        "message_id": "m1",
                    }
                elif seq == 2:
                    ev = {"type": "response.started", "response_id": "r1", "in_reply_to": "m1"}
                elif seq == seqs[-1]:
                    usage = {"input_tokens": 1, "output_tokens": deltas}
                    ev = {
                        "type": "response.completed",
                        "response_id": "r1",
                        "finish_reason": "stop",
                        "usage": usage,
                    }
                else:
                    ev = {"type": "response.delta", "response_id": "r1", "text": f"w{seq} "}
                await ws.send(json.dumps({"seq": seq, **ev}))

    async with serve(handler, "127.0.0.1", 0, subprotocols=["parley.v1"]) as server:  # type: ignore[list-item]
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/v1/ws"


@pytest.mark.parametrize("kind", ["lost", "duplicated", "out_of_order"])
async def test_broken_delivery_is_detected_and_fails_the_run(kind: str) -> None:
    """A lost, repeated or reordered event is counted under its name and makes the exit status 1."""
    async with broken_server(kind) as url:
        report, _ = await run_load(_config(url, sessions=1, turns=1, text_check=False))
    assert report["integrity"][kind] >= 1
    assert report["integrity"]["ok"] is False
    assert exit_code(report) == EXIT_INTEGRITY


# --------------------------------------------------------------------------- the command and the benchmarks


@pytest.mark.slow
def test_cli_writes_json_and_plot_and_exits_zero(tmp_path: Path) -> None:
    """``python -m parley.loadtest`` against ``parley serve`` writes the JSON report and the PNG, exit 0."""
    server = ServerProcess(
        {"PARLEY_STORE": "memory://", "PARLEY_ECHO_TOKENS_PER_SECOND": "0", "PARLEY_ECHO_REPLY_TOKENS": "20"}
    )
    server.start()
    try:
        out, png = tmp_path / "r.json", tmp_path / "r.png"
        proc = subprocess.run(
            [sys.executable, "-m", "parley.loadtest", "--url", server.url, "-n", "4", "-t", "2",
             "--reply-tokens", "20", "--server-pid", str(server.proc.pid), "--json", str(out),
             "--plot", str(png), "--duration", "30"],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        server.stop()
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["tokens"] == 4 * 2 * 20
    assert report["server"]["cpu_s"] >= 0 and report["server"]["pids"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "lost / duplicated / out of order" in proc.stdout


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quick_benchmarks_run_every_workload(tmp_path: Path) -> None:
    """``python -m bench.run --quick`` runs B1-B8 with their baselines and loses no event."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--out", str(tmp_path), "-q"],
        cwd=ROOT, capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["results"]) == {"B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8"}
    assert summary["integrity_failures"] == []
    assert summary["results"]["B1"]["relay"]["tokens"] > 0
    assert summary["results"]["B4"]["integrity"]["ok"]
    b8 = summary["results"]["B8"]
    assert all(b8[k]["turn_starts"] == 40 and b8[k]["integrity_ok"] for k in ("relay", "memory", "redis"))
    assert summary["stack"]["uvicorn_ws"]
    assert (tmp_path / "summary.md").read_text().startswith("| # |")
