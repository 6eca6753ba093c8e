"""The run's report: one JSON-able dict with every figure, and its rich summary table."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from .config import LoadConfig
from .stats import BIN_S, METRICS
from .target import RedisProbe, ServerProbe, machine

if TYPE_CHECKING:
    from .session import RunContext

#: Integrity counters that must all be zero.
INTEGRITY = ("lost", "duplicated", "out_of_order", "token_mismatch", "text_mismatch")
REPORT_VERSION = 1


def _loop_name() -> str:
    import asyncio

    loop = asyncio.get_event_loop_policy().__class__.__module__
    return "uvloop" if "uvloop" in loop else "asyncio"


def build_report(
    cfg: LoadConfig,
    ctx: RunContext,
    *,
    wall_s: float,
    started_wall: float,
    client_cpu_s: float,
    server: ServerProbe | None,
    redis: RedisProbe | None,
    steps: list[dict[str, Any]],
    capacity: dict[str, Any] | None,
    bursts: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    st = ctx.stats
    c = st.counts
    tokens = c["tokens"]
    frames = c["frames"]
    active = (ctx.last_done - ctx.first_send) if ctx.first_send and ctx.last_done else 0.0
    integrity = {k: c[k] for k in INTEGRITY}
    integrity["ok"] = not any(integrity.values())
    finish = {k.split(":", 1)[1]: n for k, n in c.items() if k.startswith("finish:")}
    report: dict[str, Any] = {
        "report_version": REPORT_VERSION,
        "tool": "parley loadtest",
        "started_at": dt.datetime.fromtimestamp(started_wall, dt.UTC).isoformat(timespec="seconds"),
        "settings": cfg.to_dict(),
        "machine": {**machine(), "client_loop": _loop_name()},
        "wall_s": round(wall_s, 3),
        "active_s": round(active, 3),
        "sessions": {
            "target": cfg.sessions,
            "started": c["sessions_started"],
            "connected": c["connected"],
            "completed": c["sessions_completed"],
            "failed": c["sessions_failed"],
        },
        "turns": {
            "sent": c["turns_sent"],
            "completed": c["turns_completed"],
            "failed": c["turns_failed"],
            "finish_reasons": finish,
            "resends": c["resends"],
        },
        "events": c["events"],
        "heartbeats": c["heartbeats"],
        "tokens": tokens,
        "frames": frames,
        "tokens_per_frame": round(tokens / frames, 3) if frames else None,
        "tokens_per_s": round(tokens / active, 1) if active else None,
        "frames_per_s": round(frames / active, 1) if active else None,
        "latency_ms": {m: st.hist[m].summary() for m in METRICS},
        "resumes": {
            "drops": c["drops"],
            "unexpected_disconnects": c["disconnects"],
            "resumes": c["resumes"],
            "retries": c["resume_retries"],
            "snapshots": c["snapshots"],
            "latency_ms": st.hist["resume"].summary(),
        },
        "errors": dict(sorted(st.errors.items())),
        "failures": dict(sorted(st.failures.items())),
        "integrity": integrity,
        "client": {"cpu_s": round(client_cpu_s, 3), "processes": 1},
        "timeseries": {"bin_s": BIN_S, "tokens": st.tokens_per_bin},
    }
    if server is not None:
        report["server"] = server.to_dict(tokens, c["connected"])
    if redis is not None:
        report["redis"] = redis.to_dict(tokens)
    if bursts is not None:
        report["bursts"] = burst_summary(bursts)
    if steps:
        report["steps"] = steps
        report["capacity"] = capacity
    return report


def burst_summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Burst mode: each burst, and the CPU per turn start over all of them (release -> every first token)."""
    starts = sum(r["turn_starts"] for r in rounds)
    out: dict[str, Any] = {"rounds": rounds, "turn_starts": starts}
    for side in ("server", "redis"):
        cpu = [r[f"{side}_cpu_s"] for r in rounds if f"{side}_cpu_s" in r]
        if cpu and starts:
            out[f"{side}_cpu_s"] = round(sum(cpu), 3)
            out[f"{side}_cpu_ms_per_turn_start"] = round(sum(cpu) / starts * 1000, 4)
    return out


