"""``TurnPacer``: at most N turn starts per event-loop iteration, so a burst's first tokens leave early.

When many clients send at the same moment, uvloop reads every socket in one pass and wakes
every connection: all handlers run, then every generation to its first token, and only then
the delta writer, so every first token waits for the whole burst (docs/benchmarks.md, B8).
A handler takes a slot before starting a turn; past ``per_tick`` slots in one iteration it
waits (first come, first served) for a later one. In between, the loop runs the generations
and the delta write of the turns already started, and polls the sockets (a Redis reply, a
flushed frame). Throughput is the same: the work is only interleaved. Nothing is dropped or
reordered within a connection (its dispatcher awaits the handler before its next frame).
"""

from __future__ import annotations

import asyncio
import collections


class TurnPacer:
    """One per process: ``await slot()`` before a turn start."""

    __slots__ = ("_scheduled", "_waiting", "per_tick", "used")

    def __init__(self, per_tick: int) -> None:
        self.per_tick = per_tick  # 0: no pacing
        self.used = 0  # slots taken in the current iteration
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self._scheduled = False

    async def slot(self) -> None:
        """Return at once while this iteration has a slot left; else wait for a later iteration."""
        if not self.per_tick:
            return
        if self.used < self.per_tick and not self._waiting:
            self.used += 1
            self._tick_later()
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiting.append(fut)
        self._tick_later()
        await fut  # cancelled while waiting: the next tick skips it

    def _tick_later(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._tick)

    def _tick(self) -> None:
        """A new iteration: hand its slots to the longest waiting; come back next time if more wait."""
        self._scheduled = False
        self.used = 0
        waiting = self._waiting
        while waiting and self.used < self.per_tick:
            fut = waiting.popleft()
            if not fut.done():
                fut.set_result(None)
                self.used += 1
        if self.used:
            self._tick_later()
