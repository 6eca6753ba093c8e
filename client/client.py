"""Python client for Parley: connect, send, stream events, cancel, rate, and resume transparently.

``events()`` yields every server event as a dict, deduplicated by ``seq``; when the
socket drops (not closed by us) it reconnects with ``hello{session_id,
resume_token, last_seq}`` and continues, so callers see one unbroken stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

PROTOCOL = "parley.v1"
#: Close codes after which resuming is pointless (the request itself is refused).
FATAL_CLOSE_CODES = frozenset({4000, 4001, 4002, 4004, 4029})


class ParleyClosed(Exception):
    """The server closed the session for good (see ``code``)."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(f"closed by server: {code} {reason}")
        self.code = code
        self.reason = reason


@dataclass
class Reply:
    """A finished response as the client saw it."""

    response_id: str
    text: str
    completed: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def finish_reason(self) -> str:
        return str(self.completed.get("finish_reason"))


class ParleyClient:
    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        metadata: dict[str, Any] | None = None,
        session_id: str | None = None,
        resume_token: str | None = None,
        last_seq: int = 0,
        auto_resume: bool = True,
        max_resumes: int = 50,
        origin: str | None = None,
        subprotocols: list[str] | None = None,
        open_timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.token = token
        self.metadata = metadata or {}
        self.session_id = session_id
        self.resume_token = resume_token
        self.last_seq = last_seq
        self.auto_resume = auto_resume
        self.max_resumes = max_resumes
        self.origin = origin
        self.subprotocols = subprotocols if subprotocols is not None else [PROTOCOL]
        self.open_timeout = open_timeout  # handshake, and again hello -> session.ready
        self.ready: dict[str, Any] | None = None
        self.resumes = 0
        self.duplicates_dropped = 0  # events the server sent twice (must stay 0)
        self.gaps = 0  # seq jumps seen (must stay 0)
        self._ws: ClientConnection | None = None
        self._closing = False
        self._dropped = False
        self.message_ids: dict[str, str] = {}  # client_msg_id -> message_id
        self.response_of: dict[str, str] = {}  # message_id -> response_id
        self.texts: dict[str, list[str]] = {}  # response_id -> text parts received
        self.completed: dict[str, dict[str, Any]] = {}  # response_id -> response.completed

    # ------------------------------------------------------------ connection

    async def connect(self) -> dict[str, Any]:
        """Open (or resume, when a session id is known) and return ``session.ready``."""
        self._ws = await connect(
            self.url,
            subprotocols=self.subprotocols,  # type: ignore[arg-type]
            compression=None,
            origin=self.origin,  # type: ignore[arg-type]
            max_size=2**22,
            ping_interval=None,
            open_timeout=self.open_timeout,
            close_timeout=2,
        )
        hello: dict[str, Any] = {"type": "hello", "protocol": PROTOCOL}
        if self.token:
            hello["token"] = self.token
        if self.metadata:
            hello["metadata"] = self.metadata
        if self.session_id:
            hello.update(session_id=self.session_id, resume_token=self.resume_token, last_seq=self.last_seq)
        await self._ws.send(json.dumps(hello))
        try:
            async with asyncio.timeout(self.open_timeout):  # a server that never answers is a failed open
                first = json.loads(await self._ws.recv())
        except TimeoutError:
            self._ws.transport.abort()
            raise
        except ConnectionClosed as exc:
            raise ParleyClosed(
                exc.rcvd.code if exc.rcvd else None, exc.rcvd.reason if exc.rcvd else ""
            ) from None
        if first.get("type") == "error":
            code = None
            with contextlib.suppress(ConnectionClosed):
                await self._ws.recv()
            code = self._ws.close_code
            raise ParleyClosed(code, first.get("code", ""))
        self.ready = first
        self.session_id = first["session_id"]
        self.resume_token = first["resume_token"]
        return first

    async def close(self) -> None:
        self._closing = True
        if self._ws is not None:
            await self._ws.close()

    def drop(self) -> None:
        """Kill the TCP connection without a close handshake (tests: an abrupt network loss)."""
        if self._ws is not None:
            self._ws.transport.abort()
            self._dropped = True  # frames already buffered are lost too, as on a real network

    async def __aenter__(self) -> ParleyClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------ requests

    async def send_raw(self, data: str | bytes) -> None:
        assert self._ws is not None, "not connected"
        await self._ws.send(data)

    async def send_json(self, message: dict[str, Any]) -> None:
        await self.send_raw(json.dumps(message))

    async def send(
        self,
        content: str,
        *,
        client_msg_id: str | None = None,
        profile: str | None = None,
        response_format: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> str:
        """Send a user turn; returns its ``client_msg_id`` (the idempotency key)."""
        cid = client_msg_id or uuid.uuid4().hex
        msg: dict[str, Any] = {"type": "message.send", "client_msg_id": cid, "content": content}
        if profile:
            msg["profile"] = profile
        if response_format:
            msg["response_format"] = response_format
        if metadata:
            msg["metadata"] = metadata
        await self.send_json(msg)
        return cid

    async def cancel(self, response_id: str | None = None) -> None:
        msg: dict[str, Any] = {"type": "response.cancel"}
        if response_id:
            msg["response_id"] = response_id
        await self.send_json(msg)

    async def feedback(
        self, response_id: str, rating: str, comment: str | None = None, tags: list[str] | None = None
    ) -> None:
        msg: dict[str, Any] = {"type": "feedback", "response_id": response_id, "rating": rating}
        if comment is not None:
            msg["comment"] = comment
        if tags:
            msg["tags"] = tags
        await self.send_json(msg)

    async def ping(self, nonce: str | None = None) -> None:
        await self.send_json({"type": "ping", "nonce": nonce} if nonce else {"type": "ping"})

    # ------------------------------------------------------------ receiving

    async def _resume(self) -> None:
        delay = 0.05
        while True:
            if self.resumes >= self.max_resumes:
                raise ParleyClosed(None, "too many resumes")
            self.resumes += 1
            try:
                await self.connect()
                return
            except ParleyClosed as exc:
                if exc.code in FATAL_CLOSE_CODES:
                    raise
            except (OSError, ConnectionClosed, websockets.InvalidHandshake, TimeoutError):
                pass
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 2.0)

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Every server event, deduplicated by seq, across transparent resumes."""
        while True:
            assert self._ws is not None, "not connected"
            if self._dropped:
                self._dropped = False
                await self._resume()
                continue
            try:
                raw = await self._ws.recv()
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd else None
                if self._closing:
                    return
                if not self.auto_resume or code in FATAL_CLOSE_CODES:
                    raise ParleyClosed(code, exc.rcvd.reason if exc.rcvd else "") from None
                await self._resume()
                continue
            event = json.loads(raw)
            seq = event.get("seq")
            if seq is not None:
                if seq <= self.last_seq:
                    self.duplicates_dropped += 1  # already seen before a resume
                    continue
                if seq != self.last_seq + 1 and self.last_seq:
                    self.gaps += 1  # never expected: the server replays every missed event
                self.last_seq = seq
            elif event.get("type") == "session.snapshot":
                self.last_seq = event["last_seq"]
            self._track(event)
            yield event

    async def next_event(self, *types: str, timeout: float = 10.0) -> dict[str, Any]:  # noqa: ASYNC109
        """The next event (of one of ``types``, if given), skipping heartbeats."""

        async def _next() -> dict[str, Any]:
            async for event in self.events():
                if types and event["type"] not in types:
                    continue
                if not types and event["type"] == "heartbeat":
                    continue
                return event
            raise ParleyClosed(None, "closed")

        return await asyncio.wait_for(_next(), timeout)

    def _track(self, event: dict[str, Any]) -> None:
        """Remember which response answers which message, its text and its end."""
        kind = event["type"]
        if kind == "message.accepted":
            self.message_ids[event["client_msg_id"]] = event["message_id"]
        elif kind == "message.duplicate":
            self.message_ids[event["client_msg_id"]] = event["message_id"]
            self.response_of[event["message_id"]] = event["response_id"]
        elif kind == "response.started":
            self.response_of[event["in_reply_to"]] = event["response_id"]
            self.texts.setdefault(event["response_id"], [])
        elif kind == "response.delta":
            self.texts.setdefault(event["response_id"], []).append(event["text"])
        elif kind == "response.completed":
            self.completed[event["response_id"]] = event
        elif kind == "session.snapshot":
            self.texts = {t["id"]: [t["content"]] for t in event["turns"] if t["role"] == "assistant"}
            if event.get("in_flight"):
                flight = event["in_flight"]
                self.texts[flight["id"]] = [flight["content"]]

    def _response_for(self, client_msg_id: str | None) -> str | None:
        if client_msg_id is None:
            return None
        message_id = self.message_ids.get(client_msg_id)
        return self.response_of.get(message_id) if message_id else None

    async def collect(self, client_msg_id: str, timeout: float = 30.0) -> Reply:  # noqa: ASYNC109
        """Read until the response to ``client_msg_id`` completes (even if its events were read already)."""

        async def _collect() -> Reply:
            seen: list[dict[str, Any]] = []
            while True:
                rid = self._response_for(client_msg_id)
                if rid is not None and rid in self.completed:
                    return Reply(rid, "".join(self.texts.get(rid, [])), self.completed[rid], seen)
                async for ev in self.events():
                    seen.append(ev)
                    if ev["type"] in ("response.completed", "message.duplicate"):
                        break
                    ref = ev.get("ref") or {}
                    if ev["type"] == "error" and ref.get("client_msg_id") == client_msg_id:
                        raise RuntimeError(f"request refused: {ev['code']}: {ev['message']}")
                else:
                    raise ParleyClosed(None, "closed before the response completed")

        return await asyncio.wait_for(_collect(), timeout)

    async def ask(self, content: str, **kwargs: Any) -> Reply:
        """Send a turn and wait for its whole reply."""
        timeout = kwargs.pop("timeout", 30.0)
        cid = await self.send(content, **kwargs)
        return await self.collect(cid, timeout=timeout)
