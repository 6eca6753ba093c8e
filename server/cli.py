"""``parley``: serve, mint a development token, print the AsyncAPI document, run load tests, export feedback.

Every problem is told in one line on stderr, ``parley: <what is wrong>: <what to do>``,
with exit status 2 for usage and configuration (``ConfigError``, a bad flag or setting)
and 1 for anything else (a store or server that cannot be reached, a bug). The
traceback is printed only with ``--debug`` or ``PARLEY_LOG_LEVEL=debug``.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import socket
import sys
import time
import traceback
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

from .config_error import ConfigError
from .settings import Settings

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class CommandFailed(Exception):
    """A command could not do its work for a reason outside the configuration (exit 1)."""

    def __init__(self, what: str, fix: str = "") -> None:
        super().__init__(f"{what}: {fix}" if fix else what)
        self.what = what
        self.fix = fix


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is a ``ConfigError`` (told in one line) instead of usage + exit."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message, f"see '{self.prog} --help'")


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("parley")
    except PackageNotFoundError:
        return "unknown"


def safe_url(url: str) -> str:
    """``url`` without its password, for messages (store URLs may carry credentials)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


# ------------------------------------------------------------------ settings


def load_settings(overrides: dict[str, Any] | None = None) -> Settings:
    """Settings from the environment and flags; any invalid one is a ``ConfigError`` naming it."""
    from pydantic import ValidationError

    overrides = overrides or {}
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if err["loc"]:
                field = str(err["loc"][0])
                name = f"--{field.replace('_', '-')}" if field in overrides else f"PARLEY_{field.upper()}"
                problems.append(f"invalid setting {name}: {msg}")
            else:
                problems.append(msg)
        what, _, fix = "; ".join(problems).rpartition(": ")
        raise (ConfigError(what, fix) if what else ConfigError(fix)) from None


def _help(field: str, text: str) -> str:
    """Help for a ``serve`` flag: the text, the default, the environment variable."""
    default = Settings.model_fields[field].default
    shown = "unset" if default is None else default
    return f"{text} (default: {shown}; env PARLEY_{field.upper()})"


# ------------------------------------------------------------------ serve


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from . import handshake, logs
    from .app import create_app

    overrides: dict[str, Any] = {
        k: v for k, v in vars(args).items() if k in Settings.model_fields and v is not None
    }
    if args.debug:
        overrides.setdefault("log_level", "debug")
    settings = load_settings(overrides)
    check_listen_address(settings.host, settings.port)
    logs.setup(settings)  # text at a terminal, JSON lines otherwise (PARLEY_LOG_FORMAT)
    # Built here even with --workers N (each worker then builds its own): a bad model, key, store
    # URL or profile file stops start-up once, in one line, instead of once per worker.
    app = create_app(settings)
    config: dict[str, Any] = dict(
        host=settings.host,
        port=settings.port,
        http=handshake.protocol_class(settings),  # the handshake deadline and per-address cap
        ws=settings.ws_impl,
        ws_max_size=settings.max_frame_bytes,
        ws_per_message_deflate=settings.ws_per_message_deflate,
        ws_ping_interval=settings.heartbeat_interval_ms / 1000,
        ws_ping_timeout=settings.heartbeat_interval_ms / 1000,
        timeout_graceful_shutdown=max(settings.drain_timeout_ms / 1000, 1.0) + 5,
        lifespan="on",
        log_config=logs.logging_config(settings),  # applied again in every worker
        log_level=settings.log_level,
        access_log=False,
    )
    if settings.workers > 1:
        # each worker builds its own app (and its own store connection) from the environment
        for key, value in overrides.items():
            os.environ[f"PARLEY_{key.upper()}"] = str(value)
        os.environ["PARLEY_LOG_FORMAT"] = logs.log_format(settings)  # the workers' stderr is ours
        del app
        uvicorn.run("parley.server.app:create_app", factory=True, workers=settings.workers, **config)
    else:
        uvicorn.run(app, **config)
    return EXIT_OK


