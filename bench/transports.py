"""SSE next to the WebSocket, from one run: one ``parley serve``, the same load over each transport.

    python -m bench.transports [--sessions 100] [--turns 10] [--tokens 60] [--rounds 2]

One server process (memory store, unthrottled echo) serves every round; each round runs
``parley loadtest`` once over the WebSocket and once with ``--transport sse`` (each turn a
POST answered as server-sent events), alternating, with ``--server-pid`` so the server's CPU
per token is measured. Results go to bench/results/transports-<time>/ and are printed as a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from .procs import ROOT, free_port

RESULTS = ROOT / "bench" / "results"


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=0.5) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def run(sessions: int, turns: int, tokens: int, rounds: int, out: Path) -> list[dict[str, Any]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    env.update(
        PARLEY_PORT=str(port),
        PARLEY_ECHO_TOKENS_PER_SECOND="0",
        PARLEY_ECHO_REPLY_TOKENS=str(tokens),
        PARLEY_LOG_LEVEL="warning",
    )
    out.mkdir(parents=True, exist_ok=True)
    with (out / "server.log").open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "parley.server.cli", "serve"], cwd=ROOT, env=env, stdout=log, stderr=log
        )
    rows: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + 20
        while not _healthy(f"http://127.0.0.1:{port}"):
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"parley did not start (see {out / 'server.log'})")
            time.sleep(0.05)
        for n in range(rounds):
            for transport in ("ws", "sse"):
                path = out / f"{transport}-{n + 1}.json"
                cmd = [
                    sys.executable, "-m", "parley.loadtest", "--url", f"ws://127.0.0.1:{port}/v1/ws",
                    "--transport", transport, "-n", str(sessions), "-t", str(turns),
                    "--reply-tokens", str(tokens), "--duration", "120", "--server-pid", str(server.pid),
                    "-q", "--json", str(path),
                ]  # fmt: skip
                subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, timeout=300, check=False)
                report = json.loads(path.read_text())
                lat = report["latency_ms"]
                rows.append(
                    {
                        "round": n + 1,
                        "transport": transport,
                        "tokens": report["tokens"],
                        "tokens_per_s": report["tokens_per_s"],
                        "server_cpu_s_per_mtok": report["server"]["cpu_s_per_million_tokens"],
                        "client_cpu_s": report["client"].get("cpu_s"),
                        "ttft_p50_ms": lat["ttft"].get("p50"),
                        "ttft_p99_ms": lat["ttft"].get("p99"),
                        "integrity_ok": report["integrity"]["ok"],
                        "errors": sum(report["errors"].values()),
                    }
                )
    finally:
        server.terminate()
        server.wait(30)
    (out / "summary.json").write_text(json.dumps(rows, indent=2))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.transports")
    p.add_argument("--sessions", type=int, default=100)
    p.add_argument("--turns", type=int, default=10)
    p.add_argument("--tokens", type=int, default=60)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    out = RESULTS / time.strftime("transports-%Y%m%d-%H%M%S")
    rows = run(args.sessions, args.turns, args.tokens, args.rounds, out)
    print("| round | transport | tokens/s | server CPU-s per Mtok | TTFT p50 / p99 ms | integrity |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['round']} | {r['transport']} | {r['tokens_per_s']:,.0f} | {r['server_cpu_s_per_mtok']} "
            f"| {r['ttft_p50_ms']} / {r['ttft_p99_ms']} | {'ok' if r['integrity_ok'] else 'FAILED'} |"
        )
    print(f"results: {out}")


if __name__ == "__main__":
    main()
