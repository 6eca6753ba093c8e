"""``TokenMeter``: charges each finished response's output tokens to its (tenant, user).

The charge is a store and limiter round trip that runs after the response's terminal
event is logged. It is registered before the generation's task yields, so before any
local reader can send ``response.completed``: the session's next ``message.send``
waits for it (``settled``), and a user at their token limit is refused that turn.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from parley.sessions import SessionStore

from .generation import Generation
from .ratelimit import Limiter
from .service import Principal


class TokenMeter:
    """Owns the charges in flight, one per session at most (its last response's)."""

    def __init__(self, store: SessionStore, limiter: Limiter | None) -> None:
        self.store = store
        self.limiter = limiter
        self._charges: dict[str, asyncio.Task[None]] = {}  # session_id -> its last response's charge
        self._tasks: set[asyncio.Task[None]] = set()  # every charge in flight (kept from the GC)

    def on_finish(self, gen: Generation, finish_reason: str) -> None:
        """A ``Generations.on_finish`` hook (runs in the generation's task): start the charge."""
        if self.limiter is None:
            return
        task = asyncio.get_running_loop().create_task(self._charge(gen))
        sid = gen.session_id
        self._charges[sid] = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(
            lambda t: self._charges.pop(sid, None) if self._charges.get(sid) is t else None
        )

    async def _charge(self, gen: Generation) -> None:
        assert self.limiter is not None
        tokens = gen.usage.output_tokens if gen.usage is not None else gen.output_tokens
        rec = await self.store.get_session(gen.session_id)
        if rec is not None and tokens > 0:
            await self.limiter.charge_tokens(Principal(rec.tenant, rec.user), tokens)

    async def settled(self, session_id: str) -> None:
        """Wait until the session's last response is charged (a failed charge is forgotten)."""
        pending = self._charges.get(session_id)
        if pending is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(pending)

    async def stop(self) -> None:
        """Cancel the charges still in flight (shutdown)."""
        tasks: list[Any] = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._charges.clear()