def check_listen_address(host: str, port: int) -> None:
    """Refuse, in one line, an address that cannot be listened on (uvicorn would log it after start-up)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(
            f"cannot listen on --host {host!r} ({exc.strerror})",
            "use an address of this machine, e.g. 127.0.0.1 or 0.0.0.0",
        ) from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            sock.bind(addr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise CommandFailed(
                    f"port {port} on {host} is already in use",
                    "stop what listens there, or pick another --port (PARLEY_PORT)",
                ) from None
            raise CommandFailed(
                f"cannot listen on {host}:{port} ({exc.strerror})", "pick another --host or --port"
            ) from None


# ------------------------------------------------------------------ token

_TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(value: str) -> int:
    """Seconds from ``3600``, ``90s``, ``30m``, ``12h`` or ``7d``."""
    text = value.strip().lower()
    number, unit = (text[:-1], text[-1]) if text and text[-1] in _TTL_UNITS else (text, "s")
    if not number.isdigit() or int(number) <= 0:
        raise ConfigError(f"--ttl {value!r} is not a duration", "use seconds or 30m, 12h, 7d")
    return int(number) * _TTL_UNITS[unit]


def _token(args: argparse.Namespace) -> int:
    """A development JWT signed with PARLEY_AUTH_JWT_SECRET: what the server's HS256 check accepts."""
    import jwt

    settings = load_settings()
    if not settings.auth_jwt_secret:
        raise ConfigError(
            "PARLEY_AUTH_JWT_SECRET is not set, so there is nothing to sign with",
            "set it to the server's secret (32+ bytes); RS256 tokens come from your identity provider",
        )
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": args.sub,
        "tenant": args.tenant,
        "iat": now,
        "exp": now + parse_ttl(args.ttl),
    }
    if settings.auth_jwt_audience:
        claims["aud"] = settings.auth_jwt_audience
    if settings.auth_jwt_issuer:
        claims["iss"] = settings.auth_jwt_issuer
    print(jwt.encode(claims, settings.auth_jwt_secret, algorithm="HS256"))
    return EXIT_OK


# ------------------------------------------------------------------ feedback


def _local_server_url(settings: Settings) -> str:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"http://{host}:{settings.port}"


def _feedback_export(args: argparse.Namespace) -> int:
    """Feedback as JSON lines (or one JSON array), from a server's /v1/feedback or read from Redis.

    With the default memory store the ratings live inside the server process, so the
    export asks that server (PARLEY_HOST:PARLEY_PORT, or --url) with the admin token.
    """
    from .feedback import parse_since

    try:
        since = parse_since(args.since)
        until = parse_since(args.until) if args.until else None
    except ValueError as exc:
        raise ConfigError(str(exc), "see 'parley feedback export --help'") from None
    settings = load_settings()
    url = args.url
    if url is None and args.store is None and not _shared(settings.store):
        url = _local_server_url(settings)  # the memory store lives in the server: ask it
    store_url = args.store or settings.store
    if url is None and not _shared(store_url):
        raise ConfigError(
            "a memory:// store lives inside the server process",
            "export from the running server with --url http://HOST:PORT, or pass --store redis://...",
        )
    rows = (
        _rows_from_server(url, args, since, until, settings)
        if url
        else _rows_from_store(store_url, args, since, until)
    )
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    try:
        if args.format == "json":
            json.dump(list(rows), out, ensure_ascii=False, indent=2)
            out.write("\n")
        else:
            for row in rows:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    return EXIT_OK


