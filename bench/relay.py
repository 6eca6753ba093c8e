"""The baseline: a bare Starlette/uvicorn relay that speaks enough of parley.v1 for the load client.

It stores nothing, coalesces nothing and cannot resume: each echo token becomes
one ``response.delta`` frame the moment the model yields it. It uses the same
echo model (``server.providers.echo.EchoProvider``, so the same token cost and
pacing), the same uvicorn options as ``parley serve`` (``server/cli.py``) and the
same environment variables:

    PARLEY_HOST, PARLEY_PORT, PARLEY_ECHO_TTFT_MS, PARLEY_ECHO_TOKENS_PER_SECOND,
    PARLEY_ECHO_REPLY_TOKENS, PARLEY_HEARTBEAT_INTERVAL_MS, PARLEY_MAX_FRAME_BYTES,
    PARLEY_EVENT_TIMESTAMPS (adds "ts", epoch ms, to deltas, as Parley does when asked).

Run: ``python -m bench.relay`` (prints nothing but uvicorn's start-up lines).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from parley.server.providers.base import ChatMessage, ModelRequest, Profile, TextDelta, UsageReport
from parley.server.providers.echo import EchoProvider

PROTOCOL = "parley.v1"


def _env(name: str, default: str) -> str:
    return os.environ.get(f"PARLEY_{name}", default)


class RelaySettings:
    def __init__(self) -> None:
        self.host = _env("HOST", "127.0.0.1")
        self.port = int(_env("PORT", "8000"))
        self.ttft_ms = int(_env("ECHO_TTFT_MS", "0"))
        self.tokens_per_second = float(_env("ECHO_TOKENS_PER_SECOND", "40"))
        self.reply_tokens = int(_env("ECHO_REPLY_TOKENS", "60"))
        self.heartbeat_ms = int(_env("HEARTBEAT_INTERVAL_MS", "15000"))
        self.max_frame_bytes = int(_env("MAX_FRAME_BYTES", str(64 * 1024)))
        self.timestamps = _env("EVENT_TIMESTAMPS", "false").lower() in ("1", "true", "yes", "on")


class Relay:
    """One connection: hello, then for each message.send one streamed reply, one frame per token."""

    def __init__(self, ws: WebSocket, settings: RelaySettings, provider: EchoProvider) -> None:
        self.ws = ws
        self.settings = settings
        self.provider = provider
        self.seq = 0
        self.task: asyncio.Task[None] | None = None

    async def send(self, event: dict[str, Any], logged: bool = True) -> None:
        if logged:
            self.seq += 1
            event = {"seq": self.seq, **event}
        await self.ws.send_text(json.dumps(event))

    async def stream(self, content: str, response_id: str) -> None:
        request = ModelRequest([ChatMessage("user", content)], Profile(), trace_id="")
        started = time.monotonic()
        first: float | None = None
        tokens = 0
        stamp = self.settings.timestamps
        async for ev in self.provider.stream(request):
            if isinstance(ev, TextDelta):
                if first is None:
                    first = time.monotonic()
                tokens += 1
                delta: dict[str, Any] = {
                    "type": "response.delta",
                    "response_id": response_id,
                    "text": ev.text,
                }
                if stamp:
                    delta["ts"] = round(time.time() * 1000, 3)
                await self.send(delta)
            elif isinstance(ev, UsageReport):
                usage = {"input_tokens": ev.input_tokens, "output_tokens": ev.output_tokens}
        end = time.monotonic()
        await self.send(
            {
                "type": "response.completed",
                "response_id": response_id,
                "finish_reason": "stop",
                "usage": usage,
                "ttft_ms": None if first is None else round((first - started) * 1000),
                "latency_ms": round((end - started) * 1000),
            }
        )

    async def run(self) -> None:
        hello = json.loads(await self.ws.receive_text())
        if hello.get("type") != "hello":
            await self.ws.close(4000)
            return
        await self.send(
            {
                "type": "session.ready",
                "session_id": f"s_{uuid.uuid4().hex}",
                "resume_token": "relay",
                "protocol": PROTOCOL,
                "heartbeat_interval_ms": self.settings.heartbeat_ms,
                "resumed": False,
                "recovered": True,
                "last_seq": 0,
            },
            logged=False,
        )
        try:
            while True:
                msg = json.loads(await self.ws.receive_text())
                if msg.get("type") == "message.send":
                    mid, rid = f"m_{uuid.uuid4().hex}", f"r_{uuid.uuid4().hex}"
                    await self.send(
                        {
                            "type": "message.accepted",
                            "client_msg_id": msg["client_msg_id"],
                            "message_id": mid,
                            "content": msg["content"],
                        }
                    )
                    await self.send(
                        {
                            "type": "response.started",
                            "response_id": rid,
                            "in_reply_to": mid,
                            "profile": "relay",
                        }
                    )
                    self.task = asyncio.create_task(self.stream(msg["content"], rid))
                elif msg.get("type") == "ping":
                    await self.send({"type": "pong", "nonce": msg.get("nonce")}, logged=False)
        except WebSocketDisconnect:
            pass
        finally:
            if self.task is not None:
                self.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self.task


def create_relay(settings: RelaySettings | None = None) -> Starlette:
    settings = settings or RelaySettings()
    provider = EchoProvider(settings.ttft_ms, settings.tokens_per_second, settings.reply_tokens)

    async def endpoint(ws: WebSocket) -> None:
        offered = ws.scope.get("subprotocols") or []
        await ws.accept(subprotocol=PROTOCOL if PROTOCOL in offered else None)
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            await Relay(ws, settings, provider).run()

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(routes=[WebSocketRoute("/v1/ws", endpoint), Route("/healthz", healthz)])


def main() -> None:
    import uvicorn

    settings = RelaySettings()
    # the same options as ``parley serve`` (server/cli.py): ws and loop implementations left on "auto"
    uvicorn.run(
        create_relay(settings),
        host=settings.host,
        port=settings.port,
        ws_max_size=settings.max_frame_bytes,
        ws_per_message_deflate=False,
        ws_ping_interval=settings.heartbeat_ms / 1000,
        ws_ping_timeout=settings.heartbeat_ms / 1000,
        lifespan="on",
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
