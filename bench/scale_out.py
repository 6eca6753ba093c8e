"""Scale-out figures on one machine: one vs two instances, cross-instance cancel, crash recovery.

    python -m bench.scale_out [--sessions 200] [--tokens 200] [--cancel-trials 100] [--kill-trials 3]

Every process is real: a private redis-server, `parley serve` instances, and the load
client (`python -m parley.loadtest`) in separate processes. Results go to
bench/results/scale-out-<time>/summary.json and are printed as a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from parley.client import ParleyClient

from .procs import ROOT, Processes

RESULTS = ROOT / "bench" / "results"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def loadtest(urls: list[str], sessions: int, tokens: int, turns: int, out: Path) -> dict[str, Any]:
    """Run one load-client process per URL at once (sessions split evenly); merge their reports."""
    procs = []
    for i, url in enumerate(urls):
        path = out.with_name(f"{out.stem}-{i}.json")
        cmd = [
            sys.executable, "-m", "parley.loadtest", "--url", url, "-n", str(sessions // len(urls)),
            "-t", str(turns), "--reply-tokens", str(tokens), "--duration", "120", "-q", "--json", str(path),
        ]  # fmt: skip
        procs.append((subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL), path))
    reports = []
    for proc, path in procs:
        proc.wait(300)
        reports.append(json.loads(path.read_text()))
    return {
        "tokens": sum(r["tokens"] for r in reports),
        "tokens_per_s": round(sum(r["tokens_per_s"] or 0 for r in reports), 1),
        "delivery_p99_ms": max((r["latency_ms"]["delivery"].get("p99") or 0) for r in reports),
        "ttft_p99_ms": max((r["latency_ms"]["ttft"].get("p99") or 0) for r in reports),
        "integrity_ok": all(r["integrity"]["ok"] for r in reports),
        "errors": sum(sum(r["errors"].values()) for r in reports),
    }


async def cancel_latency(a: str, b: str, trials: int) -> list[float]:
    """Generate on A, cancel through B; time from sending the cancel to B receiving the terminal event."""
    out = []
    async with ParleyClient(a) as gen_side:
        async with ParleyClient(
            b, session_id=gen_side.session_id, resume_token=gen_side.resume_token
        ) as other:
            for i in range(trials):
                cid = await gen_side.send(f"cancel trial {i}")
                started = await other.next_event("response.started")
                await other.next_event("response.delta")
                t0 = time.perf_counter()
                await other.cancel(started["response_id"])
                done = await other.next_event("response.completed")
                out.append((time.perf_counter() - t0) * 1000)
                assert done["finish_reason"] == "cancelled"
                await gen_side.collect(cid)
    return out


async def crash_recovery(p: Processes, env: dict[str, str]) -> float:
    """kill -9 of the generating instance -> seconds until the other instance logs `interrupted`."""
    a = p.server("parley", env, tag="victim")
    b = p.server("parley", env, tag="survivor")
    c = ParleyClient(a.url)
    await c.connect()
    cid = await c.send("doomed")
    await c.next_event("response.delta")
    c.url = b.url
    t0 = time.monotonic()
    a.proc.send_signal(signal.SIGKILL)
    reply = await c.collect(cid, timeout=30)
    elapsed = time.monotonic() - t0
    assert reply.finish_reason == "interrupted"
    await c.close()
    p.stop(a.proc)
    p.stop(b.proc)
    return elapsed


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = RESULTS / f"scale-out-{stamp}"
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"command": " ".join(sys.argv), "settings": vars(args)}
    with Processes(out_dir / "logs") as p:
        redis = p.redis()
        env = {
            "PARLEY_STORE": redis.url,
            "PARLEY_ECHO_TOKENS_PER_SECOND": "0",
            "PARLEY_ECHO_REPLY_TOKENS": str(args.tokens),
            "PARLEY_EVENT_TIMESTAMPS": "true",  # deltas carry their append time: delivery latency
        }
        one = p.server("parley", env, tag="solo")
        results["one_instance"] = loadtest(
            [one.url], args.sessions, args.tokens, args.turns, out_dir / "one.json"
        )
        p.stop(one.proc)
        a = p.server("parley", env, tag="a")
        b = p.server("parley", env, tag="b")
        results["two_instances"] = loadtest(
            [a.url, b.url], args.sessions, args.tokens, args.turns, out_dir / "two.json"
        )
        p.stop(a.proc)
        p.stop(b.proc)
        paced = {**env, "PARLEY_ECHO_TOKENS_PER_SECOND": "50"}
        a = p.server("parley", paced, tag="cancel-a")
        b = p.server("parley", paced, tag="cancel-b")
        lat = await cancel_latency(a.url, b.url, args.cancel_trials)
        results["cross_instance_cancel_ms"] = {
            "trials": len(lat),
            "p50": round(statistics.median(lat), 2),
            "p99": round(pct(lat, 0.99), 2),
            "max": round(max(lat), 2),
        }
        p.stop(a.proc)
        p.stop(b.proc)
        kills = [await crash_recovery(p, paced) for _ in range(args.kill_trials)]
        results["kill9_to_interrupted_s"] = {"trials": len(kills), "values": [round(k, 2) for k in kills]}
    (out_dir / "summary.json").write_text(json.dumps(results, indent=2))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--cancel-trials", type=int, default=100)
    parser.add_argument("--kill-trials", type=int, default=3)
    args = parser.parse_args()
    results = asyncio.run(main_async(args))
    print(json.dumps({k: v for k, v in results.items() if k not in ("settings",)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