def _rows_from_server(
    url: str, args: argparse.Namespace, since: int, until: int | None, settings: Settings
) -> list[dict[str, Any]]:
    import httpx

    token = args.admin_token or settings.admin_token
    if not token:
        raise ConfigError(
            f"exporting from the server at {url} needs its admin token",
            "start the server with PARLEY_ADMIN_TOKEN=<32+ characters> and set the same here "
            "(or pass --admin-token)",
        )
    params: dict[str, Any] = {"since": since, "format": "jsonl", "limit": args.limit}
    if until is not None:
        params["until"] = until
    if args.include_text:
        params["include_text"] = "true"
    endpoint = url.rstrip("/") + "/v1/feedback"
    rows: list[dict[str, Any]] = []
    try:
        with httpx.stream(
            "GET", endpoint, params=params, headers={"Authorization": f"Bearer {token}"}, timeout=60
        ) as resp:
            if resp.status_code == 404:
                raise CommandFailed(
                    f"{endpoint} answered 404 (feedback export is off there)",
                    "start that server with PARLEY_ADMIN_TOKEN set",
                )
            if resp.status_code == 401:
                raise CommandFailed(
                    f"{endpoint} refused the admin token", "use that server's PARLEY_ADMIN_TOKEN"
                )
            if resp.status_code != 200:
                raise CommandFailed(f"{endpoint} answered {resp.status_code}", "see that server's log")
            for line in resp.iter_lines():
                if line.strip():
                    rows.append(json.loads(line))
    except httpx.HTTPError as exc:
        raise CommandFailed(
            f"cannot reach {endpoint} ({exc or type(exc).__name__})",
            "is 'parley serve' running there? (or pass --url / --store redis://...)",
        ) from exc
    return rows


def _shared(store_url: str) -> bool:
    """Whether other processes can read this store (not memory://); an unknown URL is a ConfigError."""
    from parley.sessions import UnsupportedStoreUrl, parse_store_url

    try:
        return parse_store_url(store_url).shared
    except UnsupportedStoreUrl as exc:
        raise ConfigError(exc.what, exc.fix) from None


def _rows_from_store(
    store_url: str, args: argparse.Namespace, since: int, until: int | None
) -> list[dict[str, Any]]:
    import asyncio

    from parley.protocol.errors import ParleyError
    from parley.sessions import open_store

    from .feedback import export_feedback

    try:
        store = open_store(store_url)
    except ValueError as exc:
        raise ConfigError(str(exc), "check --store (PARLEY_STORE)") from None
    if not getattr(args, "debug", False):
        # a one-shot command says what failed in its own one line; the store's outage warnings
        # (meant for a long-running server's log) would only repeat it
        logging.getLogger("parley").setLevel(logging.ERROR)

    async def run() -> list[dict[str, Any]]:
        try:
            return [
                row
                async for row in export_feedback(
                    store, since, until_ms=until, include_text=args.include_text, limit=args.limit
                )
            ]
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except ParleyError as exc:
        cause = exc.__cause__ or exc
        raise CommandFailed(
            f"cannot read the store {safe_url(store_url)} ({cause})",
            "check that Redis is running there and --store (PARLEY_STORE) is right",
        ) from exc


# ------------------------------------------------------------------ asyncapi, loadtest


