"""The web demo behind a proxy that refuses WebSocket upgrades: the client falls back to SSE + POST
by itself and still streams, stops and resumes (a reload mid-reply), in real Chromium against a real
``parley serve``. The proxy is a small asyncio server here: ``Upgrade: websocket`` gets a 403, as
from corporate proxies that block WebSockets; plain HTTP (the page, POSTs, the event stream) passes
through unbuffered.

Synchronisation is on observable state (Playwright's expect / wait_for_function, or a second
reader on the session log); never on sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page, expect

from .harness import Parley, run_conversation, session_log
from .test_demo import (
    CONNECTED,
    client_state,
    open_demo,
    replies,
    say,
    text_of,
    wait_done,
    wait_streaming_words,
)

pytestmark = pytest.mark.browser

REFUSAL = b"WebSockets are not allowed here.\n"


class NoWebSocketProxy:
    """An HTTP proxy on loopback that answers 403 to every WebSocket upgrade and passes the rest.

    Each connection carries one request (it asks the server for ``Connection: close``), so every
    request's head is seen here: an upgrade can never slip through on a reused connection. What
    passed is recorded as ``(method, path, status)`` for failure messages.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.refused = 0
        self.passed: list[list[Any]] = []  # [method, path, status or None], in order
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="no-ws-proxy", daemon=True)
        self._thread.start()
        start = asyncio.start_server(self._serve, "127.0.0.1", 0)
        self._server = asyncio.run_coroutine_threadsafe(start, self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def describe(self) -> str:
        seen = ", ".join(f"{m} {p} -> {s}" for m, p, s in self.passed[-12:])
        return f"{self.refused} WebSocket upgrades refused; last requests passed: {seen or 'none'}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            writer.close()
            return
        request_line, *lines = head.decode("latin-1").split("\r\n")
        headers = [line for line in lines if line]
        if any(h.lower().startswith("upgrade:") and "websocket" in h.lower() for h in headers):
            self.refused += 1
            writer.write(
                b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                + f"Content-Length: {len(REFUSAL)}\r\n\r\n".encode()
                + REFUSAL
            )
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            writer.close()
            return
        method, path = [*request_line.split(" "), "", ""][:2]
        record: list[Any] = [method, path, None]  # the status is filled in when the answer starts
        self.passed.append(record)
        kept = [h for h in headers if not h.lower().startswith(("connection:", "keep-alive:"))]
        forwarded = "\r\n".join([request_line, *kept, "Connection: close", "", ""]).encode("latin-1")
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        up_writer.write(forwarded)
        upstream = asyncio.create_task(self._pipe(reader, up_writer))
        try:
            first = await up_reader.read(65536)
            if first.startswith(b"HTTP/1."):
                with contextlib.suppress(ValueError, IndexError):
                    record[2] = int(first.split(b" ", 2)[1])
            if first:
                writer.write(first)
                await writer.drain()
                await self._pipe(up_reader, writer)
        except ConnectionError:
            pass
        finally:
            upstream.cancel()
            for w in (writer, up_writer):
                w.close()

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        """Copy bytes as they come (an SSE stream must not wait for a buffer to fill)."""
        with contextlib.suppress(ConnectionError):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()

    def close(self) -> None:
        async def stop() -> None:
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture
def proxy(parley: Parley) -> Iterator[NoWebSocketProxy]:
    p = NoWebSocketProxy(parley.port)
    yield p
    p.close()


def open_over_sse(page: Page, proxy: NoWebSocketProxy) -> None:
    """Open the demo through the proxy and wait until it is connected, over SSE."""
    page.goto(f"{proxy.http}/")
    try:
        page.wait_for_function(CONNECTED, timeout=20_000)
    except PlaywrightError as exc:
        raise AssertionError(f"the demo never connected through the proxy: {proxy.describe()}") from exc
    expect(page.get_by_test_id("transport")).to_have_text("SSE")
    assert proxy.refused >= 1, "the WebSocket was never tried (and refused)"
    assert page.evaluate("parley.transport") == "sse"


def accepted_messages(parley: Parley, page: Page, turns: int) -> list[dict[str, Any]]:
    """The session's message.accepted events, read by a second reader until ``turns`` replies completed."""
    st = client_state(page)
    events = session_log(
        parley.ws,
        st["sessionId"],
        st["resumeToken"],
        until=lambda evs: sum(e["type"] == "response.completed" for e in evs) >= turns,
    )
    return [e for e in events if e["type"] == "message.accepted"]


# ------------------------------------------------------------------ tests


def test_the_demo_says_websocket_when_nothing_is_in_the_way(page: Page, parley: Parley) -> None:
    """Straight to the server the demo connects over the WebSocket and shows "WebSocket"."""
    open_demo(page, parley.http)
    expect(page.get_by_test_id("transport")).to_have_text("WebSocket")
    assert page.evaluate("parley.transport") == "websocket"


def test_websockets_refused_the_demo_streams_over_sse(
    page: Page, parley: Parley, proxy: NoWebSocketProxy
) -> None:
    """With upgrades refused the demo falls back to SSE, shows "SSE", and streams the model's exact text."""
    message = "Hello over server-sent events"
    open_over_sse(page, proxy)
    refused = proxy.refused
    say(page, message)
    reply = replies(page).first
    partial = wait_streaming_words(page, 3)
    final = wait_done(reply)
    assert final.startswith(partial) and len(final) > len(partial)
    assert final == run_conversation(parley.ws, [message])[0]
    assert proxy.refused == refused, "no WebSocket attempt once SSE works"
    assert ("POST", "/v1/sessions", 201) in [tuple(r) for r in proxy.passed]
    accepted = accepted_messages(parley, page, 1)
    assert [e["content"] for e in accepted] == [message], "the POSTed message was logged once"


def test_websockets_refused_stop_cancels_the_reply_over_post(
    page: Page, parley: Parley, proxy: NoWebSocketProxy
) -> None:
    """Over SSE, Stop (a POST to .../cancel) ends the streaming reply as stopped; the next one is whole."""
    open_over_sse(page, proxy)
    say(page, "Please write a long answer")
    first = replies(page).first
    wait_streaming_words(page, 2)
    page.get_by_test_id("stop").click()
    stopped = wait_done(first, "stopped")
    expect(first).to_have_attribute("data-finish-reason", "cancelled")
    assert 0 < len(stopped.split()) < 45
    assert any(m == "POST" and p.endswith("/cancel") for m, p, _ in proxy.passed)

    say(page, "And now a short one")
    assert len(wait_done(replies(page).nth(1)).split()) == 45
    assert text_of(first) == stopped, "the stopped reply did not grow afterwards"


def test_websockets_refused_a_reload_mid_reply_resumes_the_same_reply_over_sse(
    page: Page, parley: Parley, proxy: NoWebSocketProxy
) -> None:
    """Reloading mid-reply over SSE resumes the same session from its seq: the reply finishes once, whole."""
    message = "Reload me while I stream over SSE"
    open_over_sse(page, proxy)
    say(page, message)
    reply = replies(page).first
    partial = wait_streaming_words(page, 3)
    response_id = reply.get_attribute("data-response-id")
    session_id = client_state(page)["sessionId"]

    page.reload()
    restored = page.locator(f'[data-testid=message-assistant][data-response-id="{response_id}"]')
    expect(restored).to_have_count(1)
    assert text_of(restored).startswith(partial)
    page.wait_for_function(CONNECTED)
    expect(page.get_by_test_id("transport")).to_have_text("SSE")
    final = wait_done(restored)
    assert final == run_conversation(parley.ws, [message])[0]
    st = client_state(page)
    assert st["sessionId"] == session_id
    assert st["status"]["resumed"] is True
    assert st["status"]["transport"] == "sse"
    expect(replies(page)).to_have_count(1)
    expect(page.get_by_test_id("message-user")).to_have_count(1)
    resumes = [p for m, p, _ in proxy.passed if m == "GET" and p == f"/v1/sessions/{session_id}/events"]
    assert len(resumes) >= 2, "the reloaded page tailed the same session's events again"
    assert len(accepted_messages(parley, page, 1)) == 1
