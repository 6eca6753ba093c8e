"""``Sink``: all a transport offers the session core, and the deadline every blocked write runs under.

A sink takes text frames (each one protocol message, logged events verbatim as the
log holds them: ``{"seq":N,...}``) and puts them on its wire: a WebSocket text frame
each (``server/transports/ws.py``), or an SSE event with ``id: <seq>`` and ``data: <frame>``
(``server/transports/sse.py``). It never reorders, drops or
duplicates; the reader owns the cursor, dedupe and catch-up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any, Protocol


class SlowPeer(Exception):
    """A frame could not be written within ``send_timeout_ms``: the client stopped reading."""


class SinkClosed(Exception):
    """The transport is gone (the peer disconnected): nothing more can be written."""


class WriteDeadline:
    """Every blocked write must finish within ``timeout`` seconds, or it fails with ``SlowPeer``.

    No timer per write (that would cost more than the write): one process-wide ticker calls
    ``interrupt`` on every connection, and a write past its deadline is cancelled there.
    """

    __slots__ = ("due", "stalled", "task", "timeout")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.due: float | None = None  # loop time by which the write in progress must finish
        self.task: asyncio.Task[Any] | None = None  # the task blocked in that write
        self.stalled: asyncio.Task[Any] | None = None  # the writer ``interrupt`` cancelled

    async def run(self, write: Awaitable[Any]) -> None:
        """Await one blocked write under the deadline; ``SlowPeer`` if the ticker interrupts it."""
        me = self.task = asyncio.current_task()
        self.due = asyncio.get_running_loop().time() + self.timeout
        try:
            await write
        except asyncio.CancelledError:
            if self.stalled is None or self.stalled is not me:
                raise
            me.uncancel()  # type: ignore[union-attr]
            raise SlowPeer() from None
        finally:
            self.due = None
            self.task = None

    def interrupt(self, now: float) -> bool:
        """Ticker hook (``now`` is loop time): cancel a write stuck past its deadline, once."""
        due, task = self.due, self.task
        if due is None or task is None or now <= due or self.stalled is not None:
            return False
        self.stalled = task
        task.cancel()
        return True


class Sink(Protocol):
    """A transport's way out, as the session core sees it."""

    #: The deadline ``write`` runs every blocked step under (the reader's ticker interrupts it).
    deadline: WriteDeadline

    def try_write(self, frames: Sequence[str]) -> bool:
        """Write without waiting: True when every frame is taken, False when none is.

        Taken means written, or (the peer pushed back mid-way) held as a ``backlog`` that the
        next ``write`` finishes first. ``SinkClosed`` (or ``OSError``) if the transport is gone.
        """
        ...

    @property
    def backlog(self) -> bool:
        """Taken frames are not all written yet: ``write`` must run (under the deadline) before
        ``try_write`` takes more."""
        ...

    async def write(self, frames: Sequence[str]) -> None:
        """Finish the backlog, then write ``frames`` in order; ``SlowPeer`` past the deadline,
        ``SinkClosed`` (or ``OSError``) if the transport is gone."""
        ...

    async def close(self, code: int, reason: str, *, wait: float | None = None) -> None:
        """Close with a protocol close code; give up on a peer that takes longer than ``wait`` s."""
        ...

    def discard(self) -> None:
        """The connection is over: drop the backlog unwritten."""
        ...
