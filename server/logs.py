"""Structured logs: one JSON object per line, with ``trace_id``, ``session_id`` and ``response_id``.

The ids come from context variables bound by the connection (``bind``) and copied
into every task it starts, so a generation's log lines carry the ids of the turn
that started it. What is logged is chosen in code: ids, codes, counts and
timings, never message text, model output or tokens. As a second line of
defence every line is scrubbed of anything shaped like a credential (a JWT, a
``token=`` query parameter, a bearer header) — uvicorn logs handshake paths
with their query string.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from contextvars import ContextVar
from typing import Any

from .settings import Settings

trace_id_var: ContextVar[str | None] = ContextVar("parley_trace_id", default=None)
session_id_var: ContextVar[str | None] = ContextVar("parley_session_id", default=None)
response_id_var: ContextVar[str | None] = ContextVar("parley_response_id", default=None)

_VARS = {"trace_id": trace_id_var, "session_id": session_id_var, "response_id": response_id_var}

#: Credential-shaped text: JWTs, secret query parameters, bearer headers.
_SECRETS = re.compile(
    r"eyJ[\w-]{4,}\.[\w-]{4,}\.[\w-]*"
    r"|(?<=[?&;])(?:token|access_token|id_token|jwt|resume_token|api_key|key)=[^&\s\"']*"
    r"|(?i:bearer)\s+[\w.~+/-]+=*",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    return _SECRETS.sub("[redacted]", text)


def bind(**ids: str | None) -> None:
    """Set ``trace_id`` / ``session_id`` / ``response_id`` for this task and the tasks it starts."""
    for name, value in ids.items():
        _VARS[name].set(value)


def current_ids() -> dict[str, str]:
    return {name: v for name, var in _VARS.items() if (v := var.get()) is not None}


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", trace_id?, session_id?, response_id?, ...fields, "exc"?}``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        out.update(current_ids())
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update({k: v for k, v in fields.items() if k not in out})
        if record.exc_info:
            out["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(out, default=str, ensure_ascii=False)


class HandshakeChatter(logging.Filter):
    """Drop the per-connection info lines of uvicorn and websockets (open, accepted, closed).

    ``session ready`` and ``connection ended`` say the same with ids attached; formatting
    and writing three more lines per connection was ~10 % of a burst of hellos' CPU.
    Refusals and errors still pass.
    """

    CHATTER = frozenset({"connection open", "connection closed", '%s - "WebSocket %s" [accepted]'})

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in self.CHATTER


class TextFormatter(logging.Formatter):
    """Human-readable lines for development, scrubbed the same way."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = " ".join(f"{k}={v}" for k, v in current_ids().items())
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            ids = " ".join([ids, *(f"{k}={v}" for k, v in fields.items())]).strip()
        return redact(f"{line} {ids}" if ids else line)


def log_format(settings: Settings, stream: Any = None) -> str:
    """``json`` or ``text``: ``auto`` means text for a person at a terminal, JSON lines for a collector."""
    if settings.log_format != "auto":
        return settings.log_format
    stream = sys.stderr if stream is None else stream
    try:
        return "text" if stream.isatty() else "json"
    except (AttributeError, ValueError):  # no stream, or a closed one
        return "json"


def logging_config(settings: Settings) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for ``parley serve`` (uvicorn applies it in every worker)."""
    level = settings.log_level.upper()
    if level == "TRACE":  # uvicorn's extra level below DEBUG
        level = "DEBUG" if "TRACE" not in logging.getLevelNamesMapping() else level
    formatter = (
        "parley.server.logs.JsonFormatter"
        if log_format(settings) == "json"
        else "parley.server.logs.TextFormatter"
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"parley": {"()": formatter}},
        "filters": {
            "chatter": {"()": "parley.server.logs.HandshakeChatter"},
            "client_errors": {"()": "parley.server.client_errors.ClientProtocolErrors"},  # no tracebacks
        },
        "handlers": {
            "default": {"class": "logging.StreamHandler", "formatter": "parley", "stream": "ext://sys.stderr"}
        },
        "root": {"handlers": ["default"], "level": level},
        "loggers": {
            name: {"handlers": [], "level": level, "propagate": True, "filters": ["chatter", "client_errors"]}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }


def setup(settings: Settings) -> None:
    import logging.config

    logging.config.dictConfig(logging_config(settings))
    # What no line of ours shows, no record needs to collect (the logging HOWTO's "Optimization"):
    # the caller's file and line (a stack walk per record), thread and process names.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