def _asyncapi(args: argparse.Namespace) -> int:
    from parley.protocol.asyncapi import asyncapi_document

    json.dump(asyncapi_document(), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return EXIT_OK


def _loadtest(argv: list[str]) -> int:
    from parley.loadtest.cli import main as loadtest_main

    return int(loadtest_main(argv))


# ------------------------------------------------------------------ the parser


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show tracebacks (also PARLEY_LOG_LEVEL=debug); for serve, log at debug level",
    )
    parser = OneLineParser(
        prog="parley", description="WebSocket session server for AI chat", parents=[common]
    )
    parser.add_argument("--version", action="version", version=f"parley {version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser(
        "serve", parents=[common], help="run the server (every flag is also PARLEY_<NAME>)"
    )
    serve.add_argument("--host", help=_help("host", "interface to listen on (0.0.0.0: every one)"))
    serve.add_argument("--port", type=int, help=_help("port", "TCP port, 1-65535"))
    serve.add_argument(
        "--store",
        help=_help("store", "memory:// (one process) or redis://HOST:PORT/DB (also rediss://, unix://, "
        "redis+cluster://)"),
    )  # fmt: skip
    serve.add_argument("--model", help=_help("model", "echo or openai:MODEL (e.g. openai:gpt-4o-mini)"))
    serve.add_argument("--profiles", help=_help("profiles", "TOML file of profiles (docs/providers.md)"))
    serve.add_argument(
        "--workers", type=int, help=_help("workers", "worker processes; more than 1 needs a redis:// store")
    )
    serve.set_defaults(func=_serve)

    token = sub.add_parser(
        "token",
        parents=[common],
        help="mint a development JWT signed with PARLEY_AUTH_JWT_SECRET (docs/security.md)",
    )
    token.add_argument("--sub", required=True, help="the user id (the token's sub claim)")
    token.add_argument("--tenant", required=True, help="the tenant id (the token's tenant claim)")
    token.add_argument("--ttl", default="1h", help="lifetime: seconds, or 30m, 12h, 7d (default: 1h)")
    token.set_defaults(func=_token)

    asyncapi = sub.add_parser("asyncapi", parents=[common], help="print the AsyncAPI 3 document (v1)")
    asyncapi.set_defaults(func=_asyncapi)

    feedback = sub.add_parser("feedback", parents=[common], help="feedback for evaluation pipelines")
    feedback_sub = feedback.add_subparsers(dest="feedback_command", required=True)
    export = feedback_sub.add_parser(
        "export",
        parents=[common],
        help="print feedback records (one JSON object per line)",
        description="Ratings as JSON lines. With the default memory store they are asked of the "
        "running server (PARLEY_HOST:PARLEY_PORT, or --url) with PARLEY_ADMIN_TOKEN; with "
        "--store redis://... they are read from Redis directly.",
    )
    export.add_argument("--since", help="epoch ms, 24h / 7d ago, or ISO 8601 (default: everything kept)")
    export.add_argument("--until", help="same forms as --since (default: now)")
    export.add_argument("--format", choices=["jsonl", "json"], default="jsonl")
    export.add_argument("--include-text", action="store_true", help="add the rated reply and its prompt")
    export.add_argument("--limit", type=int, default=100_000)
    export.add_argument("--store", help="read this Redis store directly (default PARLEY_STORE)")
    export.add_argument(
        "--url", help="ask this server (GET URL/v1/feedback; default with a memory store: the local one)"
    )
    export.add_argument("--admin-token", help="the server's admin token (default PARLEY_ADMIN_TOKEN)")
    export.add_argument("--output", "-o", help="write here instead of stdout")
    export.set_defaults(func=_feedback_export)

    loadtest = sub.add_parser(
        "loadtest", add_help=False, help="load-test a Parley URL (parley loadtest --help for its options)"
    )
    loadtest.add_argument("args", nargs=argparse.REMAINDER)
    loadtest.set_defaults(func=lambda a: _loadtest(a.args))
    return parser


def _debug_requested(argv: list[str]) -> bool:
    own = argv[: argv.index("loadtest")] if "loadtest" in argv else argv
    return "--debug" in own or os.environ.get("PARLEY_LOG_LEVEL", "").strip().lower() in ("debug", "trace")


def _tell(what: str, fix: str) -> None:
    print(f"parley: {what}: {fix}" if fix else f"parley: {what}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = _debug_requested(argv)
    try:
        if argv[:1] == ["loadtest"]:  # the load-test tool owns its own flags (including --help)
            return _loadtest(argv[1:])
        args = build_parser().parse_args(argv)
        args.debug = getattr(args, "debug", False) or debug
        return int(args.func(args))
    except ConfigError as exc:
        if debug:
            traceback.print_exc()
        _tell(exc.what, exc.fix)
        return EXIT_USAGE
    except CommandFailed as exc:
        if debug:
            traceback.print_exc()
        _tell(exc.what, exc.fix)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: still one line, the traceback on request
        if debug:
            traceback.print_exc()
        _tell(f"unexpected {type(exc).__name__}: {exc}", "run again with --debug for the traceback")
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
