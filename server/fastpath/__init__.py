"""Speed tricks that reach into other libraries' internals, fenced: every one of them is here.

Each trick names the library versions it was tested with and the private names it uses.
At import it is checked: inside the tested range, with every name present, it is on;
otherwise it is off and the ordinary (public, slower) path is taken. ``check()`` (called
once at start-up by the runtime) logs one warning per trick that is off; the tests
(``tests/test_fastpath.py``) fail when a tested version no longer has a name, so an
upgrade breaks CI, not production.

* ``uvicorn_ws.DIRECT``: write WebSocket frames straight into uvicorn's transport
  (uvicorn's sans-I/O protocol object and websockets' ``ServerProtocol`` state);
  off: frames go through the ASGI ``send``.
* ``uvicorn_ws.INLINE``: run the ASGI ``send`` coroutine inline from synchronous code and
  hand a pushed-back write to a task (asyncio's ``Future._asyncio_future_blocking``);
  off: a frame that cannot be written directly waits for the reader's catch-up task.
* ``parley.sessions.fastpath`` (the store's side, so dependencies still point one way):
  redis-py commands packed by hiredis, and the client info computed once.
"""

from __future__ import annotations

import logging

from parley.sessions import fastpath as sessions_fastpath
from parley.sessions.fastpath import Trick

from . import uvicorn_ws

log = logging.getLogger("parley.fastpath")

#: Every trick of the process, server side and store side.
TRICKS: tuple[Trick, ...] = (uvicorn_ws.DIRECT, uvicorn_ws.INLINE, *sessions_fastpath.TRICKS)

_warned = False


def check() -> list[Trick]:
    """Log one warning (once per process) naming every trick that is off and why; the ones off."""
    global _warned
    off = [t for t in TRICKS if not t.on]
    if off and not _warned:
        _warned = True
        log.warning(
            "speed tricks off, taking the ordinary path: " + "; ".join(f"{t.name} ({t.reason})" for t in off)
        )
    return off


__all__ = ["TRICKS", "Trick", "check"]
