"""Run a load: start sessions (ramped, stepped or idle), bound everything in time, collect a report.

Every loop here is bounded: sessions by ``--sessions``, turns by ``--turns`` and
``--duration``; whatever still runs at duration + grace is cancelled and counted
as a ``deadline`` error.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from collections.abc import Callable
from typing import Any

from .config import LoadConfig
from .report import build_report
from .session import BurstGate, LoadSession, RunContext
from .sse import SseLoadSession
from .stats import Histogram, Stats
from .target import RedisProbe, ServerProbe

#: How often the progress callback runs.
PROGRESS_INTERVAL_S = 0.25

ProgressFn = Callable[[RunContext, dict[str, Any]], None]


def _client_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def _progress_loop(ctx: RunContext, fn: ProgressFn, state: dict[str, Any]) -> None:
    while True:
        fn(ctx, state)
        await asyncio.sleep(PROGRESS_INTERVAL_S)


async def _gather_bounded(tasks: list[asyncio.Task[None]], until: float) -> None:
    """Wait for tasks until ``until`` (perf_counter); cancel the rest and wait for them to unwind."""
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=max(until - time.perf_counter(), 0))
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=5)


async def run_load(cfg: LoadConfig, progress: ProgressFn | None = None) -> tuple[dict[str, Any], Stats]:
    """Run one load as configured; return the report (see ``report.build_report``) and the raw stats."""
    ctx = RunContext(cfg)
    ctx.connect_gate = asyncio.Semaphore(max(cfg.connect_concurrency, 1))
    state: dict[str, Any] = {"target_sessions": cfg.sessions, "phase": "starting", "steps": []}
    server = ServerProbe(cfg.server_pids) if cfg.server_pids else None
    redis_probe = RedisProbe(cfg.redis_url) if cfg.redis_url else None
    if server:
        server.start()
    if redis_probe:
        redis_probe.start()
    cpu0 = _client_cpu()
    started_wall = time.time()
    ctx.t0 = time.perf_counter()
    ctx.stop_turns_at = ctx.t0 + cfg.duration_s
    hard_stop = ctx.t0 + cfg.duration_s + cfg.grace_s
    ticker = asyncio.create_task(_progress_loop(ctx, progress, state)) if progress else None
    sessions: list[LoadSession] = []
    try:
        if cfg.turns == 0:
            await _run_idle(ctx, sessions, state, server, hard_stop)
        elif cfg.burst:
            await _run_burst(ctx, sessions, state, server, redis_probe, hard_stop)
        elif cfg.step_sessions > 0:
            await _run_steps(ctx, sessions, state, hard_stop)
        else:
            await _run_fixed(ctx, sessions, state, hard_stop)
    finally:
        if ticker:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        for s in sessions:
            s.abort()
    wall_s = time.perf_counter() - ctx.t0
    client_cpu = _client_cpu() - cpu0
    if server:
        server.stop()
    if redis_probe:
        redis_probe.stop()
    state["phase"] = "done"
    if progress:
        progress(ctx, state)
    report = build_report(
        cfg,
        ctx,
        wall_s=wall_s,
        started_wall=started_wall,
        client_cpu_s=client_cpu,
        server=server,
        redis=redis_probe,
        steps=state["steps"],
        capacity=state.get("capacity"),
        bursts=state.get("bursts"),
    )
    return report, ctx.stats


async def _spawn(
    ctx: RunContext,
    sessions: list[LoadSession],
    count: int,
    spread_s: float,
    make: Callable[[LoadSession], Any],
) -> list[asyncio.Task[None]]:
    """Start ``count`` sessions evenly over ``spread_s`` seconds."""
    tasks: list[asyncio.Task[None]] = []
    begin = time.perf_counter()
    for i in range(count):
        if spread_s > 0 and count > 1:
            due = begin + spread_s * i / count
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        s = (SseLoadSession if ctx.config.transport == "sse" else LoadSession)(ctx, len(sessions))
        sessions.append(s)
        tasks.append(asyncio.create_task(make(s)))
    return tasks


async def _run_fixed(
    ctx: RunContext, sessions: list[LoadSession], state: dict[str, Any], hard_stop: float
) -> None:
    cfg = ctx.config
    state["phase"] = "running"
    state["target_turns"] = cfg.sessions * cfg.turns
    spawner = asyncio.create_task(_spawn(ctx, sessions, cfg.sessions, cfg.ramp_s, lambda s: s.run(cfg.turns)))
    try:
        tasks = await asyncio.wait_for(asyncio.shield(spawner), max(hard_stop - time.perf_counter(), 0))
    except TimeoutError:
        spawner.cancel()
        return
    await _gather_bounded(tasks, hard_stop)


async def _run_idle(
    ctx: RunContext,
    sessions: list[LoadSession],
    state: dict[str, Any],
    server: ServerProbe | None,
    hard_stop: float,
) -> None:
    """Open every connection, hold them ``hold_s`` once all are open, then close them."""
    cfg = ctx.config
    release: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    ctx.expect_settled = cfg.sessions
    state["phase"] = "connecting"
    tasks = await _spawn(ctx, sessions, cfg.sessions, cfg.ramp_s, lambda s: s.hold(release))
    connect_deadline = min(hard_stop, ctx.t0 + cfg.duration_s)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(ctx.all_settled.wait(), max(connect_deadline - time.perf_counter(), 0))
    state["all_connected_s"] = round(time.perf_counter() - ctx.t0, 3)
    state["phase"] = "holding"
    if server:
        server.mark_loaded()
    hold_end = min(time.perf_counter() + cfg.hold_s, hard_stop)
    await asyncio.sleep(max(hold_end - time.perf_counter(), 0))
    if server:
        server.mark_loaded()  # after the hold: heartbeats have run on every connection
    release.set_result(None)
    state["phase"] = "closing"
    await _gather_bounded(tasks, time.perf_counter() + 10)


async def _run_burst(
    ctx: RunContext,
    sessions: list[LoadSession],
    state: dict[str, Any],
    server: ServerProbe | None,
    redis: RedisProbe | None,
    hard_stop: float,
) -> None:
    """Connect every session; then, turn after turn, release every session's turn at once.

    Each burst reads the server's (and Redis's) CPU when the gate opens and again when every
    released turn has its first token: the CPU a burst of turn starts costs, up to the first token.
    """
    cfg = ctx.config
    gate = ctx.burst = BurstGate(cfg.sessions)
    state["phase"] = "connecting"
    tasks = await _spawn(ctx, sessions, cfg.sessions, cfg.ramp_s, lambda s: s.run_bursts(cfg.turns))
    rounds: list[dict[str, Any]] = state.setdefault("bursts", [])
    for turn in range(cfg.turns):
        try:
            await asyncio.wait_for(gate.all_arrived.wait(), max(ctx.stop_turns_at - time.perf_counter(), 0))
        except TimeoutError:
            break
        if not gate.arrived:
            break
        state["phase"] = f"burst {turn + 1}"
        cpu0 = server.cpu_now() if server else None
        redis0 = redis.cpu_now() if redis else None
        begin = time.perf_counter()
        n = gate.open()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(gate.all_first.wait(), cfg.turn_timeout_s)
        elapsed = time.perf_counter() - begin
        burst: dict[str, Any] = {"turn_starts": n, "first_tokens": gate.firsts}
        burst["all_first_s"] = round(elapsed, 4)
        if cpu0 is not None and server is not None:
            burst["server_cpu_s"] = round(server.cpu_now() - cpu0, 3)
        if redis0 is not None and redis is not None:
            burst["redis_cpu_s"] = round(redis.cpu_now() - redis0, 3)
        rounds.append(burst)
    state["phase"] = "draining"
    await _gather_bounded(tasks, hard_stop)


def _step_metric(ctx: RunContext) -> str:
    cfg = ctx.config
    if cfg.step_metric != "auto":
        return cfg.step_metric
    assert ctx.windows is not None
    if ctx.stats.hist["delivery"].count:
        return "delivery"
    if cfg.server_tokens_per_second:
        return "schedule_lag"
    return "gap"


async def _run_steps(
    ctx: RunContext, sessions: list[LoadSession], state: dict[str, Any], hard_stop: float
) -> None:
    """Add ``step_sessions`` every ``step_s`` until a step's latency p99 passes ``until_p99_ms``."""
    cfg = ctx.config
    tasks: list[asyncio.Task[None]] = []
    steps: list[dict[str, Any]] = state["steps"]
    best = 0
    counts = ctx.stats.counts
    stop_reason = "max_sessions"
    while len(sessions) < cfg.sessions:
        if time.perf_counter() + cfg.step_s > ctx.stop_turns_at:
            stop_reason = "duration"
            break
        add = min(cfg.step_sessions, cfg.sessions - len(sessions))
        state["phase"] = f"step {len(steps) + 1}: {len(sessions) + add} sessions"
        ctx.windows = {m: Histogram() for m in ("delivery", "schedule_lag", "gap")}
        tokens0, failed0 = counts["tokens"], counts["sessions_failed"]
        begin = time.perf_counter()
        tasks += await _spawn(ctx, sessions, add, cfg.step_s / 2, lambda s: s.run(None))
        await asyncio.sleep(max(begin + cfg.step_s - time.perf_counter(), 0))
        metric = _step_metric(ctx)
        window = ctx.windows[metric]
        p99 = window.percentile(99)
        elapsed = time.perf_counter() - begin
        step = {
            "sessions": len(sessions),
            "metric": metric,
            "p99_ms": None if p99 is None else round(p99, 3),
            "p50_ms": None if not window.count else round(window.percentile(50) or 0, 3),
            "samples": window.count,
            "p99_by_metric_ms": {
                m: round(h.percentile(99) or 0, 3) for m, h in ctx.windows.items() if h.count
            },
            "tokens_per_s": round((counts["tokens"] - tokens0) / elapsed, 1),
            "sessions_failed": counts["sessions_failed"] - failed0,
        }
        steps.append(step)
        if p99 is None or p99 > cfg.until_p99_ms or step["sessions_failed"]:
            stop_reason = "threshold"
            break
        best = len(sessions)
    ctx.windows = None
    state["capacity"] = {
        "max_sessions": best,
        "metric": steps[-1]["metric"] if steps else None,
        "threshold_ms": cfg.until_p99_ms,
        "stopped_by": stop_reason,
    }
    state["phase"] = "draining"
    ctx.stop_turns_at = time.perf_counter()  # running turns finish; no new ones start
    await _gather_bounded(tasks, min(hard_stop, time.perf_counter() + cfg.grace_s))
