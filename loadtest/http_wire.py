"""A lean HTTP/1.1 client for ``--transport sse``: one keep-alive connection per simulated user, a
request at a time, responses parsed in the transport's callback (like ``wire.py`` for WebSockets).

A general client (httpx) spends far more CPU per event than the server does to send it, so a
load run with it would measure the client. Only what Parley's HTTP API answers is understood:
``Content-Length`` bodies and chunked ones, and in a ``text/event-stream`` body each event's
``data:`` line, handed to ``on_event(payload, arrived_wall, arrived_mono)`` as it arrives.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

EventFn = Callable[[bytes, float, float], None]


class HttpError(Exception):
    """The connection broke or answered something this client does not speak."""


class HttpConnection(asyncio.Protocol):
    """One connection; ``request`` sends and resolves with (status, body) when the answer ends."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._done: asyncio.Future[tuple[int, bytes]] | None = None
        self._on_event: EventFn | None = None
        self._reset()

    def _reset(self) -> None:
        self._status = 0
        self._in_body = False
        self._chunked = False
        self._length = 0
        self._stream = False
        self._body = bytearray()
        self._sse = bytearray()

    # ------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self._done is not None and not self._done.done():
            self._done.set_exception(HttpError("connection closed"))

    def data_received(self, data: bytes) -> None:
        self._buf += data
        try:
            self._parse()
        except HttpError as exc:
            if self._done is not None and not self._done.done():
                self._done.set_exception(exc)
            if self.transport is not None:
                self.transport.close()

    # ------------------------------------------------------------ parsing

    def _parse(self) -> None:
        buf = self._buf
        while self._done is not None and not self._done.done():
            if not self._in_body:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(buf[:end]).decode("latin-1").split("\r\n")
                del buf[: end + 4]
                try:
                    self._status = int(head[0].split(" ", 2)[1])
                except (IndexError, ValueError):
                    raise HttpError(f"bad status line {head[0]!r}") from None
                headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
                self._chunked = headers.get("transfer-encoding", "").lower() == "chunked"
                self._length = int(headers.get("content-length", "0") or 0)
                self._stream = headers.get("content-type", "").startswith("text/event-stream")
                self._in_body = True
                continue
            if not self._chunked:
                if len(buf) < self._length:
                    return
                self._payload(bytes(buf[: self._length]))
                del buf[: self._length]
                self._finish()
                continue
            line_end = buf.find(b"\r\n")
            if line_end < 0:
                return
            size = int(bytes(buf[:line_end]).split(b";", 1)[0], 16)
            if len(buf) < line_end + 2 + size + 2:
                return
            chunk = bytes(buf[line_end + 2 : line_end + 2 + size])
            del buf[: line_end + 2 + size + 2]
            if size == 0:
                self._finish()
                continue
            self._payload(chunk)

    def _payload(self, data: bytes) -> None:
        if not self._stream:
            self._body += data
            return
        sse = self._sse
        sse += data
        wall, mono = time.time(), time.perf_counter()
        start = 0
        while True:
            end = sse.find(b"\n", start)
            if end < 0:
                break
            if sse.startswith(b"data: ", start) and self._on_event is not None:
                self._on_event(bytes(sse[start + 6 : end]), wall, mono)
            start = end + 1
        del sse[:start]

    def _finish(self) -> None:
        done, status, body = self._done, self._status, bytes(self._body)
        self._reset()
        if done is not None and not done.done():
            done.set_result((status, body))

    # ------------------------------------------------------------ requests

    async def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: Any = None,
        on_event: EventFn | None = None,
    ) -> tuple[int, bytes]:
        """Send one request; its answer's SSE events go to ``on_event``; (status, non-SSE body) at its end."""
        if self.transport is None:
            raise HttpError("connection closed")
        payload = b"" if body is None else json.dumps(body).encode()
        lines = [f"{method} {path} HTTP/1.1", f"host: {self.host}", f"content-length: {len(payload)}"]
        if body is not None:
            lines.append("content-type: application/json")
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self._on_event = on_event
        self._done = asyncio.get_running_loop().create_future()
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload)
        return await self._done

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def connect(url: str) -> HttpConnection:
    """A connection to the host of ``url`` (http:// only: the load runs on loopback)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(lambda: HttpConnection(parts.netloc), host, port)
    return conn
