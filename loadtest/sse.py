"""``parley loadtest --transport sse``: the same simulated user over the HTTP API instead of the WebSocket.

A session is opened with ``POST /v1/sessions``; each turn is ``POST .../messages`` with ``Accept:
text/event-stream``, whose stream carries the turn's events (the same JSON as the WebSocket's
frames) and ends after ``response.completed``. Every event goes through ``LoadSession._on_text``,
so the integrity checks (seq order, token counts, identical replies) and the figures (TTFT, gaps,
delivery latency) are the WebSocket run's, measured the same way. No chaos mode here (a cut
stream would be resumed with ``GET .../events`` and ``Last-Event-ID``; tests/test_http.py covers it).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import httpx

from .session import LoadSession, SessionFailed


def http_base(ws_url: str) -> str:
    """``ws://host:port/v1/ws`` -> ``http://host:port`` (``wss`` -> ``https``)."""
    parts = urlsplit(ws_url)
    scheme = "https" if parts.scheme == "wss" else "http"
    return f"{scheme}://{parts.netloc}"


class SseLoadSession(LoadSession):
    """One simulated user whose turns are SSE answers to POSTs (one HTTP client per run)."""

    def _client(self) -> httpx.AsyncClient:
        ctx = self.ctx
        client: httpx.AsyncClient | None = ctx.http_client
        if client is None:
            limits = httpx.Limits(
                max_connections=self.cfg.sessions * 2, max_keepalive_connections=self.cfg.sessions
            )
            client = httpx.AsyncClient(timeout=self.cfg.turn_timeout_s, limits=limits)
            ctx.http_client = client
        return client

    def _headers(self) -> dict[str, str]:
        headers = {}
        if self.resume_token:
            headers["Parley-Resume-Token"] = self.resume_token
        if self.cfg.token:
            headers["Authorization"] = f"Bearer {self.cfg.token}"
        return headers

    def _base(self) -> str:
        return http_base(self.cfg.urls[self.url_index])

    async def connect(self, resume: bool) -> None:
        if resume:
            raise SessionFailed("sse_resume_unsupported")
        loop = asyncio.get_running_loop()
        self._closed = loop.create_future()  # an SSE session holds no connection between turns
        gate = self.ctx.connect_gate
        if gate is not None:
            await gate.acquire()
        started = time.perf_counter()
        try:
            body: dict[str, Any] = {"metadata": {"tenant_id": self.cfg.tenant}} if self.cfg.tenant else {}
            r = await self._client().post(f"{self._base()}/v1/sessions", json=body, headers=self._headers())
        except httpx.HTTPError as exc:
            raise OSError(str(exc)) from exc
        finally:
            if gate is not None:
                gate.release()
        if r.status_code != 201:
            raise SessionFailed(f"hello:{_code(r)}")
        created = r.json()
        self.session_id, self.resume_token = created["session_id"], created["resume_token"]
        now = time.perf_counter()
        self.stats.observe("connect", now - self.ctx.t0, (now - started) * 1000)
        self.stats.counts["connected"] += 1
        self.stats.counts["live"] += 1
        self._live = True

    async def take_turn(self, turn: int) -> None:
        """POST the turn and read its SSE answer to the end (``response.completed``)."""
        cfg = self.cfg
        self.turn = turn
        self.cid = f"lt-{uuid.uuid4().hex[:16]}"
        self.accepted = False
        self.message_id = self.response_id = None
        self.tokens = self.token_base = 0
        self.parts, self.arrivals = [], []
        self.first_at = None
        self.disrupted = self.rebuilt = False
        self.drop_at = None
        self._done = done = asyncio.get_running_loop().create_future()
        self.sent_at = time.perf_counter()
        if self.ctx.first_send is None:
            self.ctx.first_send = self.sent_at
        self.stats.counts["turns_sent"] += 1
        url = f"{self._base()}/v1/sessions/{self.session_id}/messages"
        headers = {**self._headers(), "Accept": "text/event-stream"}
        body = {"client_msg_id": self.cid, "content": self._content()}
        try:
            async with asyncio.timeout(cfg.turn_timeout_s):
                async with self._client().stream("POST", url, json=body, headers=headers) as r:
                    if r.status_code != 200:
                        await r.aread()
                        raise SessionFailed(_code(r))
                    async for line in r.aiter_lines():
                        if line.startswith("data: "):
                            self._on_text(line[6:].encode(), time.time(), time.perf_counter())
        except TimeoutError:
            raise SessionFailed("timeout") from None
        except httpx.HTTPError as exc:
            raise SessionFailed(f"http:{type(exc).__name__}") from None
        if not done.done():
            raise SessionFailed("stream_ended_early")
        done.result()
        self.stats.counts["turns_completed"] += 1
        self.ctx.last_done = time.perf_counter()

    def close(self) -> None:
        if self._live:
            self._live = False
            self.stats.counts["live"] -= 1

    def abort(self) -> None:
        return None


def _code(r: httpx.Response) -> str:
    try:
        return str(r.json()["error"]["code"])
    except Exception:
        return f"http_{r.status_code}"


async def close_client(ctx: Any) -> None:
    """The run is over: close the shared HTTP client (and its connections)."""
    client: httpx.AsyncClient | None = ctx.http_client
    if client is not None:
        await client.aclose()
        ctx.http_client = None
