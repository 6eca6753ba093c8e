"""Frames written straight into uvicorn's transport (server/fastpath/): byte-exact, and only when allowed."""

from __future__ import annotations

import json

import pytest
from websockets.asyncio.client import connect
from websockets.frames import Frame, Opcode

from parley.client import ParleyClient
from parley.server.fastpath.uvicorn_ws import text_frame

from .support import live_server, reference_reply


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65_535, 65_536, 70_000])
def test_text_frame_is_byte_identical_to_websockets_framing(size: int) -> None:
    """Our framing of a text message equals websockets' unmasked, final text frame at every length class."""
    text = ("é" * size)[: size // 2] + "x" * (size - size // 2)
    expected = Frame(Opcode.TEXT, text.encode()).serialize(mask=False, extensions=[])
    assert text_frame(text) == expected


async def test_served_connections_write_directly_and_replay_the_same_reply() -> None:
    """Under uvicorn's sans-I/O WebSocket protocol a connection writes to the transport itself, and a
    reply read live, then replayed on resume (over 64 KiB: several transport writes), is the reply of
    the ordinary path."""
    async with live_server(store="memory://", echo_tokens_per_second=0, echo_reply_tokens=30_000) as live:
        async with ParleyClient(live.url) as c:
            (conn,) = live.state.connections
            assert conn.direct is not None
            reply = await c.ask("direct please")
            sid, token, logged = c.session_id, c.resume_token, c.last_seq
        async with ParleyClient(live.url, session_id=sid, resume_token=token, last_seq=0) as again:
            assert again.ready is not None and again.ready["recovered"] is True
            replayed = await again.next_event("response.completed", timeout=30)
            assert again.last_seq == logged and again.gaps == 0 and again.duplicates_dropped == 0
        expected, _ = await reference_reply(live.url, "direct please")
    assert reply.text == expected == "".join(again.texts[replayed["response_id"]])
    assert len(reply.text.encode()) > 2 * 64 * 1024


async def test_negotiated_compression_keeps_the_asgi_send() -> None:
    """With per-message deflate negotiated, frames go through uvicorn's send (which compresses), and the
    reply arrives whole."""
    async with live_server(store="memory://", ws_per_message_deflate=True, echo_reply_tokens=40) as live:
        async with connect(live.url, compression="deflate") as ws:
            await ws.send(json.dumps({"type": "hello", "protocol": "parley.v1"}))
            assert json.loads(await ws.recv())["type"] == "session.ready"
            (conn,) = live.state.connections
            assert conn.direct is None
            await ws.send(json.dumps({"type": "message.send", "client_msg_id": "c1", "content": "squeeze"}))
            while (ev := json.loads(await ws.recv()))["type"] != "response.completed":
                pass
    assert ev["usage"]["output_tokens"] == 40


def test_the_endpoint_is_found_when_the_app_is_mounted_under_a_prefix() -> None:
    """Mounted below a path (ASGI root_path), the app still serves its WebSocket at <prefix>/v1/ws."""
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.testclient import TestClient

    from parley.server.app import create_app
    from parley.server.settings import Settings

    outer = Starlette(routes=[Mount("/chat", app=create_app(Settings(store="memory://")))])
    with (
        TestClient(outer) as client,  # (at "localhost": an allowed Host by default, server/guard.py)
        client.websocket_connect("ws://localhost/chat/v1/ws", subprotocols=["parley.v1"]) as ws,
    ):
        ws.send_json({"type": "hello", "protocol": "parley.v1"})
        assert ws.receive_json()["type"] == "session.ready"
