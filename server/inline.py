"""Write a WebSocket frame from synchronous code, finishing later only if the socket pushes back.

uvicorn's ASGI ``send`` suspends only while the transport is paused (the peer is not
reading); otherwise it writes the frame into the transport and returns without ever
yielding. Running it inline lets the fan-out write a live event straight to every
reader's socket, with no task and no task switch per connection per event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from starlette.websockets import WebSocket


def send_now(ws: WebSocket, text: str) -> Coroutine[Any, Any, None] | None:
    """Send one text frame; None when it was written at once, else a coroutine that finishes it.

    The caller must await (or ``close()``) what is returned before writing another frame.
    """
    coro = ws.send({"type": "websocket.send", "text": text})
    try:
        step = coro.send(None)
    except StopIteration:
        return None
    except BaseException:
        coro.close()
        raise
    return _finish(coro, step)


async def _finish(coro: Coroutine[Any, Any, Any], step: Any) -> None:
    """Drive a coroutine that yielded ``step`` to its end: await each future it waits on, then resume it."""
    try:
        while True:
            try:
                if step is None:  # a bare yield (sleep(0)): just give the loop a turn
                    await asyncio.sleep(0)
                else:  # a future: take it over as the event loop's Task would (clear its blocking flag)
                    step._asyncio_future_blocking = False
                    await step
            except BaseException as exc:  # cancelled, or the awaited future failed: the coroutine sees it
                step = coro.throw(exc)
                continue
            step = coro.send(None)
    except StopIteration:
        return
    finally:
        coro.close()
