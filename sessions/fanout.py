"""In-process fan-out of newly logged events to the readers tailing a session.

A store pushes every entry it logs (or learns of from another instance) here,
right after the write succeeded; readers drop what they already have by seq, so
delivering an entry twice, late or out of order is harmless. A reader with a
``Listener`` is offered entries synchronously first (a live WebSocket writes them
straight into its transport: no task switch per event); whatever it declines, and
everything for a reader without one, is buffered. Each buffer is bounded: a reader
that falls further behind is marked overflowed and must catch up from the log (or
be closed as a slow consumer). A session whose state the store lost is announced
here too (``lose``): each of its readers is marked ``lost`` and woken, and must end
with ``session_lost`` (nothing more will ever be logged for it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .store import LogEntry


class Listener(Protocol):
    """A reader that takes entries as they are logged instead of waiting for them."""

    def deliver(self, entries: list[LogEntry]) -> bool:
        """Take the entries now, or return False to have them buffered (then ``wake`` follows)."""

    def wake(self) -> None:
        """Something is buffered, or a resync or an overflow needs the reader's attention."""


class Subscriber:
    """One reader's live buffer for one session."""

    __slots__ = (
        "_buffer", "_waiter", "listener", "lost", "max_pending", "overflowed", "resync", "session_id",
    )  # fmt: skip

    def __init__(self, session_id: str, max_pending: int) -> None:
        self.session_id = session_id
        self.max_pending = max_pending
        self._buffer: list[LogEntry] | None = None  # made when needed: most readers are live or idle
        self._waiter: asyncio.Future[None] | None = None
        self.listener: Listener | None = None
        self.overflowed = False
        self.resync = False
        self.lost = False  # the store lost the session's state: the reader must end (session_lost)

    def push(self, entries: list[LogEntry]) -> None:
        if self.overflowed:
            return
        listener = self.listener
        if listener is not None and not self._buffer and listener.deliver(entries):
            return
        if self._buffer is None:
            self._buffer = []
        self._buffer.extend(entries)
        if len(self._buffer) > self.max_pending:
            self.overflowed = True
            self._buffer = None
        self._wake()

    @property
    def idle(self) -> bool:
        """Nothing buffered and nothing to attend to: a reader may go back to live delivery."""
        return not self._buffer and not self.resync and not self.overflowed and not self.lost

    def take(self) -> list[LogEntry]:
        """Everything buffered, without waiting."""
        batch, self._buffer = self._buffer, None
        return batch or []

    def request_resync(self) -> None:
        """Ask the reader to re-read the log: live delivery may have missed entries."""
        self.resync = True
        self._wake()

    def mark_lost(self) -> None:
        """The session is gone from the store: wake the reader so it can say so and end."""
        self.lost = True
        self._wake()

    def _wake(self) -> None:
        if self.listener is not None:
            self.listener.wake()
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout: float | None = None) -> list[LogEntry]:  # noqa: ASYNC109
        """Everything buffered, waiting up to ``timeout`` if nothing is; empty on timeout or resync."""
        if self.idle:
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(timeout, _expire, waiter) if timeout is not None else None
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
        return self.take()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Fanout:
    """session_id -> subscribers; hooks let a backend (un)subscribe upstream on first/last reader."""

    def __init__(
        self,
        on_first: Callable[[str], None] | None = None,
        on_last: Callable[[str], None] | None = None,
    ) -> None:
        self._subs: dict[str, list[Subscriber]] = {}  # lists: most sessions have one reader (B5 memory)
        self._on_first = on_first
        self._on_last = on_last

    def subscribe(self, session_id: str, max_pending: int = 4096) -> Subscriber:
        sub = Subscriber(session_id, max_pending)
        subs = self._subs.get(session_id)
        if subs is None:
            subs = self._subs[session_id] = []
            if self._on_first:
                self._on_first(session_id)
        subs.append(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        subs = self._subs.get(sub.session_id)
        if subs is None:
            return
        if sub in subs:
            subs.remove(sub)
        if not subs:
            del self._subs[sub.session_id]
            if self._on_last:
                self._on_last(sub.session_id)

    def publish(self, session_id: str, entries: list[LogEntry]) -> None:
        subs = self._subs.get(session_id)
        if subs:
            for sub in subs:
                sub.push(entries)

    def resync_all(self) -> None:
        """After live delivery was interrupted (Redis reconnect): every reader re-reads the log."""
        for subs in self._subs.values():
            for sub in subs:
                sub.request_resync()

    def lose(self, session_id: str) -> int:
        """The store lost this session's state: every reader of it is told; returns how many there were."""
        subs = self._subs.get(session_id) or []
        for sub in list(subs):
            sub.mark_lost()
        return len(subs)

    def sessions(self) -> list[str]:
        return list(self._subs)

    def __len__(self) -> int:
        return sum(len(s) for s in self._subs.values())
