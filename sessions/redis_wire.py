"""How redis-py's asyncio connections talk: commands packed by hiredis, client info resolved once.

redis-py's asyncio ``Connection.pack_command`` is pure Python and re-joins its buffer for
every argument, so its cost grows with the square of a command's size; a batched index
write (one ``ZADD`` for a burst of turns) sends hundreds of arguments. hiredis (a declared
dependency: ``redis[hiredis]``) packs the same bytes about ten times faster (checked byte
for byte in tests/test_store.py); the hot commands skip redis-py altogether (redis_mux.py).

Every new connection also tells Redis its library name and version (``CLIENT SETINFO``,
shown by ``CLIENT LIST``); unless handed a ``DriverInfo``, redis-py looks its own
version up in the installed package metadata for each one (~0.5 ms of CPU), which a
burst of hellos growing the pool pays dozens of times.
"""

from __future__ import annotations

from typing import Any

import hiredis
import redis
from redis.driver_info import DriverInfo

#: What every connection reports in ``CLIENT SETINFO``: redis-py's defaults, computed once.
DRIVER_INFO = DriverInfo(lib_version=redis.__version__)


class HiredisPacking:
    """Mixin for a redis-py asyncio connection class."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str) and " " in args[0]:  # "SCRIPT LOAD" and the like, as redis-py does
            args = (*args[0].split(), *args[1:])
        return [hiredis.pack_command(args)]


def with_hiredis_packing(cls: type) -> type:
    """``cls`` (a TCP, TLS or Unix-socket connection class) packing commands with hiredis."""
    if issubclass(cls, HiredisPacking):
        return cls
    return type(f"HiredisPacking{cls.__name__}", (HiredisPacking, cls), {})
