"""``parley``: serve, print the AsyncAPI document, run load tests, export feedback."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from .settings import Settings


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app

    overrides: dict[str, Any] = {
        k: v for k, v in vars(args).items() if k in Settings.model_fields and v is not None
    }
    settings = Settings(**overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    config: dict[str, Any] = dict(
        host=settings.host,
        port=settings.port,
        ws_max_size=settings.max_frame_bytes,
        ws_per_message_deflate=settings.ws_per_message_deflate,
        ws_ping_interval=settings.heartbeat_interval_ms / 1000,
        ws_ping_timeout=settings.heartbeat_interval_ms / 1000,
        timeout_graceful_shutdown=max(settings.drain_timeout_ms / 1000, 1.0) + 5,
        lifespan="on",
        log_level="info",
        access_log=False,
    )
    if settings.workers > 1:
        # each worker builds its own app (and its own store connection) from the environment
        import os

        for key, value in overrides.items():
            os.environ[f"PARLEY_{key.upper()}"] = str(value)
        uvicorn.run("server.app:create_app", factory=True, workers=settings.workers, **config)
    else:
        uvicorn.run(create_app(settings), **config)
    return 0


def _asyncapi(args: argparse.Namespace) -> int:
    from protocol.asyncapi import asyncapi_document

    json.dump(asyncapi_document(), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parley", description="WebSocket session server for AI chat")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the server (every flag is also PARLEY_<NAME>)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--store", help="memory:// (default) or redis://HOST:PORT/DB")
    serve.add_argument("--model", help="echo (default) or openai:MODEL")
    serve.add_argument("--profiles", help="TOML file of model profiles")
    serve.add_argument("--workers", type=int, help="worker processes (default 1)")
    serve.set_defaults(func=_serve)
    asyncapi = sub.add_parser("asyncapi", help="print the AsyncAPI 3 document of protocol v1")
    asyncapi.set_defaults(func=_asyncapi)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
