"""A lean WebSocket client transport for load generation: one asyncio protocol, no task per frame.

``client.ParleyClient`` (built on the ``websockets`` asyncio client) is the right tool
for applications and tests; a load generator must receive far more frames per
CPU-second than the servers it measures, so this module speaks RFC 6455 directly:
the HTTP upgrade, unmasked server frames parsed in place, masked client frames,
ping/pong and the close handshake. Every complete text frame is handed to a
callback synchronously, together with the time the bytes arrived, so per-event
work is one ``json.loads`` and a few comparisons.

Only what a Parley client needs: no compression, no extensions, ``ws://`` only
(``wss://`` through ``ssl`` works too, since the transport is asyncio's).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import ssl
import struct
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from parley.protocol import PROTOCOL_VERSION

try:  # the C masking helper that ships with websockets; a pure-Python fallback otherwise
    from websockets.speedups import apply_mask as _apply_mask  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - websockets always has it on CPython wheels

    def _apply_mask(data: bytes, mask: bytes) -> bytes:
        n = len(data)
        key = (mask * (n // 4 + 1))[:n]
        return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
#: Close code when the connection ended without a close frame (RFC 6455 section 7.1.5).
ABNORMAL_CLOSURE = 1006


class HandshakeError(Exception):
    """The server refused the WebSocket upgrade (``status`` is its HTTP status, 0 if unparsable)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"handshake failed ({status}): {detail}")
        self.status = status


def _frame(opcode: int, payload: bytes) -> bytes:
    """A masked, final client frame."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    mask = os.urandom(4)
    return head + mask + _apply_mask(payload, mask)


class WireProtocol(asyncio.Protocol):
    """One client WebSocket. ``on_text(payload, arrived_wall, arrived_mono)`` gets each text message."""

    def __init__(
        self,
        host_header: str,
        path: str,
        subprotocol: str | None,
        on_text: Callable[[bytes, float, float], None],
        on_close: Callable[[int], None],
        max_size: int = 2**22,
    ) -> None:
        self._host = host_header
        self._path = path
        self._subprotocol = subprotocol
        self._on_text = on_text
        self._on_close = on_close
        self._max_size = max_size
        self._key = base64.b64encode(os.urandom(16))
        self._buf = bytearray()
        self._open = False
        self._fragments: list[bytes] = []
        self._fragment_op = 0
        self.transport: asyncio.Transport | None = None
        self.handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.close_code: int | None = None
        self.closed = False
        self._closing = False
        self._aborted = False

    # ------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        lines = [
            f"GET {self._path} HTTP/1.1",
            f"Host: {self._host}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {self._key.decode()}",
            "Sec-WebSocket-Version: 13",
        ]
        if self._subprotocol:
            lines.append(f"Sec-WebSocket-Protocol: {self._subprotocol}")
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        if not self._open and not self._read_handshake():
            return
        if buf:
            self._read_frames(time.time(), time.perf_counter())

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(ConnectionError(f"connection lost during handshake: {exc}"))
        self._finish(self.close_code if self.close_code is not None else ABNORMAL_CLOSURE)

    # ------------------------------------------------------------ API

    def send_text(self, text: str) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(_frame(OP_TEXT, text.encode()))

    def close(self, code: int = 1000) -> None:
        """Start the close handshake; the transport closes when the server answers (or now if gone)."""
        if self.transport is None or self.closed:
            return
        if self._closing:
            return
        self._closing = True
        self.transport.write(_frame(OP_CLOSE, struct.pack("!H", code)))
        asyncio.get_running_loop().call_later(2.0, self.abort)  # the server may never answer

    def abort(self) -> None:
        """Kill the TCP connection without a close handshake (an abrupt network loss)."""
        self._aborted = True  # bytes already buffered are lost with the connection
        if self.transport is not None:
            self.transport.abort()

    # ------------------------------------------------------------ internals

    def _finish(self, code: int) -> None:
        if not self.closed:
            self.closed = True
            self.close_code = code
            self._on_close(code)

    def _read_handshake(self) -> bool:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > 65536:
                self._fail_handshake(0, "response headers too large")
            return False
        head = bytes(self._buf[:end]).decode("latin-1").split("\r\n")
        del self._buf[: end + 4]
        try:
            status = int(head[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            self._fail_handshake(0, head[0][:100])
            return False
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if status != 101:
            self._fail_handshake(status, head[0])
            return False
        expected = base64.b64encode(hashlib.sha1(self._key + _GUID).digest()).decode()
        if headers.get("sec-websocket-accept") != expected:
            self._fail_handshake(status, "bad Sec-WebSocket-Accept")
            return False
        if self._subprotocol and headers.get("sec-websocket-protocol") != self._subprotocol:
            self._fail_handshake(status, f"subprotocol {self._subprotocol} not selected")
            return False
        self._open = True
        self.handshake.set_result(None)
        return True

    def _fail_handshake(self, status: int, detail: str) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(HandshakeError(status, detail))
        self.abort()

    def _read_frames(self, wall: float, mono: float) -> None:
        buf = self._buf
        size = len(buf)
        pos = 0
        while size - pos >= 2 and not self._aborted:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            n = b1 & 0x7F
            head = 2
            if n == 126:
                if size - pos < 4:
                    break
                n = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 4
            elif n == 127:
                if size - pos < 10:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            masked = b1 & 0x80
            if masked:
                head += 4
            if n > self._max_size:
                self.close(1009)
                self.abort()
                return
            end = pos + head + n
            if end > size:
                break
            payload = bytes(buf[pos + head : end])
            if masked:  # servers must not mask, but tolerate it
                payload = _apply_mask(payload, bytes(buf[pos + head - 4 : pos + head]))
            pos = end
            opcode = b0 & 0x0F
            if opcode == OP_TEXT and b0 & 0x80:
                self._on_text(payload, wall, mono)
            elif opcode in (OP_TEXT, OP_BINARY):
                self._fragment_op, self._fragments = opcode, [payload]
            elif opcode == OP_CONT:
                self._fragments.append(payload)
                if b0 & 0x80:
                    whole = b"".join(self._fragments)
                    self._fragments = []
                    if self._fragment_op == OP_TEXT:
                        self._on_text(whole, wall, mono)
            elif opcode == OP_PING:
                if self.transport is not None and not self.closed:
                    self.transport.write(_frame(OP_PONG, payload))
            elif opcode == OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                self.close_code = code
                if self.transport is not None:
                    if not self._closing:  # echo the server's close, then hang up
                        self.transport.write(_frame(OP_CLOSE, payload[:2]))
                    self.transport.close()
                self._finish(code)
                del buf[:pos]
                return
            # binary frames and pongs are ignored: Parley speaks JSON text
        if pos:
            del buf[:pos]


async def open_ws(
    url: str,
    on_text: Callable[[bytes, float, float], None],
    on_close: Callable[[int], None],
    *,
    subprotocol: str | None = PROTOCOL_VERSION,
    timeout: float = 10.0,  # noqa: ASYNC109
) -> WireProtocol:
    """Connect and finish the upgrade; raises ``HandshakeError``, ``OSError`` or ``TimeoutError``."""
    parts = urlsplit(url)
    secure = parts.scheme == "wss"
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if secure else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = parts.netloc
    loop = asyncio.get_running_loop()

    async def _open() -> WireProtocol:
        _, proto = await loop.create_connection(
            lambda: WireProtocol(host_header, path, subprotocol, on_text, on_close),
            host,
            port,
            ssl=ssl.create_default_context() if secure else None,
        )
        await proto.handshake
        return proto

    return await asyncio.wait_for(_open(), timeout)
