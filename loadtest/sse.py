"""``parley loadtest --transport sse``: the same simulated user over the HTTP API instead of the WebSocket.

A session is opened with ``POST /v1/sessions``; each turn is ``POST .../messages`` with ``Accept:
text/event-stream``, whose stream carries the turn's events (the same JSON as the WebSocket's
frames) and ends after ``response.completed``. Every event goes through ``LoadSession._on_text``,
so the integrity checks (seq order, token counts, identical replies) and the figures (TTFT, gaps,
delivery latency) are the WebSocket run's, measured the same way, by a client as lean as the
WebSocket one (``http_wire.py``). No chaos mode here (a cut stream would be resumed with
``GET .../events`` and ``Last-Event-ID``; tests/test_http.py covers that).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

from .http_wire import HttpConnection, HttpError, connect
from .session import LoadSession, SessionFailed


def http_base(ws_url: str) -> str:
    """``ws://host:port/v1/ws`` -> ``http://host:port`` (``wss`` -> ``https``)."""
    parts = urlsplit(ws_url)
    scheme = "https" if parts.scheme == "wss" else "http"
    return f"{scheme}://{parts.netloc}"


class SseLoadSession(LoadSession):
    """One simulated user whose turns are SSE answers to POSTs, on its own keep-alive connection."""

    conn: HttpConnection | None = None

    def _headers(self) -> dict[str, str]:
        headers = {}
        if self.resume_token:
            headers["parley-resume-token"] = self.resume_token
        if self.cfg.token:
            headers["authorization"] = f"Bearer {self.cfg.token}"
        return headers

    async def connect(self, resume: bool) -> None:
        if resume:
            raise SessionFailed("sse_resume_unsupported")
        self._closed = asyncio.get_running_loop().create_future()  # no connection held between turns
        gate = self.ctx.connect_gate
        if gate is not None:
            await gate.acquire()
        started = time.perf_counter()
        try:
            self.conn = await asyncio.wait_for(
                connect(http_base(self.cfg.urls[self.url_index])), self.cfg.connect_timeout_s
            )
            body: dict[str, Any] = {"metadata": {"tenant_id": self.cfg.tenant}} if self.cfg.tenant else {}
            status, answer = await asyncio.wait_for(
                self.conn.request("POST", "/v1/sessions", self._headers(), body), self.cfg.connect_timeout_s
            )
        except HttpError as exc:
            raise OSError(str(exc)) from exc
        finally:
            if gate is not None:
                gate.release()
        if status != 201:
            raise SessionFailed(f"hello:{_code(status, answer)}")
        created = json.loads(answer)
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
        assert self.conn is not None
        headers = {**self._headers(), "accept": "text/event-stream"}
        body = {"client_msg_id": self.cid, "content": self._content()}
        path = f"/v1/sessions/{self.session_id}/messages"
        try:
            status, answer = await asyncio.wait_for(
                self.conn.request("POST", path, headers, body, on_event=self._on_text), cfg.turn_timeout_s
            )
        except TimeoutError:
            raise SessionFailed("timeout") from None
        except HttpError:
            raise SessionFailed("http:closed") from None
        if status != 200:
            raise SessionFailed(_code(status, answer))
        if not done.done():
            raise SessionFailed("stream_ended_early")
        done.result()
        self.stats.counts["turns_completed"] += 1
        self.ctx.last_done = time.perf_counter()

    def close(self) -> None:
        if self._live:
            self._live = False
            self.stats.counts["live"] -= 1
        if self.conn is not None:
            self.conn.close()

    def abort(self) -> None:
        if self.conn is not None:
            self.conn.close()


def _code(status: int, body: bytes) -> str:
    try:
        return str(json.loads(body)["error"]["code"])
    except Exception:
        return f"http_{status}"
