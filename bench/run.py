"""Run every benchmark (B1-B7) with its baseline in the same run; write results to bench/results/.

    python -m bench.run            # the full run (about 10 minutes on 2 cores)
    python -m bench.run --quick    # a small smoke of every benchmark (CI; under 2 minutes)
    python -m bench.run --only B1,B5
    python -m bench.run --only B8  # turn starts in bursts: Parley on memory and on Redis vs the relay

Each load is ``python -m parley.loadtest`` in its own process (the same client for
Parley and the baselines), measuring the server's CPU from /proc (``--server-pid``)
and, for Parley, Redis's ``INFO commandstats`` and CPU. Parley and the relay run
on the same uvicorn configuration (ws and loop left on "auto"; which ones that
resolves to is recorded). Results: ``bench/results/<stamp>/`` holds every raw
loadtest report, ``summary.json`` and ``summary.md`` (the table for
docs/benchmarks.md). The exit status is 1 if any run lost, duplicated or
reordered an event, else 0: missed performance targets are reported, not fatal.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .procs import ROOT, Processes, Redis, Server, snapshot

RESULTS = ROOT / "bench" / "results"
ALL = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8")


@dataclass(frozen=True)
class Plan:
    """Sizes of every workload; ``FULL`` is the issue's, ``QUICK`` a smoke of the same shapes."""

    sessions: int = 200
    reply_tokens: int = 200
    b1_turns: int = 5
    b1_rounds: int = 3
    paced_tps: float = 50.0
    b2_turns: int = 2
    # 25, not 50: on a slow VM where the relay tops out at 200 sessions, steps of 50 can only
    # give 0.75x or 1.0x; 25 resolves the ratio to 1/8 there (at the cost of twice the steps)
    b3_step: int = 25
    b3_rounds: int = 3  # alternating relay/Parley ramps; the median capacity of each counts
    b3_step_s: float = 5.0
    b3_max: int = 4000
    b3_threshold_ms: float = 50.0
    b4_sessions: int = 50
    b4_drop_at: int = 50
    b4_delay_s: float = 0.5
    b4_turns: int = 2
    b5_connections: int = 10_000
    b5_hold_s: float = 12.0
    b5_heartbeat_ms: int = 5000
    # fixed PARLEY_COALESCE_MS windows (busy window off), and "busy": the defaults (0 + 20 ms under load)
    b7_windows: tuple[int | str, ...] = (0, "busy", 10, 20, 50)
    b7_b1_turns: int = 3
    # B8: every session sends at the same moment, b8_bursts times; short paced replies between bursts
    b8_sessions: int = 200
    b8_bursts: int = 5
    b8_reply_tokens: int = 20
    b8_rounds: int = 2  # alternating relay / memory / Redis loads; the median of each counts
    timeout_s: float = 600.0  # per loadtest process


FULL = Plan()
QUICK = Plan(
    sessions=20,
    reply_tokens=40,
    b1_turns=2,
    b1_rounds=1,
    b3_rounds=1,
    b2_turns=1,
    b3_step=20,
    b3_step_s=1.5,
    b3_max=60,
    b4_sessions=10,
    b4_drop_at=10,
    b4_delay_s=0.1,
    b4_turns=1,
    b5_connections=300,
    b5_hold_s=1.5,
    b5_heartbeat_ms=500,
    b7_windows=(0, "busy"),
    b7_b1_turns=1,
    b8_sessions=20,
    b8_bursts=2,
    b8_reply_tokens=5,
    b8_rounds=1,
    timeout_s=120.0,
)


def ws_stack() -> dict[str, str]:
    """What uvicorn's "auto" resolves to here (the same for Parley and the relay)."""
    out: dict[str, str] = {}
    try:
        from uvicorn.protocols.websockets.auto import AutoWebSocketsProtocol

        out["uvicorn_ws"] = f"{AutoWebSocketsProtocol.__module__}.{AutoWebSocketsProtocol.__name__}"  # type: ignore[union-attr]
    except ImportError:
        out["uvicorn_ws"] = "?"
    try:
        from uvicorn.protocols.http.auto import AutoHTTPProtocol

        out["uvicorn_http"] = AutoHTTPProtocol.__name__
    except ImportError:
        out["uvicorn_http"] = "?"
    try:
        import uvloop

        out["loop"] = f"uvloop {uvloop.__version__}"
    except ImportError:
        out["loop"] = "asyncio"
    import uvicorn
    import websockets

    out["uvicorn"] = uvicorn.__version__
    out["websockets"] = websockets.__version__
    return out


