"""Checks on a connection's HTTP handshake, before any protocol frame: credentials in the URL, Origin.

Transport-neutral in what they ask (headers and the query string of an ASGI scope),
so the WebSocket and any HTTP transport refuse the same requests the same way.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .settings import Settings

#: Query parameters that would carry a credential: a handshake naming any of them is refused.
TOKEN_PARAMS = frozenset({"token", "access_token", "id_token", "jwt", "auth", "authorization", "bearer"})


def header(ws: Any, name: bytes) -> str | None:
    """A request header, read from the ASGI scope: ``ws.headers`` would keep a parsed copy per socket."""
    for key, value in ws.scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def query_names(ws: Any) -> list[str]:
    """The query string's parameter names, without keeping a parsed copy per socket."""
    return [name for name, _ in parse_qsl(ws.scope.get("query_string", b"").decode("latin-1"), True)]


def credential_in_url(ws: Any) -> bool:
    """The query string names a credential parameter (refused even with auth off: URLs end up in logs)."""
    return any(name.lower() in TOKEN_PARAMS for name in query_names(ws))


def origin_allowed(ws: Any, settings: Settings) -> bool:
    """No Origin (non-browser client), the server's own origin, or one listed in settings."""
    origin = header(ws, b"origin")
    if origin is None:
        return True
    origin = origin.rstrip("/")
    if origin in settings.allowed_origin_list:
        return True
    parts = urlsplit(origin)
    host = header(ws, b"host") or ""
    return parts.scheme in ("http", "https") and bool(parts.netloc) and parts.netloc == host
