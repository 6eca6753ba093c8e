"""Which Redis client for the hot commands: Parley's pipelined connection or a maintained client?

    python -m bench.redis_clients            # against a private redis-server it starts
    python -m bench.redis_clients --rounds 5

The same workload for every client, in one process, alternating: bursts of 200 concurrent
script calls (``EVALSHA`` with 4 keys and 6 arguments that touches a hash and a stream, the
shape of ``ACCEPT`` and of a turn's other scripts), as a burst of turn starts makes, and
single calls one after another (a lone turn). Reported per client: the calling process's
CPU per command (``time.process_time``) and the wall time of a burst and of a call.

- ``mux``: ``sessions/redis_mux.py`` (one pipelined connection, hiredis packs and parses);
- ``redis-py``: ``redis.asyncio`` with the store's pool (``BlockingConnectionPool``, 64
  connections) and its own packing;
- ``redis-py+patch``: the same with ``sessions/fastpath.py``'s hiredis packing (what the store's
  pool runs);
- ``coredis``: ``coredis.Redis`` (multiplexes most commands over a few connections), if installed;
- ``glide``: ``valkey-glide``'s ``GlideClient`` (a Rust core that pipelines every request of the
  process over one connection), if installed.

Numbers in docs/benchmarks.md ("Issue 20").
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from .procs import Processes

SCRIPT = """
redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', 100, '*', 'd', ARGV[1])
return {ARGV[2], redis.call('HGET', KEYS[1], 'seq')}
"""
BURST = 200
ARGS = ('{"type":"message.accepted","client_msg_id":"c1","message_id":"m_1","content":"hello"}',
        "accepted", "3", "4", "5", "6")  # fmt: skip

Call = Callable[[int], Awaitable[Any]]


def _keys(i: int) -> list[str]:
    tag = f"{{s_{i % BURST:04d}}}"
    return [f"parley:s:{tag}", f"parley:s:{tag}:log", f"parley:s:{tag}:h", f"parley:s:{tag}:r"]


async def mux_client(url: str, sha: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    from parley.sessions.redis_mux import Multiplexed

    mux = Multiplexed(url, connect_timeout=5, reply_timeout=5)

    async def call(i: int) -> Any:
        return await mux.evalsha(sha, SCRIPT, _keys(i), ARGS)

    return call, mux.aclose


async def redis_py_client(url: str, sha: str, patched: bool) -> tuple[Call, Callable[[], Awaitable[None]]]:
    import redis.asyncio as aioredis

    from parley.sessions.fastpath import with_hiredis_packing

    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=64, timeout=5, decode_responses=True)
    if patched:
        pool.connection_class = with_hiredis_packing(pool.connection_class)
    r = aioredis.Redis(connection_pool=pool)

    async def call(i: int) -> Any:
        return await r.evalsha(sha, 4, *_keys(i), *ARGS)

    return call, r.aclose


async def coredis_client(url: str, sha: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    import coredis

    r = coredis.Redis.from_url(url, decode_responses=True)
    await r.__aenter__()  # coredis 6 runs its pool inside the client's context

    async def call(i: int) -> Any:
        return await r.evalsha(sha, keys=_keys(i), args=ARGS)

    async def close() -> None:
        await r.__aexit__(None, None, None)

    return call, close


async def glide_client(port: int, sha: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    from glide import GlideClient, GlideClientConfiguration, NodeAddress

    client = await GlideClient.create(GlideClientConfiguration([NodeAddress("127.0.0.1", port)]))

    async def call(i: int) -> Any:
        return await client.custom_command(["EVALSHA", sha, "4", *_keys(i), *ARGS])

    return call, client.close


async def measure(call: Call, bursts: int, singles: int) -> dict[str, float]:
    for i in range(BURST):  # warm: connections open, script cached
        await call(i)
    cpu0, t0 = time.process_time(), time.perf_counter()
    burst_ms = []
    for _ in range(bursts):
        b0 = time.perf_counter()
        await asyncio.gather(*(call(i) for i in range(BURST)))
        burst_ms.append((time.perf_counter() - b0) * 1000)
    cpu_burst = time.process_time() - cpu0
    cpu1 = time.process_time()
    s0 = time.perf_counter()
    for i in range(singles):
        await call(i)
    single_wall = time.perf_counter() - s0
    cpu_single = time.process_time() - cpu1
    del t0
    return {
        "burst_cpu_us_per_call": cpu_burst / (bursts * BURST) * 1e6,
        "burst_ms_median": statistics.median(burst_ms),
        "single_cpu_us_per_call": cpu_single / singles * 1e6,
        "single_us_per_call": single_wall / singles * 1e6,
    }


async def run(rounds: int, bursts: int, singles: int) -> dict[str, list[dict[str, float]]]:
    import redis.asyncio as aioredis

    out: dict[str, list[dict[str, float]]] = {}
    with Processes(Path(tempfile.mkdtemp(prefix="parley-redis-clients-"))) as procs:
        redis = procs.redis()
        admin = aioredis.Redis.from_url(redis.url)
        sha = await admin.script_load(SCRIPT)
        makers: dict[str, Callable[[], Awaitable[tuple[Call, Callable[[], Awaitable[None]]]]]] = {
            "mux": lambda: mux_client(redis.url, sha),
            "redis-py": lambda: redis_py_client(redis.url, sha, patched=False),
            "redis-py+patch": lambda: redis_py_client(redis.url, sha, patched=True),
        }
        try:
            import coredis  # noqa: F401

            makers["coredis"] = lambda: coredis_client(redis.url, sha)
        except ImportError:
            print("coredis is not installed: skipped")
        try:
            import glide  # noqa: F401

            makers["glide"] = lambda: glide_client(redis.port, sha)
        except ImportError:
            print("valkey-glide is not installed: skipped")
        names = list(makers)
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                call, close = await makers[name]()
                try:
                    out.setdefault(name, []).append(await measure(call, bursts, singles))
                finally:
                    await close()
        await admin.aclose()
    return out


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.redis_clients", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--bursts", type=int, default=20)
    p.add_argument("--singles", type=int, default=1000)
    args = p.parse_args()
    results = asyncio.run(run(args.rounds, args.bursts, args.singles))
    cols = ("burst_cpu_us_per_call", "burst_ms_median", "single_cpu_us_per_call", "single_us_per_call")
    print(f"{'client':16}" + "".join(f"{c:>26}" for c in cols))
    for name, runs in results.items():
        cells = []
        for c in cols:
            vals = [r[c] for r in runs]
            cells.append(f"{statistics.median(vals):8.1f} ({min(vals):.1f}-{max(vals):.1f})")
        print(f"{name:16}" + "".join(f"{cell:>26}" for cell in cells))
    print(f"median (min-max) of {args.rounds} rounds; bursts of {BURST} concurrent EVALSHA calls")


if __name__ == "__main__":
    main()
