"""Write WebSocket frames from synchronous code: straight into uvicorn's transport when it can take them.

uvicorn's ASGI ``send`` suspends only while the transport is paused (the peer is not
reading); otherwise it writes the frame into the transport and returns without ever
yielding. Running it inline lets the fan-out write a live event straight to every
reader's socket, with no task and no task switch per connection per event.

Cheaper still, when the endpoint was handed uvicorn's own ``send`` (see
``server/app.py``, ``WebSocketFirst``) on its sans-I/O websockets protocol without
extensions (``parley serve`` turns per-message deflate off): a text frame is two header
bytes and the payload, so it is framed here (RFC 6455 §5.2, server frames are not
masked) and written to the transport directly, and a replay of many frames is one
write. That skips Starlette's ``WebSocket.send``, uvicorn's ``send`` and websockets'
framing per frame, and a syscall per replayed frame (docs/architecture.md).
Whenever the transport is paused, closing or gone, or another server runs the app,
frames take the ASGI ``send`` instead, which keeps its flow control and errors.

Fenced (``server/fastpath/__init__.py``): ``DIRECT`` is on only with a uvicorn and a
websockets in their tested ranges whose objects have every private name used below
(``USED_NAMES``); ``INLINE`` only where asyncio's futures have the flag ``_finish`` clears.
Off, ``direct_transport`` answers None and ``send_now`` is not to be called: the
WebSocket sink (``server/transports/ws.py``) then leaves frames to its reader's
catch-up task and the ordinary ASGI ``send``.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from starlette.websockets import WebSocket

from parley.sessions.fastpath import Trick, trick

try:
    from websockets.protocol import State
except ImportError:  # another websockets layout: no direct path
    State = None  # type: ignore[assignment,misc]
try:
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
except ImportError:  # another uvicorn layout: always the ASGI send
    WebSocketsSansIOProtocol = None  # type: ignore[assignment,misc]

Direct = Any  # a uvicorn WebSocketsSansIOProtocol whose transport takes our frames

#: The private attributes of uvicorn's protocol object the direct path reads (tests/test_fastpath.py
#: checks them on a real instance): its sans-I/O ``conn`` (``extensions``, ``state``), the
#: ``writable`` event, ``disconnected``, ``close_sent`` and the asyncio ``transport``.
USED_NAMES = ("conn", "writable", "disconnected", "close_sent", "transport")


def _direct_trick() -> Trick:
    websockets_ok = trick("direct frames", "websockets", (15, 0), (18, 0), names_ok=State is not None)
    if not websockets_ok.on:
        return websockets_ok
    return trick("direct frames", "uvicorn", (0, 53), (0, 56), names_ok=WebSocketsSansIOProtocol is not None)


def _inline_trick() -> Trick:
    future_ok = hasattr(asyncio.Future, "_asyncio_future_blocking")
    return trick(
        "inline ASGI send", "python", (3, 11), (3, 14), names_ok=future_ok, version=sys.version_info[:3]
    )


#: Frames framed here and written straight into uvicorn's transport.
DIRECT = _direct_trick()
#: uvicorn's ASGI send run inline from synchronous code (a pushed-back write finished by a task).
INLINE = _inline_trick()
#: Bytes of frames written to a transport at once: its default high-water mark (64 KiB).
WRITE_BATCH_BYTES = 64 * 1024


def direct_transport(send: Any) -> Direct | None:
    """The uvicorn protocol behind an ASGI ``send`` when frames may be written to its transport, else None.

    Call it after the handshake: only then are the negotiated extensions known.
    """
    proto = getattr(send, "__self__", None)
    if not DIRECT.on or type(proto) is not WebSocketsSansIOProtocol:
        return None
    if proto.conn.extensions:  # a negotiated extension (deflate) transforms every frame: not ours to frame
        return None
    return proto


def text_frame(text: str) -> bytes:
    """One final, unmasked text frame (RFC 6455 §5.2)."""
    data = text.encode()
    n = len(data)
    if n < 126:
        return bytes((0x81, n)) + data
    if n < 65536:
        return b"\x81\x7e" + n.to_bytes(2, "big") + data
    return b"\x81\x7f" + n.to_bytes(8, "big") + data


def writable(direct: Direct | None) -> bool:
    """The transport takes frames now: not paused by the peer, no close sent or received, not lost."""
    return (
        direct is not None
        and direct.writable.is_set()
        and not direct.disconnected
        and not direct.close_sent
        and direct.conn.state is State.OPEN
        and not direct.transport.is_closing()
    )


def write_some(direct: Direct, texts: Sequence[str], start: int) -> int:
    """Write ``texts[start:]`` in one transport write, up to ``WRITE_BATCH_BYTES``; the next index.

    Only when ``writable(direct)``. The cap keeps a large replay from landing in the transport's
    buffer at once: past its high-water mark the transport pauses, and the caller's next frame
    waits under the send deadline (a slow reader is still found out).
    """
    frames: list[bytes] = []
    size = 0
    i = start
    while i < len(texts) and size < WRITE_BATCH_BYTES:
        frame = text_frame(texts[i])
        frames.append(frame)
        size += len(frame)
        i += 1
    direct.transport.write(b"".join(frames))
    return i


def send_now(ws: WebSocket, direct: Direct | None, text: str) -> Coroutine[Any, Any, None] | None:
    """Send one text frame; None when it was written at once, else a coroutine that finishes it.

    The caller must await (or ``close()``) what is returned before writing another frame.
    Only when ``INLINE.on``.
    """
    if writable(direct):
        direct.transport.write(text_frame(text))
        return None
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