def _ms(v: Any) -> str:
    return "-" if v is None else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def summary_table(report: dict[str, Any]) -> Table:
    """The human summary of a report."""
    t = Table(title="parley loadtest", show_header=True, header_style="bold")
    t.add_column("figure")
    t.add_column("value", justify="right")
    s, turns = report["sessions"], report["turns"]
    t.add_row("sessions (connected / failed)", f"{s['connected']} / {s['failed']}")
    t.add_row("turns (completed / failed)", f"{turns['completed']} / {turns['failed']}")
    t.add_row("tokens / frames", f"{report['tokens']} / {report['frames']}")
    t.add_row("tokens/s", f"{report['tokens_per_s'] or 0:,.0f}")
    lat = report["latency_ms"]
    for metric, label, ps in (
        ("ttft", "time to first token", ("p50", "p95", "p99")),
        ("server_ttft", "  of which in the server (its ttft_ms)", ("p50", "p99")),
        ("gap", "inter-token gap", ("p50", "p99")),
        ("delivery", "delivery latency (append -> receive)", ("p50", "p99")),
        ("schedule_lag", "lag behind the token pace", ("p50", "p99")),
        ("tool_round_trip", "tool.result -> continuation started", ("p50", "p99")),
        ("resume", "resume: reconnect -> caught up", ("p50", "p99")),
        ("connect", "connect -> session.ready", ("p50", "p99")),
    ):
        h = lat[metric]
        if not h.get("count"):
            if metric in ("delivery", "ttft", "gap"):
                t.add_row(f"{label} ms", "n/a")
            continue
        t.add_row(f"{label} ms ({'/'.join(ps)})", " / ".join(_ms(h[p]) for p in ps))
    r = report["resumes"]
    t.add_row("drops / resumes / snapshots", f"{r['drops']} / {r['resumes']} / {r['snapshots']}")
    errors, failures = report["errors"], report["failures"]
    t.add_row("server errors by code", ", ".join(f"{k}={v}" for k, v in errors.items()) or "0")
    t.add_row("session failures", ", ".join(f"{k}={v}" for k, v in failures.items()) or "0")
    integ = report["integrity"]
    style = "green" if integ["ok"] else "bold red"
    t.add_row(
        "lost / duplicated / out of order",
        f"[{style}]{integ['lost']} / {integ['duplicated']} / {integ['out_of_order']}[/]",
    )
    if integ["token_mismatch"] or integ["text_mismatch"]:
        t.add_row(
            "token count / text mismatches",
            f"[bold red]{integ['token_mismatch']} / {integ['text_mismatch']}[/]",
        )
    if "server" in report:
        sv = report["server"]
        t.add_row("server CPU s (per 1M tokens)", f"{sv['cpu_s']} ({sv['cpu_s_per_million_tokens'] or '-'})")
        if "rss_per_connection_kb" in sv:
            t.add_row("server memory per connection KiB", f"{sv['rss_per_connection_kb']}")
    if "redis" in report:
        rd = report["redis"]
        t.add_row("redis commands per token (incl. inside Lua)", f"{rd['commands_per_token']}")
    if report.get("bursts"):
        b = report["bursts"]
        t.add_row("burst turn starts", f"{b['turn_starts']} in {len(b['rounds'])} bursts")
        if "server_cpu_ms_per_turn_start" in b:
            per = b["server_cpu_ms_per_turn_start"]
            t.add_row("server CPU ms per turn start (to its first token)", str(per))
    if report.get("capacity"):
        cap = report["capacity"]
        t.add_row(
            f"capacity (p99 {cap['metric']} <= {cap['threshold_ms']} ms)",
            f"{cap['max_sessions']} sessions",
        )
    return t


def print_summary(report: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    console.print(summary_table(report))
    if report.get("steps"):
        st = Table(title="steps", header_style="bold")
        cols = ("sessions", "metric", "p50_ms", "p99_ms", "tokens_per_s", "sessions_failed")
        for col in cols:
            st.add_column(col, justify="right")
        for step in report["steps"]:
            st.add_row(*(str(step[k]) for k in cols))
        console.print(st)
