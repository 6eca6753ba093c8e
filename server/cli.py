"""``parley``: serve, print the AsyncAPI document, run load tests, export feedback."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .settings import Settings


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app

    overrides: dict[str, Any] = {
        k: v for k, v in vars(args).items() if k in Settings.model_fields and v is not None
    }
    settings = _settings(overrides)
    if settings is None:
        return 2
    from . import logs

    logs.setup(settings)  # JSON lines by default (PARLEY_LOG_FORMAT=text for humans)
    config: dict[str, Any] = dict(
        host=settings.host,
        port=settings.port,
        ws=settings.ws_impl,
        ws_max_size=settings.max_frame_bytes,
        ws_per_message_deflate=settings.ws_per_message_deflate,
        ws_ping_interval=settings.heartbeat_interval_ms / 1000,
        ws_ping_timeout=settings.heartbeat_interval_ms / 1000,
        timeout_graceful_shutdown=max(settings.drain_timeout_ms / 1000, 1.0) + 5,
        lifespan="on",
        log_config=logs.logging_config(settings),  # applied again in every worker
        log_level=settings.log_level.lower(),
        access_log=False,
    )
    if settings.workers > 1:
        # each worker builds its own app (and its own store connection) from the environment
        import os

        for key, value in overrides.items():
            os.environ[f"PARLEY_{key.upper()}"] = str(value)
        uvicorn.run("parley.server.app:create_app", factory=True, workers=settings.workers, **config)
    else:
        uvicorn.run(create_app(settings), **config)
    return 0


def _settings(overrides: dict[str, Any]) -> Settings | None:
    """Settings, or None after printing why they are refused (a short JWT secret, say)."""
    from pydantic import ValidationError

    try:
        return Settings(**overrides)
    except ValidationError as exc:
        for err in exc.errors():
            where = " PARLEY_" + "_".join(str(p) for p in err["loc"]).upper() if err["loc"] else ""
            print(
                f"parley: invalid setting{where}: {err['msg'].removeprefix('Value error, ')}", file=sys.stderr
            )
        return None


def _feedback_export(args: argparse.Namespace) -> int:
    """Feedback as JSON lines (or one JSON array), read from the store or from a server's /v1/feedback."""
    import asyncio

    from .feedback import export_feedback, parse_since

    try:
        since = parse_since(args.since)
        until = parse_since(args.until) if args.until else None
    except ValueError as exc:
        print(f"parley: {exc}", file=sys.stderr)
        return 2
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    rows: list[dict[str, Any]] = []

    def emit(row: dict[str, Any]) -> None:
        if args.format == "json":
            rows.append(row)
        else:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")

    try:
        if args.url:
            import os

            import httpx

            token = args.admin_token or os.environ.get("PARLEY_ADMIN_TOKEN")
            if not token:
                print("parley: --url needs --admin-token (or PARLEY_ADMIN_TOKEN)", file=sys.stderr)
                return 2
            params: dict[str, Any] = {"since": since, "format": "jsonl", "limit": args.limit}
            if until is not None:
                params["until"] = until
            if args.include_text:
                params["include_text"] = "true"
            url = args.url.rstrip("/") + "/v1/feedback"
            with httpx.stream(
                "GET", url, params=params, headers={"Authorization": f"Bearer {token}"}, timeout=60
            ) as resp:
                if resp.status_code != 200:
                    print(f"parley: {url} answered {resp.status_code}", file=sys.stderr)
                    return 1
                for line in resp.iter_lines():
                    if line.strip():
                        emit(json.loads(line))
        else:
            from parley.sessions import StoreKind, open_store, parse_store_url

            store_url = args.store or Settings().store
            if parse_store_url(store_url).kind is StoreKind.MEMORY:
                print(
                    "parley: a memory:// store lives inside the server process; "
                    "use --store redis://... or --url http://server",
                    file=sys.stderr,
                )
                return 2

            async def run() -> None:
                store = open_store(store_url)
                try:
                    async for row in export_feedback(
                        store, since, until_ms=until, include_text=args.include_text, limit=args.limit
                    ):
                        emit(row)
                finally:
                    await store.close()

            asyncio.run(run())
        if args.format == "json":
            json.dump(rows, out, ensure_ascii=False, indent=2)
            out.write("\n")
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


def _asyncapi(args: argparse.Namespace) -> int:
    from parley.protocol.asyncapi import asyncapi_document

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
    feedback = sub.add_parser("feedback", help="feedback for evaluation pipelines")
    feedback_sub = feedback.add_subparsers(dest="feedback_command", required=True)
    export = feedback_sub.add_parser("export", help="print feedback records (one JSON object per line)")
    export.add_argument("--since", help="epoch ms, 24h / 7d ago, or ISO 8601 (default: everything kept)")
    export.add_argument("--until", help="same forms as --since (default: now)")
    export.add_argument("--format", choices=["jsonl", "json"], default="jsonl")
    export.add_argument("--include-text", action="store_true", help="add the rated reply and its prompt")
    export.add_argument("--limit", type=int, default=100_000)
    export.add_argument("--store", help="read this store (default PARLEY_STORE); needs redis://")
    export.add_argument("--url", help="ask a running server instead (GET URL/v1/feedback)")
    export.add_argument("--admin-token", help="for --url (default PARLEY_ADMIN_TOKEN)")
    export.add_argument("--output", "-o", help="write here instead of stdout")
    export.set_defaults(func=_feedback_export)
    loadtest = sub.add_parser(
        "loadtest", add_help=False, help="load-test a Parley URL (parley loadtest --help for its options)"
    )
    loadtest.add_argument("args", nargs=argparse.REMAINDER)
    loadtest.set_defaults(func=lambda a: _loadtest(a.args))
    return parser


def _loadtest(argv: list[str]) -> int:
    from parley.loadtest.cli import main as loadtest_main

    return int(loadtest_main(argv))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["loadtest"]:  # the load-test tool owns its own flags (including --help)
        return _loadtest(argv[1:])
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
