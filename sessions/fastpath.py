"""The store's speed tricks on redis-py, fenced (the server's are in ``parley.server.fastpath``).

* ``PACKING``: redis-py's asyncio ``Connection.pack_command`` encodes every argument in
  Python before packing; a batched index write (one ``ZADD`` for a burst of turns) sends
  hundreds of arguments. hiredis (a declared dependency) packs the same bytes 5-7 times
  faster, even on redis-py 8.2 (``python -m bench.redis_packing``, docs/benchmarks.md),
  checked byte for byte in tests/test_fastpath.py. The hot commands skip redis-py
  altogether (redis_mux.py); this is for the rest (index writes, the reaper, pub/sub).
* ``DRIVER_INFO``: every new connection tells Redis its library name and version
  (``CLIENT SETINFO``); unless handed a ``DriverInfo`` (redis-py >= 7.2), redis-py looks its
  own version up in the package metadata for each one (~0.5 ms of CPU), which a burst of
  hellos growing the pool pays dozens of times. Older redis-py computes it once anyway.

Each is on only with a redis-py in its tested range and the names it relies on present;
otherwise redis-py's own behaviour is used (``Trick.reason`` says why).
"""

from __future__ import annotations

import importlib.metadata
import re
from dataclasses import dataclass
from typing import Any

import hiredis
import redis
from redis.asyncio.connection import Connection


@dataclass(frozen=True, slots=True)
class Trick:
    """One reach into another library: where, which versions it was tested with, and whether it is on."""

    name: str
    library: str
    tested: str  # the version range it was tested with, e.g. ">=5.0,<9"
    on: bool
    reason: str = ""  # why it is off


def version_of(distribution: str) -> tuple[int, ...]:
    """An installed distribution's version as numbers (``0.52.4`` -> ``(0, 52, 4)``); () if unknown."""
    try:
        text = importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return ()
    return tuple(int(n) for n in re.findall(r"\d+", text.split("+")[0])[:3])


def trick(
    name: str,
    library: str,
    low: tuple[int, ...],
    high: tuple[int, ...],
    *,
    names_ok: bool,
    version: Any = None,
) -> Trick:
    """A ``Trick``, on when ``low <= version < high`` and every private name it uses is present."""
    found = version_of(library) if version is None else tuple(version)
    tested = f">={'.'.join(map(str, low))},<{'.'.join(map(str, high))}"
    if not found:
        return Trick(name, library, tested, False, f"{library} is not installed")
    if not low <= found < high:
        return Trick(
            name, library, tested, False, f"{library} {'.'.join(map(str, found))} is outside {tested}"
        )
    if not names_ok:
        return Trick(name, library, tested, False, f"{library} no longer has the names it uses")
    return Trick(name, library, tested, True)


# --------------------------------------------------------------------- hiredis packing


class HiredisPacking:
    """Mixin for a redis-py asyncio connection class."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str) and " " in args[0]:  # "SCRIPT LOAD" and the like, as redis-py does
            args = (*args[0].split(), *args[1:])
        return [hiredis.pack_command(args)]


PACKING = trick(
    "hiredis command packing",
    "redis",
    (5, 0),
    (9, 0),
    names_ok=callable(getattr(Connection, "pack_command", None))
    and callable(getattr(Connection, "send_packed_command", None))
    and callable(getattr(hiredis, "pack_command", None)),
)


def with_hiredis_packing(cls: type) -> type:
    """``cls`` (a TCP, TLS or Unix-socket connection class) packing commands with hiredis; ``cls``
    itself when the trick is off."""
    if not PACKING.on or issubclass(cls, HiredisPacking):
        return cls
    return type(f"HiredisPacking{cls.__name__}", (HiredisPacking, cls), {})


# --------------------------------------------------------------------- client info once

try:
    from redis.driver_info import DriverInfo
except ImportError:  # redis-py < 7.2: no DriverInfo, and nothing to save (the version is read once)
    DriverInfo = None  # type: ignore[assignment,misc]

DRIVER = trick("client info computed once", "redis", (7, 2), (9, 0), names_ok=DriverInfo is not None)


def client_options() -> dict[str, Any]:
    """Options for every redis-py client the store and the limiter make: ``driver_info`` when on."""
    if DRIVER.on and DriverInfo is not None:
        return {"driver_info": DriverInfo(lib_version=redis.__version__)}
    return {}


#: Every store-side trick (the server lists them with its own at start-up).
TRICKS: tuple[Trick, ...] = (PACKING, DRIVER)
