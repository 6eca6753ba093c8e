"""Where a turn start's time goes: py-spy samples of a burst load, attributed to the parts of a turn.

    python -m bench.turn_profile                 # memory and Redis, 10 bursts of 200 turn starts each
    python -m bench.turn_profile --store redis --bursts 5

Starts Parley (the echo model, replies of one token, so a response is little more than
its start and its end), connects 200 sessions, samples the server with ``py-spy record``
(``pip install py-spy``; it needs ptrace rights over its own children) while
``parley loadtest --burst`` sends every session's turn at the same moment, again and
again, and attributes each sampled stack to one part (first match in ``PARTS``). The
same run's ``/proc`` CPU per turn start (release -> every first token) is printed
next to it. Results in docs/benchmarks.md ("Issue 20").

py-spy counts a thread as busy while it is runnable, so on a loaded 2-core machine the
sampled time exceeds the CPU time: read the shares, and scale them by the measured CPU.
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .procs import ROOT, Processes

#: (part, substrings of a sampled stack): a sample counts for the first part that matches.
PARTS: list[tuple[str, tuple[str, ...]]] = [
    ("connect (not a turn start)", (
        "handle_websocket_upgrade", "WebSocketConnection._start", "Admission.", "handle_connect",
        "WebSocket.accept", "ServerProtocol.accept",
    )),
    ("finish (not a turn start)", (
        "Generations._finish", "Generations._completed", "Runtime._on_finish", ".finish (",
    )),
    ("logging", ("Logger.", "logging/__init__")),
    ("metrics", ("prometheus_client", "Metrics.")),
    ("limits", ("FrameBudget", "Limiter", "TokenMeter", "take_message")),
    ("parse + validate", ("parse_client", "validate_json", "validate_python")),
    ("store accept", (
        ".accept (memory.py", ".accept (redis_store.py", "RedisStore._run", "Multiplexed.", "_Pipe.",
        "RedisStore._args", "RedisStore._index",
    )),
    ("event encoding", ("encode (codec.py", "model_dump_json", "encode_delta")),
    ("ids", ("new_id", "uuid4")),
    ("context (history -> model messages)", ("build_messages", "build_context", "trim_context")),
    ("task creation", ("Generations.launch", "create_task", "Generation.__init__")),
    ("provider start (echo, to its first token)", ("EchoProvider.stream", "MeteredProvider.stream")),
    ("first delta: write + delivery", (
        "DeltaWriter", "append_deltas", "Fanout.publish", "SessionReader.deliver", "write_some", "try_write",
    )),
    ("redis-py pool (index writes, pub/sub)", ("redis/asyncio", "redis/_parsers")),
    ("frame receive (uvicorn, websockets)", (
        "data_received", "receive_data", "WebSocket.receive", "run_asgi",
    )),
    ("dispatch and handler glue", (
        "Dispatcher.dispatch", "Handlers.message_send", "SessionService.", "Generations._run", "TurnPacer",
    )),
]  # fmt: skip
LOOP = "event loop (uvloop: poll, socket I/O, callbacks)"


def attribute(raw: Path) -> collections.Counter[str]:
    """Samples per part from py-spy's raw (collapsed) output."""
    out: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        for part, patterns in PARTS:
            if any(p in stack for p in patterns):
                out[part] += int(n)
                break
        else:
            out[LOOP if stack.split(";")[-1].startswith("Runner.run") else "other"] += int(n)
    return out


def profile(store: str, bursts: int, sessions: int, rate: int, out: Path) -> dict[str, object]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    with Processes(out / "logs") as procs:
        url = "memory://"
        if store == "redis":
            url = procs.redis().url
        env = {
            "PARLEY_STORE": url,
            "PARLEY_ECHO_TOKENS_PER_SECOND": "50",
            "PARLEY_ECHO_REPLY_TOKENS": "1",
            "PARLEY_ECHO_TTFT_MS": "0",
        }
        server = procs.server("parley", env, tag=store)
        load = [sys.executable, "-m", "parley.loadtest", "--url", server.url, "-q", "--burst"]
        load += ["-n", str(sessions), "--reply-tokens", "1", "--server-pid", str(server.pid)]
        subprocess.run([*load, "-t", "2"], cwd=ROOT, check=True, timeout=120, capture_output=True)  # warm-up
        raw, report = out / f"{store}.txt", out / f"{store}.json"
        sampler = subprocess.Popen(
            [spy, "record", "-p", str(server.pid), "-r", str(rate), "--format", "raw", "-o", str(raw),
             "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            time.sleep(1.0)  # py-spy attaches
            subprocess.run(
                [*load, "-t", str(bursts), "--json", str(report)], cwd=ROOT, check=True, timeout=300
            )
        finally:
            sampler.send_signal(2)  # SIGINT: py-spy writes its output
            sampler.wait(30)
    r = json.loads(report.read_text())
    starts = r["bursts"]["turn_starts"]
    parts = attribute(raw)
    turn = {k: v for k, v in parts.items() if "not a turn start" not in k}
    total = sum(turn.values())
    return {
        "store": store,
        "turn_starts": starts,
        "cpu_ms_per_turn_start": r["bursts"].get("server_cpu_ms_per_turn_start"),
        "ttft_p50": r["latency_ms"]["ttft"].get("p50"),
        "ttft_p99": r["latency_ms"]["ttft"].get("p99"),
        "sampled_ms_per_turn_start": round(total / rate / starts * 1000, 3),
        "shares": {k: round(v / total * 100, 1) for k, v in sorted(turn.items(), key=lambda kv: -kv[1])},
    }


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.turn_profile", description=__doc__.split("\n\n")[0])
    p.add_argument("--store", choices=("memory", "redis", "both"), default="both")
    p.add_argument("--bursts", type=int, default=10)
    p.add_argument("--sessions", type=int, default=200)
    p.add_argument("--rate", type=int, default=1000, help="py-spy samples per second")
    args = p.parse_args()
    out = Path(tempfile.mkdtemp(prefix="parley-turn-profile-"))
    for store in ("memory", "redis") if args.store == "both" else (args.store,):
        res = profile(store, args.bursts, args.sessions, args.rate, out)
        print(
            f"{store}: {res['turn_starts']} turn starts; CPU {res['cpu_ms_per_turn_start']} ms per turn "
            f"start (/proc); sampled {res['sampled_ms_per_turn_start']} ms; "
            f"TTFT p50 / p99 {res['ttft_p50']} / {res['ttft_p99']} ms"
        )
        for part, share in res["shares"].items():  # type: ignore[attr-defined]
            print(f"  {share:5.1f} %  {part}")
    print(f"raw samples and reports in {out}")


if __name__ == "__main__":
    main()