class Bench:
    def __init__(self, plan: Plan, out: Path, procs: Processes, verbose: bool = True) -> None:
        self.plan = plan
        self.out = out
        self.procs = procs
        self.verbose = verbose
        self.raw = out / "raw"
        self.raw.mkdir(parents=True, exist_ok=True)
        self.results: dict[str, Any] = {}
        self.integrity_failures: list[str] = []
        self._redis: Redis | None = None
        self._n = 0

    def log(self, msg: str) -> None:
        if self.verbose:
            print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    # ------------------------------------------------------------ plumbing

    @property
    def redis(self) -> Redis:
        if self._redis is None:
            self._redis = self.procs.redis()
        return self._redis

    def echo_env(self, tps: float, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {
            "PARLEY_ECHO_TOKENS_PER_SECOND": str(tps),
            "PARLEY_ECHO_REPLY_TOKENS": str(self.plan.reply_tokens),
            "PARLEY_ECHO_TTFT_MS": "0",
            "PARLEY_EVENT_TIMESTAMPS": "true",  # delivery latency, where the server supports it
            **(extra or {}),
        }

    def parley(
        self, tps: float, coalesce_ms: float = 0, extra: dict[str, str] | None = None, store: str = "redis"
    ) -> Server:
        if store == "redis":
            self.redis.command("FLUSHALL")
        url = self.redis.url if store == "redis" else "memory://"
        env = self.echo_env(tps, {"PARLEY_STORE": url, "PARLEY_COALESCE_MS": str(coalesce_ms)})
        env.update(extra or {})
        return self.procs.server("parley", env, tag=f"{store}-c{coalesce_ms:g}")

    def relay(self, tps: float, extra: dict[str, str] | None = None) -> Server:
        return self.procs.server("relay", self.echo_env(tps, extra))

    def load(self, name: str, server: Server, args: list[str], redis: bool = False) -> dict[str, Any]:
        """One ``python -m parley.loadtest`` process against ``server``; returns its JSON report."""
        self._n += 1
        path = self.raw / f"{self._n:02d}-{name}.json"
        cmd = [sys.executable, "-m", "parley.loadtest", "--url", server.url, "-q", "--json", str(path)]
        cmd += ["--server-pid", str(server.pid), *args]
        if redis:
            cmd += ["--redis-url", self.redis.url]
        started = time.monotonic()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=self.plan.timeout_s)
        if proc.returncode not in (0, 1) or not path.exists():
            raise RuntimeError(f"loadtest {name} failed ({proc.returncode}): {proc.stderr[-2000:]}")
        report: dict[str, Any] = json.loads(path.read_text())
        if not report["integrity"]["ok"]:
            self.integrity_failures.append(name)
        ok = "ok" if report["integrity"]["ok"] else "FAILED"
        self.log(
            f"{name}: {report['tokens']} tokens, {report['tokens_per_s'] or 0:,.0f} tok/s, "
            f"server CPU {report['server']['cpu_s']} s, errors {report['errors'] or 0}, "
            f"failures {report['failures'] or 0}, "
            f"integrity {ok} ({time.monotonic() - started:.1f} s)"
        )
        return report

    def stop(self, server: Server) -> None:
        self.procs.stop(server.proc)

    # ------------------------------------------------------------ figures

    @staticmethod
    def figures(r: dict[str, Any]) -> dict[str, Any]:
        """The figures a comparison needs from one report."""
        lat = r["latency_ms"]
        server = r.get("server", {})
        redis = r.get("redis") or {}
        cpu_per_m = server.get("cpu_s_per_million_tokens")
        redis_per_m = redis.get("cpu_s_per_million_tokens")
        return {
            "tokens": r["tokens"],
            "frames": r["frames"],
            "tokens_per_s": r["tokens_per_s"],
            "frames_per_s": r["frames_per_s"],
            "tokens_per_frame": r["tokens_per_frame"],
            "server_cpu_s": server.get("cpu_s"),
            "cpu_s_per_mtok": cpu_per_m,
            "redis_cpu_s_per_mtok": redis_per_m,
            "total_cpu_s_per_mtok": round(cpu_per_m + (redis_per_m or 0), 3) if cpu_per_m else None,
            "client_cpu_util": round(r["client"]["cpu_s"] / r["active_s"], 2) if r["active_s"] else None,
            "ttft_p50": lat["ttft"].get("p50"),
            "ttft_p99": lat["ttft"].get("p99"),
            "server_ttft_p99": lat["server_ttft"].get("p99"),
            "gap_p50": lat["gap"].get("p50"),
            "gap_p99": lat["gap"].get("p99"),
            "delivery_p50": lat["delivery"].get("p50"),
            "delivery_p99": lat["delivery"].get("p99"),
            "lag_p99": lat["schedule_lag"].get("p99"),
            "errors": r["errors"],
            "failures": r["failures"],
            "integrity_ok": r["integrity"]["ok"],
        }

    @staticmethod
    def median(runs: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in runs[0].items():
            values = [r[key] for r in runs if isinstance(r.get(key), int | float) and r.get(key) is not None]
            if isinstance(value, bool):
                out[key] = all(r[key] for r in runs)
            elif values and len(values) == len(runs):
                out[key] = round(statistics.median(values), 3)
            else:
                out[key] = value
        out["rounds"] = len(runs)
        return out

    # ------------------------------------------------------------ benchmarks

    def b1(self) -> None:
        """B1 (and B6): 200 sessions x 200 tokens, unthrottled, Redis store, vs the relay."""
        p = self.plan
        args = ["-n", str(p.sessions), "-t", str(p.b1_turns), "--reply-tokens", str(p.reply_tokens)]
        parley, relay = self.parley(0), self.relay(0)
        warm = ["-n", str(min(p.sessions, 50)), "-t", "1", "--reply-tokens", str(p.reply_tokens)]
        self.load("B1-warmup-parley", parley, warm)
        self.load("B1-warmup-relay", relay, warm)
        runs: dict[str, list[dict[str, Any]]] = {"parley": [], "relay": []}
        redis_runs: list[dict[str, Any]] = []
        for i in range(p.b1_rounds):
            order = [("relay", relay), ("parley", parley)]
            if i % 2:
                order.reverse()
            for kind, server in order:
                r = self.load(f"B1-{kind}-{i + 1}", server, args, redis=kind == "parley")
                runs[kind].append(self.figures(r))
                if kind == "parley":
                    redis_runs.append(r["redis"])
        self.stop(parley)
        self.stop(relay)
        par, rel = self.median(runs["parley"]), self.median(runs["relay"])
        tps_ratio = _ratio(par["tokens_per_s"], rel["tokens_per_s"])
        cpu_ratio = _ratio(par["cpu_s_per_mtok"], rel["cpu_s_per_mtok"])
        self.results["B1"] = {
            "workload": f"{p.sessions} sessions x {p.b1_turns} turns x {p.reply_tokens} tokens, unthrottled, "
            "Redis store",
            "parley": par,
            "relay": rel,
            "rounds": {k: v for k, v in runs.items()},
            "tokens_per_s_ratio": tps_ratio,
            "cpu_per_token_ratio": cpu_ratio,
            "total_cpu_per_token_ratio": _ratio(par["total_cpu_s_per_mtok"], rel["cpu_s_per_mtok"]),
            "target": "tokens/s >= 1.0x relay, server CPU per token <= 1.0x relay",
            "met": _ge(tps_ratio, 1.0) and _le(cpu_ratio, 1.0),
        }
        lua = lua_commands(self.procs.root)
        tokens = [r["tokens"] for r in runs["parley"]]
        requests = [
            sum(n for cmd, n in rr["by_command"].items() if cmd not in lua) / t
            for rr, t in zip(redis_runs, tokens, strict=True)
            if t
        ]
        every = [rr["commands_per_token"] for rr in redis_runs if rr.get("commands_per_token") is not None]
        b6 = round(statistics.median(requests), 4) if requests else None
        self.results["B6"] = {
            "workload": "B1's Parley rounds, Redis INFO commandstats diffed around each",
            "requests_per_token": b6,
            "commands_per_token": round(statistics.median(every), 4) if every else None,
            "by_command": redis_runs[-1]["by_command"] if redis_runs else {},
            "lua_commands": sorted(lua),
            "target": "<= 0.1 Redis commands per delivered token (sent by Parley; a script call is one)",
            "met": _le(b6, 0.1),
        }

    def b2(self) -> None:
        """B2: 200 sessions x 200 tokens at 50 tokens/s each, Redis store, vs the relay."""
        p = self.plan
        args = [
            "-n", str(p.sessions), "-t", str(p.b2_turns), "--reply-tokens", str(p.reply_tokens),
            "--server-tokens-per-second", str(p.paced_tps), "--ramp", "1",
        ]  # fmt: skip
        parley, relay = self.parley(p.paced_tps), self.relay(p.paced_tps)
        warm = ["-n", "10", "-t", "1", "--reply-tokens", str(p.reply_tokens)]
        self.load("B2-warmup-parley", parley, warm)
        self.load("B2-warmup-relay", relay, warm)
        rel = self.figures(self.load("B2-relay", relay, args))
        par = self.figures(self.load("B2-parley", parley, args, redis=True))
        self.stop(parley)
        self.stop(relay)
        d_ttft = _diff(par["ttft_p99"], rel["ttft_p99"])
        d_gap = _diff(par["gap_p99"], rel["gap_p99"])
        self.results["B2"] = {
            "workload": f"{p.sessions} sessions x {p.b2_turns} turns x {p.reply_tokens} tokens at "
            f"{p.paced_tps:g} tokens/s each, Redis store",
            "parley": par,
            "relay": rel,
            "ttft_p99_diff_ms": d_ttft,
            "gap_p99_diff_ms": d_gap,
            "target": "TTFT p99 and inter-token gap p99 within 5 ms of the relay",
            "met": _le(d_ttft, 5.0) and _le(d_gap, 5.0),
        }

    def b3(self) -> None:
        """B3: sessions at 50 tokens/s added step by step until p99 latency passes 50 ms."""
        p = self.plan
        parley, relay = self.parley(p.paced_tps), self.relay(p.paced_tps)
        # lateness against the pace, not "append -> receive": the relay has no append step, so its
        # delivery latency would only time the socket and hide its own scheduling delays
        metric = "schedule_lag"
        warm = ["-n", "5", "-t", "1", "--reply-tokens", str(p.reply_tokens)]
        for server in (parley, relay):
            self.load(f"B3-warmup-{server.kind}", server, warm)
        args = [
            "-n", str(p.b3_max), "-t", "1", "--reply-tokens", str(p.reply_tokens),
            "--server-tokens-per-second", str(p.paced_tps), "--step-sessions", str(p.b3_step),
            "--step-seconds", str(p.b3_step_s), "--until-p99-ms", str(p.b3_threshold_ms),
            "--step-metric", metric, "--duration", str(p.b3_step_s * (p.b3_max // p.b3_step + 1) + 1),
            "--grace", "15", "--turn-timeout", "60",
        ]  # fmt: skip
        rounds: dict[str, list[dict[str, Any]]] = {"relay": [], "parley": []}
        for i in range(p.b3_rounds):
            pair = (("relay", relay), ("parley", parley))
            for kind, server in pair if i % 2 == 0 else pair[::-1]:
                r = self.load(f"B3-{kind}-{i + 1}", server, args, redis=kind == "parley")
                fields = ("capacity", "steps", "errors", "failures")
                rounds[kind].append({k: r[k] for k in fields})
        self.stop(parley)
        self.stop(relay)
        out: dict[str, Any] = {}
        for kind, runs in rounds.items():
            caps = [run["capacity"]["max_sessions"] for run in runs]
            median = statistics.median(caps)
            pick = min(runs, key=lambda run: abs(run["capacity"]["max_sessions"] - median))
            out[kind] = {**pick, "capacity": {**pick["capacity"], "max_sessions": median}, "rounds": caps}
        ratio = _ratio(out["parley"]["capacity"]["max_sessions"], out["relay"]["capacity"]["max_sessions"])
        self.results["B3"] = {
            "workload": f"+{p.b3_step} sessions every {p.b3_step_s:g} s at {p.paced_tps:g} tokens/s, "
            f"until p99 {metric} > {p.b3_threshold_ms:g} ms",
            "metric": metric,
            "parley": out["parley"],
            "relay": out["relay"],
            "max_sessions_ratio": ratio,
            "target": "max sessions >= 0.8x the relay's",
            "met": _ge(ratio, 0.8),
        }

    def b4(self) -> None:
        """B4: every response dropped after 50 of 200 tokens, reconnect after 0.5 s, resume (Parley only).

        Twice: all sessions start (and so drop and reconnect) at once, the harsh case of a network
        blip; then started over one second, as independent clients would.
        """
        p = self.plan
        parley = self.parley(p.paced_tps)
        base = [
            "-n", str(p.b4_sessions), "-t", str(p.b4_turns), "--reply-tokens", str(p.reply_tokens),
            "--server-tokens-per-second", str(p.paced_tps), "--chaos", "1", "--chaos-at", str(p.b4_drop_at),
            "--reconnect-delay", str(p.b4_delay_s),
        ]  # fmt: skip
        self.load("B4-warmup", parley, ["-n", "5", "-t", "1", "--reply-tokens", str(p.reply_tokens)])
        runs = {
            "simultaneous": self.load("B4-simultaneous", parley, base, redis=True),
            "spread": self.load("B4-spread", parley, [*base, "--ramp", "1"], redis=True),
        }
        self.stop(parley)
        # the floor under "all at once": the bare relay's connect -> first event for as many
        # simultaneous new connections (handshake + hello, nothing to look up or replay); median of 3
        relay = self.relay(p.paced_tps)
        burst = ["-n", str(p.b4_sessions), "-t", "1", "--reply-tokens", "10"]
        floors = sorted(
            self.load(f"B4-relay-connect-{i}", relay, burst)["latency_ms"]["connect"].get("p99") or 0.0
            for i in range(3)
        )
        self.stop(relay)
        out: dict[str, Any] = {}
        for name, r in runs.items():
            res = r["resumes"]
            out[name] = {
                "drops": res["drops"],
                "resumes": res["resumes"],
                "snapshots": res["snapshots"],
                "resume_p50_ms": res["latency_ms"].get("p50"),
                "resume_p99_ms": res["latency_ms"].get("p99"),
                "integrity": r["integrity"],
                "turns": r["turns"],
                "errors": r["errors"],
                "failures": r["failures"],
            }
        sim = out["simultaneous"]
        self.results["B4"] = {
            "workload": f"{p.b4_sessions} sessions x {p.b4_turns} turns, each response dropped after "
            f"{p.b4_drop_at} of {p.reply_tokens} tokens (paced {p.paced_tps:g}/s), reconnect after "
            f"{p.b4_delay_s:g} s, resume",
            **sim,
            "spread": out["spread"],
            "relay_connect_p99_ms": floors[1],
            "relay_connect_rounds_p99_ms": floors,
            "target": "0 missing / duplicated / reordered; reconnect -> caught up p99 <= 50 ms",
            "met": all(
                o["integrity"]["ok"] and o["snapshots"] == 0 and not o["errors"] and not o["failures"]
                for o in out.values()
            )
            and _le(sim["resume_p99_ms"], 50.0),
        }

    def b5(self) -> None:
        """B5: idle connections with heartbeats: memory per connection vs a bare websockets server."""
        p = self.plan
        hb = {"PARLEY_HEARTBEAT_INTERVAL_MS": str(p.b5_heartbeat_ms)}
        args = [
            "-n", str(p.b5_connections), "-t", "0", "--hold", str(p.b5_hold_s),
            "--connect-concurrency", "200", "--duration", "120",
        ]  # fmt: skip
        out: dict[str, Any] = {}
        for kind in ("bare", "parley"):
            server = self.parley(0, extra=hb) if kind == "parley" else self.procs.server("bare", hb)
            r = self.load(f"B5-{kind}", server, args, redis=kind == "parley")
            self.stop(server)
            sv = r["server"]
            out[kind] = {
                "connections": r["sessions"]["connected"],
                "failed": r["sessions"]["failed"],
                "heartbeats": r["heartbeats"],
                "rss_start_kb": sv["rss_start_kb"],
                "rss_loaded_kb": sv.get("rss_loaded_kb"),
                "kb_per_connection": sv.get("rss_per_connection_kb"),
                "connect_p99_ms": r["latency_ms"]["connect"].get("p99"),
                "errors": r["errors"],
                "failures": r["failures"],
                "server_cpu_s": sv["cpu_s"],
            }
        ratio = _ratio(out["parley"]["kb_per_connection"], out["bare"]["kb_per_connection"])
        self.results["B5"] = {
            "workload": f"{p.b5_connections} idle connections held {p.b5_hold_s:g} s, heartbeat every "
            f"{p.b5_heartbeat_ms} ms, compression off (Parley on Redis)",
            "parley": out["parley"],
            "bare": out["bare"],
            "memory_ratio": ratio,
            "target": "server memory per connection <= 1.5x a bare websockets server",
            "met": _le(ratio, 1.5) and not out["parley"]["failed"],
        }

    def b7(self) -> None:
        """B7: coalescing window sweep on B1 and B2 (Parley), against window 0 of the same run."""
        p = self.plan
        b1_args = ["-n", str(p.sessions), "-t", str(p.b7_b1_turns), "--reply-tokens", str(p.reply_tokens)]
        b2_args = [
            "-n", str(p.sessions), "-t", "1", "--reply-tokens", str(p.reply_tokens),
            "--server-tokens-per-second", str(p.paced_tps), "--ramp", "1",
        ]  # fmt: skip
        rows: list[dict[str, Any]] = []
        for window in p.b7_windows:
            fixed = window if isinstance(window, int) else 0
            env = {} if window == "busy" else {"PARLEY_COALESCE_BUSY_MS": "0"}
            s1 = self.parley(0, coalesce_ms=fixed, extra=env)
            self.load(f"B7-warmup-c{window}", s1, ["-n", "20", "-t", "1"])
            r1 = self.figures(self.load(f"B7-B1-c{window}", s1, b1_args, redis=True))
            self.stop(s1)
            s2 = self.parley(p.paced_tps, coalesce_ms=fixed, extra=env)
            r2 = self.figures(self.load(f"B7-B2-c{window}", s2, b2_args, redis=True))
            light = ["-n", str(max(p.sessions // 4, 5)), *b2_args[2:]]
            r3 = self.figures(self.load(f"B7-B2light-c{window}", s2, light, redis=True))
            self.stop(s2)
            rows.append({"window_ms": window, "b1": r1, "b2": r2, "b2_light": r3})
        base = rows[0]
        for row in rows:
            row["b2_light_added_gap_p99_ms"] = _diff(row["b2_light"]["gap_p99"], base["b2_light"]["gap_p99"])
            row["b2_added_gap_p99_ms"] = _diff(row["b2"]["gap_p99"], base["b2"]["gap_p99"])
            row["b1_added_gap_p99_ms"] = _diff(row["b1"]["gap_p99"], base["b1"]["gap_p99"])
        self.results["B7"] = {
            "workload": "B1 and B2 shapes (and B2 at a quarter of the sessions, under capacity) with "
            "PARLEY_COALESCE_MS swept",
            "rows": rows,
            "target": "frames/s, CPU per token, added p99 gap: pick the default",
            "met": None,
        }

    def b8(self) -> None:
        """B8: turn starts in bursts: every session sends at once; Parley (memory, Redis) vs the relay."""
        p = self.plan
        env = {"PARLEY_ECHO_REPLY_TOKENS": str(p.b8_reply_tokens)}
        args = [
            "-n", str(p.b8_sessions), "-t", str(p.b8_bursts), "--burst",
            "--reply-tokens", str(p.b8_reply_tokens), "--server-tokens-per-second", str(p.paced_tps),
            "--turn-timeout", "60",
        ]  # fmt: skip
        servers = {
            "relay": self.relay(p.paced_tps, env),
            "memory": self.parley(p.paced_tps, extra=env, store="memory"),
            "redis": self.parley(p.paced_tps, extra=env),
        }
        warm = ["-n", "20", "-t", "2", "--burst", "--reply-tokens", str(p.b8_reply_tokens)]
        for kind, server in servers.items():
            self.load(f"B8-warmup-{kind}", server, warm)
        runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in servers}
        kinds = list(servers)
        for i in range(p.b8_rounds):
            for kind in kinds[i % 3 :] + kinds[: i % 3]:  # rotate who goes first
                r = self.load(f"B8-{kind}-{i + 1}", servers[kind], args, redis=kind == "redis")
                b = r.get("bursts") or {}
                runs[kind].append(
                    {
                        "ttft_p50": r["latency_ms"]["ttft"].get("p50"),
                        "ttft_p99": r["latency_ms"]["ttft"].get("p99"),
                        "server_ttft_p99": r["latency_ms"]["server_ttft"].get("p99"),
                        "turn_starts": b.get("turn_starts"),
                        "cpu_ms_per_turn_start": b.get("server_cpu_ms_per_turn_start"),
                        "redis_cpu_ms_per_turn_start": b.get("redis_cpu_ms_per_turn_start"),
                        "all_first_ms": [round(x["all_first_s"] * 1000, 1) for x in b.get("rounds", [])],
                        "errors": r["errors"],
                        "failures": r["failures"],
                        "integrity_ok": r["integrity"]["ok"],
                    }
                )
        for server in servers.values():
            self.stop(server)
        out: dict[str, dict[str, Any]] = {}
        for kind, rs in runs.items():
            out[kind] = {**self.median(rs), "all_first_ms": [x["all_first_ms"] for x in rs]}
        rel = out["relay"]
        ratios = {kind: _ratio(out[kind]["ttft_p99"], rel["ttft_p99"]) for kind in ("memory", "redis")}
        self.results["B8"] = {
            "workload": f"{p.b8_sessions} sessions send at the same moment, {p.b8_bursts} bursts, replies of "
            f"{p.b8_reply_tokens} tokens at {p.paced_tps:g} tokens/s; server CPU from the release to "
            "every first token",
            "memory": out["memory"],
            "redis": out["redis"],
            "relay": rel,
            "ttft_p99_ratio": ratios,
            "cpu_per_turn_start_ratio": {
                kind: _ratio(out[kind]["cpu_ms_per_turn_start"], rel["cpu_ms_per_turn_start"])
                for kind in ("memory", "redis")
            },
            "target": "TTFT p99 <= 2x the relay's, on both stores",
            "met": all(_le(v, 2.0) for v in ratios.values()),
        }


def lua_commands(root: Path) -> set[str]:
    """Commands only Parley's Lua scripts issue (commandstats counts those too): not separate requests.

    commandstats names container commands with their subcommand (``pubsub|numsub``), and so does this.

    A command the store also sends directly (``self._r.lrange(...)``, ``pipe.hmget(...)``) counts as a
    request every time: conservative.
    """
    lua = root / "sessions" / "redis_lua.py"
    store = root / "sessions" / "redis_store.py"
    inner = (
        {
            f"{cmd.lower()}|{sub.lower()}" if cmd.upper() == "PUBSUB" else cmd.lower()
            for cmd, sub in re.findall(
                r"redis\.call\(\s*'([A-Za-z]+)'(?:\s*,\s*'([A-Za-z]+)')?", lua.read_text()
            )
        }
        if lua.exists()
        else set()
    )
    direct = (
        set(re.findall(r"(?:_r|pipe|client)\.([a-z]+)\(", store.read_text())) if store.exists() else set()
    )
    return inner - direct


def _ratio(a: Any, b: Any) -> float | None:
    return round(a / b, 3) if isinstance(a, int | float) and isinstance(b, int | float) and b else None


def _diff(a: Any, b: Any) -> float | None:
    return round(a - b, 3) if isinstance(a, int | float) and isinstance(b, int | float) else None


def _ge(v: float | None, target: float) -> bool:
    return v is not None and v >= target


def _le(v: float | None, target: float) -> bool:
    return v is not None and v <= target


def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        v = f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
    elif isinstance(v, int):
        v = f"{v:,}"
    return f"{v}{unit}"


def _row(*cells: Any) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown(results: dict[str, Any]) -> str:
    """The B1-B7 table (plus B7's sweep and B3's steps) as Markdown."""
    lines = [
        _row("#", "workload", "Parley", "baseline (same run)", "ratio / difference", "target", "met"),
        _row(*["---"] * 7),
    ]
    yes = {True: "yes", False: "**no**", None: "-"}
    f = _fmt
    if "B1" in results:
        b = results["B1"]
        par, rel = b["parley"], b["relay"]
        lines.append(
            _row(
                "B1",
                b["workload"],
                f"{f(par['tokens_per_s'])} tok/s; {f(par['cpu_s_per_mtok'])} CPU-s/Mtok "
                f"(+ Redis {f(par['redis_cpu_s_per_mtok'])})",
                f"relay {f(rel['tokens_per_s'])} tok/s; {f(rel['cpu_s_per_mtok'])} CPU-s/Mtok",
                f"tokens/s {f(b['tokens_per_s_ratio'])}x; CPU/token {f(b['cpu_per_token_ratio'])}x "
                f"(with Redis {f(b['total_cpu_per_token_ratio'])}x)",
                b["target"],
                yes[b["met"]],
            )
        )
    if "B2" in results:
        b = results["B2"]
        par, rel = b["parley"], b["relay"]
        lines.append(
            _row(
                "B2",
                b["workload"],
                f"TTFT p99 {f(par['ttft_p99'], ' ms')}, gap p99 {f(par['gap_p99'], ' ms')}",
                f"relay TTFT p99 {f(rel['ttft_p99'], ' ms')}, gap p99 {f(rel['gap_p99'], ' ms')}",
                f"TTFT {f(b['ttft_p99_diff_ms'], ' ms')}, gap {f(b['gap_p99_diff_ms'], ' ms')}",
                b["target"],
                yes[b["met"]],
            )
        )
    if "B3" in results:
        b = results["B3"]
        lines.append(
            _row(
                "B3",
                b["workload"],
                f"{f(b['parley']['capacity']['max_sessions'])} sessions (median of rounds "
                f"{', '.join(map(str, b['parley'].get('rounds', [])))})",
                f"relay {f(b['relay']['capacity']['max_sessions'])} sessions (rounds "
                f"{', '.join(map(str, b['relay'].get('rounds', [])))})",
                f"{f(b['max_sessions_ratio'])}x",
                b["target"],
                yes[b["met"]],
            )
        )
    if "B4" in results:
        b = results["B4"]
        i = b["integrity"]
        lines.append(
            _row(
                "B4",
                b["workload"],
                f"{b['drops']} drops, {b['resumes']} resumes, lost/dup/reordered "
                f"{i['lost']}/{i['duplicated']}/{i['out_of_order']}, snapshots {b['snapshots']}; "
                f"caught up p50 {f(b['resume_p50_ms'], ' ms')}, p99 {f(b['resume_p99_ms'], ' ms')} when all "
                f"reconnect at once; p99 {f(b['spread']['resume_p99_ms'], ' ms')} when spread over 1 s",
                "the relay cannot resume; its connect -> first event p99 for as many connections at once: "
                f"{f(b.get('relay_connect_p99_ms'), ' ms')}",
                f"at once: {f(_ratio(b['resume_p99_ms'], b.get('relay_connect_p99_ms')))}x the relay's "
                "connect",
                b["target"],
                yes[b["met"]],
            )
        )
    if "B5" in results:
        b = results["B5"]
        lines.append(
            _row(
                "B5",
                b["workload"],
                f"{f(b['parley']['kb_per_connection'], ' KiB')}/connection "
                f"({b['parley']['connections']:,} open, {b['parley']['failed']:,} failed)",
                f"bare websockets {f(b['bare']['kb_per_connection'], ' KiB')}",
                f"{f(b['memory_ratio'])}x",
                b["target"],
                yes[b["met"]],
            )
        )
    if "B6" in results:
        b = results["B6"]
        lines.append(
            _row(
                "B6",
                b["workload"],
                f"{f(b['requests_per_token'])} requests/token "
                f"({f(b['commands_per_token'])} counting every command inside Lua)",
                "-",
                "-",
                b["target"],
                yes[b["met"]],
            )
        )
    if "B7" in results:
        lines.append(_row("B7", "coalescing window sweep", "see below", "-", "-", "pick the default", "-"))
        lines += [
            "",
            "B7: coalescing window (PARLEY_COALESCE_MS) on B1 (unthrottled), B2 (50 tokens/s) and B2 with a "
            "quarter of the sessions (under capacity, where the window's own latency shows)",
            "",
            _row(
                "window",
                "B1 tok/s",
                "B1 frames/s",
                "B1 tok/frame",
                "B1 CPU-s/Mtok",
                "B2 frames/s",
                "B2 tok/frame",
                "B2 CPU-s/Mtok",
                "B2 gap p50 / p99",
                "B2 TTFT p99",
                "B2/4 gap p50 / p99",
                "B2/4 added gap p99",
                "B2/4 CPU-s/Mtok",
            ),
            _row(*["---"] * 13),
        ]
        for r in results["B7"]["rows"]:
            b1, b2, b4 = r["b1"], r["b2"], r["b2_light"]
            lines.append(
                _row(
                    "busy (default)" if r["window_ms"] == "busy" else f"{r['window_ms']} ms",
                    f(b1["tokens_per_s"]),
                    f(b1["frames_per_s"]),
                    f(b1["tokens_per_frame"]),
                    f(b1["cpu_s_per_mtok"]),
                    f(b2["frames_per_s"]),
                    f(b2["tokens_per_frame"]),
                    f(b2["cpu_s_per_mtok"]),
                    f"{f(b2['gap_p50'])} / {f(b2['gap_p99'], ' ms')}",
                    f(b2["ttft_p99"], " ms"),
                    f"{f(b4['gap_p50'])} / {f(b4['gap_p99'], ' ms')}",
                    f(r["b2_light_added_gap_p99_ms"], " ms"),
                    f(b4["cpu_s_per_mtok"]),
                )
            )
    if "B8" in results:
        b = results["B8"]
        rel = b["relay"]
        for kind in ("memory", "redis"):
            par = b[kind]
            lines.append(
                _row(
                    f"B8 ({kind})",
                    b["workload"],
                    f"TTFT p50 / p99 {f(par['ttft_p50'])} / {f(par['ttft_p99'], ' ms')}; "
                    f"{f(par['cpu_ms_per_turn_start'], ' ms')} CPU per turn start"
                    + (
                        f" (+ Redis {f(par['redis_cpu_ms_per_turn_start'], ' ms')})"
                        if par.get("redis_cpu_ms_per_turn_start") is not None
                        else ""
                    ),
                    f"relay TTFT p50 / p99 {f(rel['ttft_p50'])} / {f(rel['ttft_p99'], ' ms')}; "
                    f"{f(rel['cpu_ms_per_turn_start'], ' ms')} CPU per turn start",
                    f"TTFT p99 {f(b['ttft_p99_ratio'][kind])}x; "
                    f"CPU {f(b['cpu_per_turn_start_ratio'][kind])}x",
                    b["target"],
                    yes[_le(b["ttft_p99_ratio"][kind], 2.0)],
                )
            )
    if "B3" in results:
        lines += ["", "B3 steps of the median round (sessions: p99 ms)", ""]
        for kind in ("relay", "parley"):
            steps = ", ".join(f"{s['sessions']}: {f(s['p99_ms'])}" for s in results["B3"][kind]["steps"])
            lines.append(f"- {kind}: {steps}")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a small smoke of every benchmark (CI)")
    p.add_argument("--only", help="comma-separated subset, e.g. B1,B5 (B6 comes with B1)")
    p.add_argument("--out", help="results directory (default bench/results/<stamp>)")
    p.add_argument(
        "--ref", help="run the servers from a snapshot of this commit (default: the working tree as it is)"
    )
    p.add_argument(
        "--patch",
        action="append",
        default=[],
        help="with --ref: apply this diff to the snapshot first (benchmark a proposed server change)",
    )
    p.add_argument("-q", "--quiet", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM unwinds like an exception, so every process this run started is stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    plan = QUICK if args.quick else FULL
    wanted = [b.strip().upper() for b in args.only.split(",")] if args.only else list(ALL)
    unknown = [b for b in wanted if b not in ALL]
    if unknown:
        print(f"unknown benchmarks: {unknown}", file=sys.stderr)
        return 2
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S") + ("-quick" if args.quick else "")
    out = Path(args.out) if args.out else RESULTS / stamp
    started = time.monotonic()
    root, commit = ROOT, "working tree"
    if args.ref:
        root = Path(tempfile.mkdtemp(prefix="parley-bench-src-"))
        commit = snapshot(args.ref, root)
        for patch in args.patch:
            subprocess.run(["git", "apply", str(Path(patch).resolve())], cwd=root, check=True)
            commit += f" + {Path(patch).name}"
    elif args.patch:
        print("--patch needs --ref", file=sys.stderr)
        return 2
    with Processes(out / "logs", root=root) as procs:
        bench = Bench(plan, out, procs, verbose=not args.quiet)
        bench.log(f"results in {out}")
        order = [("B1", bench.b1), ("B2", bench.b2), ("B3", bench.b3), ("B4", bench.b4), ("B5", bench.b5)]
        order += [("B7", bench.b7), ("B8", bench.b8)]
        for name, fn in order:
            if name in wanted or (name == "B1" and "B6" in wanted):
                bench.log(f"{name} ...")
                fn()
    from parley.loadtest.target import machine

    summary = {
        "command": " ".join(["python -m bench.run", *(argv if argv is not None else sys.argv[1:])]),
        "plan": dataclasses.asdict(plan),
        "machine": machine(),
        "source": commit,
        "stack": ws_stack(),
        "elapsed_s": round(time.monotonic() - started, 1),
        "integrity_failures": bench.integrity_failures,
        "results": bench.results,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    table = markdown(bench.results)
    (out / "summary.md").write_text(table)
    if not args.quiet:
        print(table)
        print(f"elapsed {summary['elapsed_s']} s; results in {out}")
    return 1 if bench.integrity_failures else 0


if __name__ == "__main__":
    sys.exit(main())
