"""The handshake deadline and the per-address cap on connections not yet at ``session.ready``.

uvicorn has no header timeout: a client that sends half a request line and stops holds
its socket (and a file descriptor) forever, and the 5 s hello deadline only starts after
the upgrade. So ``parley serve`` runs uvicorn with the HTTP protocol below (uvicorn's
``http=`` setting): a subclass of uvicorn's httptools protocol that

- closes a connection whose request headers are not complete ``PARLEY_HANDSHAKE_TIMEOUT_MS``
  (10 s) after the TCP accept, or after the previous response on a keep-alive connection,
  with ``408`` (one debug line, no traceback);
- counts, per peer address, the connections that have not reached ``session.ready``
  (plain HTTP requests: until their headers are complete) and answers a connection over
  ``PARLEY_MAX_PENDING_PER_ADDRESS`` (256) with ``503`` at once. An upgraded connection
  stays counted until the endpoint reports ``session.ready`` (``admitted``), the
  connection ends, or the hello deadline plus a second has passed, whichever is first.

This is the one place Parley reaches into uvicorn's HTTP protocol, fenced: a version
range and a check that every method it overrides still exists (``supported``); outside
them ``protocol_class`` returns uvicorn's own choice ("auto") and the server logs a
warning that the deadline is off. ``tests/test_handshake.py`` fails when the fence breaks.
Behind a proxy every connection comes from the proxy's address: raise the cap there (or
set it to 0) and let the proxy limit per client (deploy/nginx.conf).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import uvicorn

from .settings import Settings

log = logging.getLogger("parley.handshake")

#: uvicorn versions whose httptools protocol this subclass was written against.
UVICORN_RANGE = ((0, 30), (1, 0))
#: The methods of uvicorn's ``HttpToolsProtocol`` overridden or relied on below.
HOOKS = ("connection_made", "connection_lost", "on_headers_complete", "handle_websocket_upgrade",
         "on_response_complete")  # fmt: skip
#: Key of the pending hold in the WebSocket scope's ``state`` (``admitted`` releases it).
HOLD_KEY = "parley.pending"
#: A refused connection's reason is logged at most this often per process.
REFUSAL_LOG_S = 10.0

TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\ncontent-length: 27\r\n"
    b"connection: close\r\n\r\nrequest headers not in time"
)
BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-type: text/plain\r\n"
    b"content-length: 37\r\nconnection: close\r\n\r\ntoo many handshakes from this address"
)


class Limits:
    """This process's deadline and cap (set by ``configure``; from the environment otherwise)."""

    def __init__(self, settings: Settings) -> None:
        self.timeout_s = settings.handshake_timeout_ms / 1000
        self.cap = settings.max_pending_per_address
        self.upgraded_hold_s = settings.hello_timeout_ms / 1000 + 1.0


class Hold:
    """One connection counted against its address until it reached session.ready (or ended)."""

    __slots__ = ("address", "released")

    def __init__(self, address: str) -> None:
        self.address = address
        self.released = False

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        left = PENDING.get(self.address, 0) - 1
        if left > 0:
            PENDING[self.address] = left
        else:
            PENDING.pop(self.address, None)


#: Connections not yet at session.ready, per peer address (one uvicorn server per process).
PENDING: dict[str, int] = {}
_limits: Limits | None = None
_last_refusal_log = 0.0


def configure(settings: Settings) -> None:
    global _limits
    _limits = Limits(settings)


def limits() -> Limits:
    global _limits
    if _limits is None:  # a worker process (--workers): the CLI put every setting in the environment
        _limits = Limits(Settings())
    return _limits


def admitted(scope: dict[str, Any]) -> None:
    """The endpoint's hook: this WebSocket reached ``session.ready`` (or ended); it counts no more."""
    hold = (scope.get("state") or {}).get(HOLD_KEY)
    if isinstance(hold, Hold):
        hold.release()


def _uvicorn_version() -> tuple[int, ...]:
    return tuple(int(p) for p in uvicorn.__version__.split(".")[:2] if p.isdigit())


def supported() -> bool:
    """Whether the installed uvicorn is one this fence knows: version range and every hook present."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # no httptools (uvicorn without [standard])
        return False
    low, high = UVICORN_RANGE
    return low <= _uvicorn_version() < high and all(
        callable(getattr(HttpToolsProtocol, h, None)) for h in HOOKS
    )


def protocol_class(settings: Settings) -> Any:
    """uvicorn's ``http=`` for ``parley serve``: the deadline protocol, or "auto" outside the fence."""
    configure(settings)
    if not supported() or DeadlineProtocol is None:
        log.warning(
            "handshake deadline off: uvicorn %s is outside the range server/handshake.py supports",
            uvicorn.__version__,
        )
        return "auto"
    return DeadlineProtocol


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Base
except ImportError:  # pragma: no cover (uvicorn without httptools: ``supported`` says so)
    _Base = None

if _Base is None:  # pragma: no cover
    DeadlineProtocol: Any = None
else:

    class DeadlineProtocol(_Base):  # type: ignore[no-redef]
        """uvicorn's httptools protocol with a header deadline and the per-address pending cap.

        Module level (not built per call), so ``--workers`` can pickle the uvicorn config naming it.
        """

        _deadline: asyncio.TimerHandle | None = None
        _hold: Hold | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            lim = limits()
            address = self.client[0] if self.client else ""
            if lim.cap and address:
                if PENDING.get(address, 0) >= lim.cap:
                    _log_refusal(address, lim.cap)
                    transport.write(BUSY_RESPONSE)
                    transport.close()
                    return
                PENDING[address] = PENDING.get(address, 0) + 1
                self._hold = Hold(address)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self._hold is not None:
                self._hold.release()
            super().connection_lost(exc)

        def on_headers_complete(self) -> None:
            self._disarm()
            if self._hold is not None and not (self.parser.should_upgrade() and self._should_upgrade()):
                self._hold.release()  # a plain request: no longer a handshake
            super().on_headers_complete()

        def handle_websocket_upgrade(self) -> None:
            hold = self._hold
            if hold is not None and not hold.released:  # counted until session.ready: tell the endpoint how
                self.app_state = {**self.app_state, HOLD_KEY: hold}
                self.loop.call_later(limits().upgraded_hold_s, hold.release)
            self._hold = None
            super().handle_websocket_upgrade()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # the next request on a kept-alive connection has the same deadline

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(limits().timeout_s, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                log.debug("closing a connection whose request did not arrive in time: %s", self.client)
                self.transport.write(TIMEOUT_RESPONSE)
                self.transport.close()


def _log_refusal(address: str, cap: int) -> None:
    global _last_refusal_log
    now = time.monotonic()
    if now - _last_refusal_log >= REFUSAL_LOG_S:
        _last_refusal_log = now
        log.warning(
            "refusing connections from %s: %d handshakes pending (PARLEY_MAX_PENDING_PER_ADDRESS)",
            address,
            cap,
            extra={"fields": {"address": address, "cap": cap}},
        )
