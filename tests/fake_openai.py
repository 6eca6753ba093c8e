"""A real, scriptable OpenAI-compatible HTTP server for tests (not a test module).

``FakeOpenAI`` speaks plain HTTP/1.1 on ``127.0.0.1`` (port 0) from its own thread
and event loop, so it serves async tests, sync tests and a Parley server running in
another thread alike. It answers ``POST /v1/chat/completions`` with
``chat.completion.chunk`` server-sent events, the way OpenAI, vLLM and Ollama do.

Each request takes the next ``Reply`` from the script; the last one repeats, so
``fake.script(Reply.error(503), Reply.error(503), Reply(chunks=["ok"]))`` fails
twice and then succeeds. Every request is recorded (headers, JSON body), and a
client that goes away before its response is complete sets ``fake.disconnected``
(a ``threading.Event``; await ``fake.wait_disconnect()`` from async code).

Delays in a ``Reply`` are the fake's behaviour (a slow model), never test
synchronization: they end early as soon as the client disconnects.

A reply can also stream reasoning (``reasoning=[...]`` in the
``reasoning_field`` delta field, before any content) and tool calls
(``tool_calls=[FakeCall(...)]`` after the content, as OpenAI does: a first chunk
with the call's ``index``, ``id``, ``type`` and ``name`` and empty arguments, then
one chunk per argument piece; ``tool_calls_mode`` ``"interleaved"`` sends the
pieces of several calls round-robin, ``"one_chunk"`` sends every call whole in
one delta). ``reasoning_tokens`` adds ``completion_tokens_details`` to the usage.

``blackhole_listener()`` gives an address whose TCP connect never completes, for
connect-timeout tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

#: Put in every error body and refusal so tests can prove provider text never leaks.
SECRET = "SECRET-UPSTREAM-PAYLOAD-7f3a"


@dataclass
class FakeCall:
    """One streamed tool call: its arguments text cut into ``arguments`` pieces (anywhere, even mid-token)."""

    name: str
    arguments: list[str] = field(default_factory=lambda: ["{}"])
    id: str | None = None  # None: the call is streamed without an id, as some local servers do


@dataclass
class Reply:
    """What the fake does with one request."""

    chunks: list[str] = field(default_factory=lambda: ["Hello", ", ", "world", "!"])
    usage: tuple[int, int] | None = (7, 4)  # (prompt_tokens, completion_tokens); None = no usage chunk
    finish_reason: str | None = "stop"  # None = no finish chunk (a stream that just ends)
    status: int = 200
    error_body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)  # extra response headers (Retry-After, ...)
    headers_delay: float = 0.0  # seconds before the status line (model queueing)
    ttft: float = 0.0  # seconds after the headers before the first chunk
    between: float = 0.0  # seconds between content chunks
    drop_before_headers: bool = False  # read the request, then close the connection with no response
    drop_after: int | None = None  # abort the connection after this many content chunks (0 = after headers)
    end_after: int | None = None  # end the body cleanly (no finish, no [DONE]) after this many chunks
    refusal: str | None = None  # stream a ``refusal`` delta instead of content
    stream_error_after: int | None = None  # send an in-stream ``{"error": ...}`` event after N chunks
    garbage_after: int | None = None  # send a ``data:`` line that is not JSON after N chunks (0 = first)
    reasoning: list[str] = field(default_factory=list)  # reasoning pieces, streamed before the content
    reasoning_field: str = "reasoning_content"  # or "reasoning"
    reasoning_tokens: int | None = None  # usage.completion_tokens_details.reasoning_tokens
    tool_calls: list[FakeCall] = field(default_factory=list)  # streamed after the content
    tool_calls_mode: str = "sequential"  # or "interleaved", "one_chunk"

    @classmethod
    def calls(cls, *calls: FakeCall, **kw: Any) -> Reply:
        """A reply that only calls tools and finishes ``tool_calls``, as OpenAI answers a tool turn."""
        kw.setdefault("finish_reason", "tool_calls")
        return cls(chunks=kw.pop("chunks", []), tool_calls=list(calls), **kw)

    @classmethod
    def error(cls, status: int, retry_after: str | None = None, **kw: Any) -> Reply:
        """An HTTP error answer whose body carries ``SECRET`` (as real providers echo prompts)."""
        headers = dict(kw.pop("headers", {}))
        if retry_after is not None:
            headers["Retry-After"] = retry_after
        body = kw.pop(
            "error_body",
            {"error": {"message": f"upstream says no: {SECRET}", "type": "test_error", "code": f"c{status}"}},
        )
        return cls(status=status, headers=headers, error_body=body, **kw)


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: Any  # parsed JSON (or the raw text if it was not JSON)


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found"}
_REASONS |= {429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway"}
_REASONS |= {503: "Service Unavailable", 504: "Gateway Timeout"}


_DONE, _DROPPED, _LEFT = "done", "dropped", "left"


class FakeOpenAI:
    """A scriptable OpenAI-compatible server; use as a context manager or ``start()``/``stop()``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._script: list[Reply] = [Reply()]
        self.requests: list[RecordedRequest] = []
        self.disconnected = threading.Event()  # a client left before its response was complete
        self.completed = 0  # responses written to the end
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None
        self.port = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakeOpenAI:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._serve(ready))
            except BaseException as exc:  # pragma: no cover - surfaced to start()
                failure.append(exc)
                ready.set()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="fake-openai", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    async def _serve(self, ready: threading.Event) -> None:
        self._stopping = asyncio.Event()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        ready.set()
        async with self._server:
            await self._stopping.wait()
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- scripting and observation ------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, *replies: Reply) -> None:
        """Answer the next requests with these replies, in order; the last one repeats."""
        assert replies, "script at least one reply"
        with self._lock:
            self._script = list(replies)

    def _next_reply(self) -> Reply:
        with self._lock:
            return self._script.pop(0) if len(self._script) > 1 else self._script[0]

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)

    def wait_requests_sync(self, count: int, timeout: float = 5.0) -> bool:
        """Block until at least ``count`` requests have arrived (their responses may still be running)."""
        with self._arrived:
            return self._arrived.wait_for(lambda: len(self.requests) >= count, timeout)

    async def wait_requests(self, count: int, within: float = 5.0) -> bool:
        """Wait (without blocking the caller's loop) until at least ``count`` requests have arrived."""
        return await asyncio.to_thread(self.wait_requests_sync, count, within)

    async def wait_disconnect(self, within: float = 5.0) -> bool:
        """Wait (without blocking the caller's loop) until a client disconnected mid-response."""
        return await asyncio.to_thread(self.disconnected.wait, within)

    # -- HTTP ---------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await self._read_request(reader)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            writer.close()
            return
        if request is None:
            writer.close()
            return
        with self._lock:
            self.requests.append(request)
            self._arrived.notify_all()
        reply = self._next_reply()
        gone = asyncio.Event()

        async def watch() -> None:
            # The client sends nothing more on this connection: EOF or a reset means it left.
            with contextlib.suppress(ConnectionError):
                await reader.read(1)
            gone.set()

        watcher = asyncio.create_task(watch())
        outcome = _LEFT
        try:
            outcome = await self._respond(request, reply, writer, gone)
        except (ConnectionError, asyncio.IncompleteReadError):
            outcome = _LEFT
        finally:
            watcher.cancel()
            if outcome == _DONE:
                with self._lock:
                    self.completed += 1
            elif outcome == _LEFT:
                self.disconnected.set()
            with contextlib.suppress(Exception):
                writer.close()

    async def _read_request(self, reader: asyncio.StreamReader) -> RecordedRequest | None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        raw = await reader.readexactly(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        return RecordedRequest(method=method, path=path, headers=headers, body=body)

    async def _pause(self, seconds: float, gone: asyncio.Event) -> bool:
        """Wait ``seconds`` unless the client leaves first; True if it left."""
        if seconds <= 0:
            return gone.is_set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(gone.wait(), seconds)
        return gone.is_set()

    async def _respond(
        self, request: RecordedRequest, reply: Reply, writer: asyncio.StreamWriter, gone: asyncio.Event
    ) -> str:
        """Write the scripted answer; ``_DONE``, ``_DROPPED`` (by script) or ``_LEFT`` (the client went)."""
        if await self._pause(reply.headers_delay, gone):
            return _LEFT
        if reply.drop_before_headers:
            writer.transport.abort()
            return _DROPPED
        if request.path.rstrip("/") != "/v1/chat/completions" or request.method != "POST":
            await self._write_json(writer, 404, {"error": {"message": f"no route {SECRET}"}}, {})
            return _DONE
        if reply.status != 200:
            await self._write_json(writer, reply.status, reply.error_body or {}, reply.headers)
            return _DONE

        body = request.body if isinstance(request.body, dict) else {}
        head = ["HTTP/1.1 200 OK", "Content-Type: text/event-stream", "Transfer-Encoding: chunked"]
        head += ["Connection: close", "Cache-Control: no-cache"]
        head += [f"{k}: {v}" for k, v in reply.headers.items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        await writer.drain()

        model = body.get("model", "fake-model")
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time())}
        base["model"] = model

        async def event(payload: Any) -> None:
            data = payload if isinstance(payload, str) else json.dumps(payload)
            frame = f"data: {data}\n\n".encode()
            writer.write(f"{len(frame):x}\r\n".encode() + frame + b"\r\n")
            await writer.drain()

        def choice(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        if reply.drop_after == 0:
            writer.transport.abort()
            return _DROPPED
        if reply.garbage_after == 0:
            await event(f"<html>{SECRET}</html>")
        if await self._pause(reply.ttft, gone):
            return _LEFT
        await event(choice({"role": "assistant", "content": None if reply.tool_calls else ""}))
        deltas = [{reply.reasoning_field: piece, "content": None} for piece in reply.reasoning]
        if reply.refusal is not None:
            deltas.append({"refusal": reply.refusal, "content": None})
        else:
            deltas += [{"content": piece} for piece in reply.chunks]
        deltas += _call_deltas(reply.tool_calls, reply.tool_calls_mode)
        for i, delta in enumerate(deltas):
            if i and await self._pause(reply.between, gone):
                return _LEFT
            await event(choice(delta))
            sent = i + 1
            if reply.drop_after == sent:
                writer.transport.abort()
                return _DROPPED
            if reply.garbage_after == sent:
                await event(f"<html>{SECRET}</html>")
            if reply.stream_error_after == sent:
                await event({"error": {"message": f"stream broke: {SECRET}", "type": "server_error"}})
                writer.write(b"0\r\n\r\n")
                await writer.drain()
                return _DONE
            if reply.end_after == sent:
                writer.write(b"0\r\n\r\n")
                await writer.drain()
                return _DONE
        if gone.is_set():
            return _LEFT
        if reply.finish_reason is not None:
            await event(choice({}, reply.finish_reason))
        include_usage = (body.get("stream_options") or {}).get("include_usage")
        if reply.usage is not None and include_usage:
            prompt, completion = reply.usage
            usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion}
            usage["total_tokens"] = prompt + completion
            if reply.reasoning_tokens is not None:
                usage["completion_tokens_details"] = {"reasoning_tokens": reply.reasoning_tokens}
            await event({**base, "choices": [], "usage": usage})
        await event("[DONE]")
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return _DONE

    async def _write_json(
        self, writer: asyncio.StreamWriter, status: int, payload: Any, headers: dict[str, str]
    ) -> None:
        data = json.dumps(payload).encode()
        head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}", "Content-Type: application/json"]
        head += [f"Content-Length: {len(data)}", "Connection: close"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
        await writer.drain()


def _call_deltas(calls: list[FakeCall], mode: str) -> list[dict[str, Any]]:
    """The ``tool_calls`` deltas for ``calls``, in the order and shape ``mode`` says."""

    def head(i: int, call: FakeCall, arguments: str) -> dict[str, Any]:
        part: dict[str, Any] = {"index": i, "type": "function"}
        if call.id is not None:
            part["id"] = call.id
        part["function"] = {"name": call.name, "arguments": arguments}
        return part

    if mode == "one_chunk":
        whole = [head(i, c, "".join(c.arguments)) for i, c in enumerate(calls)]
        return [{"tool_calls": whole}] if calls else []
    heads = [{"tool_calls": [head(i, c, "")]} for i, c in enumerate(calls)]
    pieces = [
        [{"tool_calls": [{"index": i, "function": {"arguments": piece}}]} for piece in c.arguments]
        for i, c in enumerate(calls)
    ]
    if mode == "interleaved":
        out = list(heads)
        for round_ in range(max((len(p) for p in pieces), default=0)):
            out += [p[round_] for p in pieces if round_ < len(p)]
        return out
    assert mode == "sequential", mode
    return [d for h, p in zip(heads, pieces, strict=True) for d in (h, *p)]


@contextlib.contextmanager
def blackhole_listener() -> Iterator[str]:
    """Yield a base URL whose TCP connect hangs: a listener with a full accept queue that never accepts."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    port = srv.getsockname()[1]
    fillers: list[socket.socket] = []
    try:
        for _ in range(64):  # fill the accept queue until a connect no longer completes
            probe = socket.socket()
            probe.settimeout(0.05)
            try:
                probe.connect(("127.0.0.1", port))
            except (TimeoutError, OSError):
                probe.close()
                break
            fillers.append(probe)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        for s in fillers:
            s.close()
        srv.close()
