"""B5's baseline: a bare ``websockets`` server (compression off) holding idle parley.v1 connections.

Each connection does what an idle Parley connection does: answers ``hello`` with a
``session.ready`` and sends an application ``heartbeat`` whenever it has been
quiet for the heartbeat interval (plus the WebSocket-level ping at the same
interval, as uvicorn does for Parley). Environment: PARLEY_HOST, PARLEY_PORT,
PARLEY_HEARTBEAT_INTERVAL_MS, PARLEY_MAX_FRAME_BYTES. Run: ``python -m bench.bare_ws``.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

PROTOCOL = "parley.v1"


async def handler(ws: ServerConnection) -> None:
    interval = int(os.environ.get("PARLEY_HEARTBEAT_INTERVAL_MS", "15000")) / 1000
    try:
        hello = json.loads(await ws.recv())
        if hello.get("type") != "hello":
            await ws.close(4000)
            return
        await ws.send(
            json.dumps(
                {
                    "type": "session.ready",
                    "session_id": f"s_{uuid.uuid4().hex}",
                    "resume_token": "bare",
                    "protocol": PROTOCOL,
                    "heartbeat_interval_ms": int(interval * 1000),
                    "resumed": False,
                    "recovered": True,
                    "last_seq": 0,
                }
            )
        )
        while True:
            try:
                await asyncio.wait_for(ws.recv(), interval)
            except TimeoutError:
                await ws.send(json.dumps({"type": "heartbeat", "ts": int(time.time() * 1000), "last_seq": 0}))
    except ConnectionClosed:
        pass


async def main() -> None:
    interval = int(os.environ.get("PARLEY_HEARTBEAT_INTERVAL_MS", "15000")) / 1000
    async with serve(
        handler,
        os.environ.get("PARLEY_HOST", "127.0.0.1"),
        int(os.environ.get("PARLEY_PORT", "8000")),
        subprotocols=[PROTOCOL],  # type: ignore[list-item]
        compression=None,
        max_size=int(os.environ.get("PARLEY_MAX_FRAME_BYTES", str(64 * 1024))),
        ping_interval=interval,
        ping_timeout=interval,
        backlog=2048,
        process_request=_healthz,
    ) as server:
        await server.serve_forever()


def _healthz(connection, request):  # type: ignore[no-untyped-def]
    """Answer plain HTTP GET /healthz so the bench can wait for readiness the same way."""
    if request.path == "/healthz":
        return connection.respond(200, "ok\n")
    return None


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
