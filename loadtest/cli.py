"""``parley loadtest``: load, break and measure a Parley deployment.

Exit status: 0 when every event arrived exactly once and in order, 1 when any
was lost, duplicated or out of order (or a reply differed from an identical
conversation's), 2 for bad arguments, 3 when nothing could be measured (no
session connected, or a turn-taking run completed no turn).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any, NoReturn

from .config import LoadConfig

EXIT_OK, EXIT_INTEGRITY, EXIT_USAGE, EXIT_NOTHING = 0, 1, 2, 3


HELP_HINT = "see 'parley loadtest --help'"


class _Parser(argparse.ArgumentParser):
    """A usage error is one line, like every ``parley`` error (``parley: <what>: <what to do>``)."""

    def error(self, message: str) -> NoReturn:
        print(f"parley: {message}: {HELP_HINT}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    d = LoadConfig()
    p = _Parser(
        prog="parley loadtest",
        description="Drive N concurrent sessions of T turns against a Parley server and verify every event.",
        epilog="The token pace and reply length are the server's echo settings "
        "(PARLEY_ECHO_TOKENS_PER_SECOND, PARLEY_ECHO_REPLY_TOKENS); tell this tool with "
        "--server-tokens-per-second and --reply-tokens so it can measure lag and spread chaos drops.",
    )
    p.add_argument(
        "--url",
        action="append",
        help=f"WebSocket URL (default {d.url}); repeat for several instances of one deployment: "
        "sessions are spread over them",
    )
    p.add_argument(
        "--resume-elsewhere",
        action="store_true",
        help="after a drop, reconnect to the next --url (resume on another instance)",
    )
    p.add_argument(
        "--transport",
        choices=("ws", "sse"),
        default=d.transport,
        help="ws: the WebSocket; sse: each turn a POST answered as server-sent events (the --url's host)",
    )
    p.add_argument("-n", "--sessions", type=int, default=d.sessions, help="concurrent sessions")
    p.add_argument("-t", "--turns", type=int, default=d.turns, help="turns per session (0: idle connections)")
    p.add_argument("--ramp", type=float, default=d.ramp_s, help="seconds over which sessions start")
    p.add_argument("--duration", type=float, default=d.duration_s, help="no turn starts after this (s)")
    p.add_argument(
        "--grace", type=float, default=d.grace_s, help="running turns may finish for this long (s)"
    )
    p.add_argument("--turn-timeout", type=float, default=d.turn_timeout_s, help="seconds per turn")
    p.add_argument("--think", type=float, default=d.think_s, help="pause between turns (s)")
    p.add_argument("--hold", type=float, default=d.hold_s, help="idle mode (-t 0): hold connections (s)")
    p.add_argument(
        "--burst",
        action="store_true",
        help="turn starts in bursts: every session sends turn k at the same moment, once all finished "
        "turn k-1 (reports server CPU per turn start with --server-pid)",
    )
    p.add_argument("--connect-concurrency", type=int, default=d.connect_concurrency)
    p.add_argument("--content", default=d.content, help="user turn text; {turn} is the turn number")
    p.add_argument(
        "--tool-calls",
        action="store_true",
        help='a tool round trip per turn: declare a tool with tool_choice "required", answer each call',
    )
    p.add_argument("--token", help="JWT for a server with auth on")
    p.add_argument("--tenant", help="hello.metadata.tenant_id (auth off)")
    chaos = p.add_argument_group("chaos")
    chaos.add_argument("--chaos", type=float, default=d.chaos, metavar="P", help="drop each response w.p. P")
    chaos.add_argument("--chaos-at", type=int, metavar="TOKENS", help="drop after this many tokens")
    chaos.add_argument("--reply-tokens", type=int, default=d.reply_tokens, help="expected reply length")
    chaos.add_argument("--reconnect-delay", type=float, default=d.reconnect_delay_s, help="seconds")
    chaos.add_argument("--max-resumes", type=int, default=d.max_resumes, help="per session")
    checks = p.add_argument_group("measurement")
    checks.add_argument(
        "--server-tokens-per-second",
        type=float,
        default=d.server_tokens_per_second,
        help="the server's echo pace (documentation, and enables the schedule-lag figure)",
    )
    checks.add_argument(
        "--no-text-check", action="store_true", help="do not compare replies (non-deterministic models)"
    )
    checks.add_argument("--server-pid", type=int, action="append", default=[], help="measure CPU/memory")
    checks.add_argument("--redis-url", help="read the store's INFO commandstats before and after")
    steps = p.add_argument_group("capacity search (step mode)")
    steps.add_argument("--step-sessions", type=int, default=0, help="sessions added per step")
    steps.add_argument("--step-seconds", type=float, default=d.step_s)
    steps.add_argument("--until-p99-ms", type=float, default=d.until_p99_ms)
    steps.add_argument("--step-metric", choices=("auto", "delivery", "schedule_lag", "gap"), default="auto")
    out = p.add_argument_group("output")
    out.add_argument("--json", metavar="FILE", help="write every figure, the settings and the machine")
    out.add_argument(
        "--plot",
        metavar="FILE.png",
        help="latency over time and histograms (needs matplotlib: pip install 'parley[plot]')",
    )
    out.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no table")
    out.add_argument("--no-uvloop", action="store_true", help="use the stock asyncio loop")
    out.add_argument("--seed", type=int, default=d.seed)
    return p


def config_from_args(args: argparse.Namespace) -> LoadConfig:
    return LoadConfig(
        url=(args.url or [LoadConfig.url])[0],
        also_urls=(args.url or [])[1:],
        resume_elsewhere=args.resume_elsewhere,
        transport=args.transport,
        sessions=args.sessions,
        turns=args.turns,
        ramp_s=args.ramp,
        duration_s=args.duration,
        grace_s=args.grace,
        turn_timeout_s=args.turn_timeout,
        think_s=args.think,
        hold_s=args.hold,
        burst=args.burst,
        connect_concurrency=args.connect_concurrency,
        content=args.content,
        token=args.token,
        tenant=args.tenant,
        tool_calls=args.tool_calls,
        chaos=args.chaos,
        chaos_at=args.chaos_at,
        reply_tokens=args.reply_tokens,
        reconnect_delay_s=args.reconnect_delay,
        max_resumes=args.max_resumes,
        server_tokens_per_second=args.server_tokens_per_second,
        text_check=not args.no_text_check,
        step_sessions=args.step_sessions,
        step_s=args.step_seconds,
        until_p99_ms=args.until_p99_ms,
        step_metric=args.step_metric,
        server_pids=args.server_pid,
        redis_url=args.redis_url,
        progress=not args.quiet,
        seed=args.seed,
    )


def _validate(cfg: LoadConfig) -> str | None:
    if not all(u.startswith(("ws://", "wss://")) for u in cfg.urls):
        return "--url must be ws:// or wss://"
    if cfg.resume_elsewhere and len(cfg.urls) < 2:
        return "--resume-elsewhere needs at least two --url"
    if cfg.sessions < 1:
        return "--sessions must be at least 1"
    if cfg.turns < 0:
        return "--turns must be >= 0"
    if not 0 <= cfg.chaos <= 1:
        return "--chaos is a probability (0..1)"
    if cfg.chaos_at is not None and cfg.chaos_at < 0:
        return "--chaos-at must be >= 0"
    if cfg.duration_s <= 0 or cfg.turn_timeout_s <= 0:
        return "--duration and --turn-timeout must be positive"
    if cfg.burst and (cfg.turns == 0 or cfg.step_sessions):
        return "--burst needs turns (-t >= 1) and no step mode"
    if cfg.step_sessions and cfg.turns == 0:
        return "step mode needs turns (-t >= 1; sessions then take turns until the run stops)"
    if cfg.reply_tokens < 1:
        return "--reply-tokens must be >= 1"
    if cfg.transport == "sse" and (cfg.turns == 0 or cfg.chaos or cfg.chaos_at is not None):
        return "--transport sse takes turns (-t >= 1) and has no chaos mode"
    if cfg.transport == "sse" and (cfg.burst or cfg.tool_calls):
        return "--transport sse has no --burst or --tool-calls mode yet (use the WebSocket)"
    return None


class _Progress:
    """The live rich progress bar: sessions, turns, tokens/s, errors."""

    def __init__(self, cfg: LoadConfig) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("[bold]{task.fields[phase]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
            refresh_per_second=4,
        )
        idle = cfg.turns == 0
        total = cfg.sessions if idle or cfg.step_sessions else cfg.sessions * cfg.turns
        self.task = self.progress.add_task("load", total=total, phase="starting", info="")
        self.idle = idle
        self.stepped = bool(cfg.step_sessions)
        self._last = (time.perf_counter(), 0)

    def __call__(self, ctx: Any, state: dict[str, Any]) -> None:
        c = ctx.stats.counts
        now = time.perf_counter()
        t_prev, tok_prev = self._last
        rate = (c["tokens"] - tok_prev) / (now - t_prev) if now > t_prev else 0.0
        self._last = (now, c["tokens"])
        live = c["live"]
        bad = sum(c[k] for k in ("lost", "duplicated", "out_of_order", "token_mismatch", "text_mismatch"))
        info = (
            f"sessions {live} live/{c['sessions_started']}  {rate:,.0f} tok/s  "
            f"errors {sum(ctx.stats.errors.values())}  failed {c['sessions_failed']}  resumes {c['resumes']}"
            + (f"  [red]integrity {bad}[/]" if bad else "")
        )
        done = (
            c["connected"] + c["sessions_failed"] if self.idle else c["turns_completed"] + c["turns_failed"]
        )
        if self.stepped:
            done = c["sessions_started"]
        self.progress.update(self.task, completed=done, phase=state.get("phase", ""), info=info)


def exit_code(report: dict[str, Any]) -> int:
    if not report["integrity"]["ok"]:
        return EXIT_INTEGRITY
    if report["sessions"]["connected"] == 0:
        return EXIT_NOTHING
    if report["settings"]["turns"] and report["turns"]["completed"] == 0:
        return EXIT_NOTHING
    return EXIT_OK


def _new_loop(use_uvloop: bool) -> asyncio.AbstractEventLoop:
    if use_uvloop:
        try:
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        except ImportError:
            pass
    return asyncio.new_event_loop()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    problem = _validate(cfg)
    if problem:
        print(f"parley: {problem}: {HELP_HINT}", file=sys.stderr)
        return EXIT_USAGE
    if args.plot:
        from .plot import missing_dependency

        missing = missing_dependency()
        if missing:  # told now, not after a run that may take minutes
            print(
                f"parley: --plot needs {missing}: pip install 'parley[plot]', or drop --plot", file=sys.stderr
            )
            return EXIT_USAGE
    from .report import print_summary
    from .runner import run_load

    bar = _Progress(cfg) if cfg.progress else None
    loop = _new_loop(not args.no_uvloop)
    try:
        if bar is not None:
            with bar.progress:
                report, stats = loop.run_until_complete(run_load(cfg, bar))
        else:
            report, stats = loop.run_until_complete(run_load(cfg))
    except KeyboardInterrupt:
        return 130
    finally:
        loop.close()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    if args.plot:
        from .plot import plot

        try:
            plot(stats, report, args.plot)
        except ImportError:
            print("parley loadtest: --plot needs matplotlib: pip install 'parley[plot]'", file=sys.stderr)
    if not args.quiet:
        print_summary(report)
    code = exit_code(report)
    if code == EXIT_INTEGRITY:
        print("parley loadtest: FAILED: events were lost, duplicated or out of order", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
