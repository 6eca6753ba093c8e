"""A blocking facade over ``ParleyClient`` for scripts and notebooks.

The async client runs on an event loop in a background thread, so this works where a loop is
already running in the calling thread (Jupyter) as well as in plain scripts::

    with ParleyClient.sync("ws://127.0.0.1:8000/v1/ws") as c:
        print(c.ask("Hi").text)
        turn = c.stream("Tell me more")
        for ev in turn:
            ...
        turn.feedback(+1)
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

from parley.protocol.messages import FeedbackRecorded, Usage

from .client import ParleyClient, Rating, Reply
from .events import Event
from .turn import TurnStream

T = TypeVar("T")


class SyncParleyClient:
    """``ParleyClient`` with blocking methods; one background thread and loop per instance."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="parley-client", daemon=True)
        self._thread.start()
        self.client = ParleyClient(url, **kwargs)  # the async client, for what this facade does not wrap

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result()

    def connect(self) -> dict[str, Any]:
        """Open the session; returns ``session.ready``."""
        self._run(self.client.__aenter__())
        return dict(self.client.ready or {})

    def close(self) -> None:
        """Close the connection and stop the background loop (idempotent)."""
        if self._loop.is_closed():
            return
        try:
            self._run(self.client.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()

    def __enter__(self) -> SyncParleyClient:
        try:
            self.connect()
        except BaseException:
            self.close()  # a refused hello must not leave the thread behind
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ask(self, content: str, **kwargs: Any) -> Reply:
        """``ParleyClient.ask``, blocking."""
        return self._run(self.client.ask(content, **kwargs))

    def stream(self, content: str, **kwargs: Any) -> SyncTurn:
        """``ParleyClient.stream``, as a blocking iterator of typed events."""
        turn = self.client.stream(content, **kwargs)
        self._run(turn.start())
        return SyncTurn(self, turn)


class SyncTurn:
    """A ``TurnStream`` read with a plain ``for`` loop."""

    def __init__(self, owner: SyncParleyClient, turn: TurnStream) -> None:
        self._owner = owner
        self.turn = turn

    def __iter__(self) -> Iterator[Event]:
        events = self.turn.__aiter__()

        async def step() -> Event:
            return await anext(events)

        while True:
            try:
                yield self._owner._run(step())
            except StopAsyncIteration:
                return

    @property
    def text(self) -> str:
        return self.turn.text

    @property
    def response_id(self) -> str | None:
        return self.turn.response_id

    @property
    def finish_reason(self) -> str | None:
        return self.turn.finish_reason

    @property
    def usage(self) -> Usage | None:
        return self.turn.usage

    def cancel(self) -> None:
        self._owner._run(self.turn.cancel())

    def feedback(self, rating: Rating, *, comment: str | None = None) -> FeedbackRecorded:
        return self._owner._run(self.turn.feedback(rating, comment=comment))
