"""Micro-benchmark: does packing redis-py commands with hiredis (sessions/fastpath.py) still pay?

    python -m bench.redis_packing

Times ``Connection.pack_command`` of the installed redis-py, plain and with the
``HiredisPacking`` mixin, for the commands the store sends through redis-py's pool: a
small one (``EVALSHA`` of a script with a few keys and arguments) and a batched index
write (one ``ZADD`` with 500 members, as a burst of turns makes). Prints µs per
command and the ratio; numbers in docs/benchmarks.md.
"""

from __future__ import annotations

import timeit

import redis
from redis.asyncio.connection import Connection

from parley.sessions.fastpath import with_hiredis_packing

COMMANDS = {
    "EVALSHA, 4 keys + 6 args": ("EVALSHA", "a" * 40, 4, *(f"{{s_{i}}}:k" for i in range(4)), *range(6)),
    "ZADD, 500 members": (
        "ZADD",
        "parley:{ix0}:sessions",
        *(x for i in range(500) for x in (1_700_000_000 + i, f"s_{i:032x}")),
    ),
}


def main() -> None:
    plain = Connection()
    fast = with_hiredis_packing(Connection)()
    print(f"redis-py {redis.__version__}; packer: {type(plain._command_packer).__name__}")
    for name, cmd in COMMANDS.items():
        assert b"".join(plain.pack_command(*cmd)) == b"".join(fast.pack_command(*cmd))
        n = 20_000 if len(cmd) < 50 else 500
        best = {}
        for label, conn in (("redis-py", plain), ("hiredis mixin", fast)):
            runs = timeit.repeat(lambda c=conn, a=cmd: c.pack_command(*a), number=n, repeat=5)  # type: ignore[misc]
            best[label] = min(runs) / n * 1e6
        plain_us, fast_us = best["redis-py"], best["hiredis mixin"]
        ratio = plain_us / fast_us
        print(f"{name:28} redis-py {plain_us:8.2f} µs  hiredis mixin {fast_us:8.2f} µs  x{ratio:.2f}")


if __name__ == "__main__":
    main()
