"""What is refused before any route runs: credentials in the URL, Host names not served, foreign Origins.

- **Credentials never travel in a URL** (it ends up in proxy, browser and server logs): a
  query parameter whose name looks like a credential (``token``, ``auth``, ``api_key``,
  ``resume_token``, ``secret`` ... in any case, spelling or percent-encoding, e.g.
  ``?tok%65n=``) or whose value looks like one (a JWT, ``Bearer ...``) is refused with
  401 on every path, the WebSocket upgrade included, even with auth off. The refused
  query string is blanked in the request before anything can log it.
- **Hosts are checked, not trusted** (DNS rebinding: a page on ``rebind.attacker.test``
  whose name now resolves to 127.0.0.1 reaches a local server with its own name in
  ``Host`` and ``Origin``): only Host names in ``PARLEY_ALLOWED_HOSTS`` are served. The
  default with auth off is the loopback names (``localhost``, ``*.localhost``,
  ``127.0.0.0/8``, ``::1``) plus ``--host`` when it names one address; with auth on it is
  any host, since a rebound page holds no token (set the list anyway when exposing a
  server). Health probes (``/healthz``, ``/readyz``) answer any Host: orchestrators probe
  by IP address, and the answers reveal nothing.
- **Origins**: a browser's upgrade is accepted from the server's own origin (the Origin's
  host and port are the ``Host`` the request was sent to, itself an allowed host) or one
  listed in ``PARLEY_ALLOWED_ORIGINS``; no ``Origin`` (a non-browser client) passes.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import unquote_plus, urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from parley.protocol import error_event
from parley.protocol.errors import Unauthorized

from . import handshake
from .settings import Settings

#: Parameter names (lower case, letters and digits only) that carry a credential, exactly...
CREDENTIAL_NAMES = frozenset({"key", "pwd", "pass", "sig", "signature"})
#: ...or containing one of these.
CREDENTIAL_PARTS = (
    "token",
    "secret",
    "passw",
    "auth",
    "bearer",
    "apikey",
    "credential",
    "jwt",
    "privatekey",
    "accesskey",
    "sessionkey",
)
#: Values that are credentials whatever their parameter is called: a JWT, an auth scheme.
CREDENTIAL_VALUE = re.compile(r"^\s*(?:eyJ[\w-]+\.[\w-]+\.|(?:bearer|basic)\s+\S)", re.IGNORECASE)
#: Percent-decoding rounds: ``%2565`` is ``%65`` is ``e``; more rounds than this is refused outright.
DECODE_ROUNDS = 4
#: What a refused request's query string is replaced with (uvicorn logs the path with its query).
REDACTED_QUERY = b"[redacted]"

#: Paths that answer any Host (liveness/readiness probes address pods by IP).
PROBE_PATHS = frozenset({"/healthz", "/readyz"})
LOOPBACK_NAMES = ("localhost", "*.localhost")

URL_CREDENTIAL_MESSAGE = (
    "credentials are accepted only in hello.token or an Authorization header, never in the URL"
)


def _decoded(text: str) -> str | None:
    """Percent- and plus-decoded until stable; None when it keeps changing (an encoding bomb)."""
    for _ in range(DECODE_ROUNDS):
        nxt = unquote_plus(text)
        if nxt == text:
            return text
        text = nxt
    return None


def credential_in_query(query_string: bytes) -> bool:
    """Whether any parameter of the query string looks like (or carries) a credential."""
    if not query_string:
        return False
    raw = query_string.decode("latin-1")
    for part in re.split(r"[&;]", raw):
        if not part:
            continue
        name, _, value = part.partition("=")
        name_text, value_text = _decoded(name), _decoded(value)
        if name_text is None or value_text is None:
            return True
        compact = re.sub(r"[^a-z0-9]", "", name_text.lower())
        if compact in CREDENTIAL_NAMES or any(p in compact for p in CREDENTIAL_PARTS):
            return True
        if CREDENTIAL_VALUE.match(value_text):
            return True
    return False


def split_host(host: str) -> str:
    """The host name of a ``Host`` header or an origin's netloc, without port or IPv6 brackets, lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


class HostRules:
    """The allowed Host names: exact names, ``*.suffix`` wildcards, loopback addresses, or anything."""

    def __init__(self, patterns: list[str], loopback: bool) -> None:
        self.any = "*" in patterns
        self.exact = {split_host(p) for p in patterns if not p.startswith("*")}
        self.suffixes = tuple(p[1:].lower() for p in patterns if p.startswith("*."))
        self.loopback = loopback

    @classmethod
    def from_settings(cls, settings: Settings) -> HostRules:
        listed = [h.strip() for h in settings.allowed_hosts.split(",") if h.strip()]
        if listed:
            return cls(listed, loopback=False)
        if settings.auth_enabled:
            return cls(["*"], loopback=False)
        names = list(LOOPBACK_NAMES)
        if settings.host not in ("", "0.0.0.0", "::"):
            names.append(settings.host)
        return cls(names, loopback=True)

    def allows(self, host_header: str | None) -> bool:
        if self.any:
            return True
        if not host_header:
            return False
        host = split_host(host_header)
        if host in self.exact or (self.suffixes and host.endswith(self.suffixes)):
            return True
        if self.loopback:
            try:
                return ipaddress.ip_address(host).is_loopback
            except ValueError:
                return False
        return False


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _route_path(scope: Scope) -> str:
    """The path below the app's mount point (ASGI ``root_path``)."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def origin_allowed(scope: Scope, settings: Settings, hosts: HostRules) -> bool:
    """No Origin (non-browser client), one listed in settings, or the server's own (an allowed host)."""
    origin = header(scope, b"origin")
    if origin is None:
        return True
    origin = origin.rstrip("/")
    if origin in settings.allowed_origin_list:
        return True
    parts = urlsplit(origin)
    host = header(scope, b"host") or ""
    return (
        parts.scheme in ("http", "https")
        and bool(parts.netloc)
        and parts.netloc == host
        and hosts.allows(host)
    )


class Guard:
    """ASGI middleware in front of every route (HTTP and the WebSocket upgrade)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.hosts = HostRules.from_settings(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket":
            try:
                await self._check(scope, receive, send)
            finally:  # however it ended, the connection no longer counts as a pending handshake
                handshake.admitted(scope)
        elif kind == "http":
            await self._check(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _check(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if credential_in_query(scope.get("query_string", b"")):
            scope["query_string"] = REDACTED_QUERY  # before anything (uvicorn's request line) logs it
            metrics = getattr(getattr(scope.get("app"), "state", None), "parley", None)
            if metrics is not None:
                metrics.metrics.auth_failures.inc()
            body = error_event(Unauthorized(URL_CREDENTIAL_MESSAGE)).model_dump(exclude_none=True)
            await self._refuse(scope, receive, send, 401, body)
            return
        if _route_path(scope) not in PROBE_PATHS and not self.hosts.allows(header(scope, b"host")):
            await self._refuse(scope, receive, send, 400, "host not allowed (PARLEY_ALLOWED_HOSTS)")
            return
        if kind == "websocket" and not origin_allowed(scope, self.settings, self.hosts):
            await self._refuse(scope, receive, send, 403, "origin not allowed")
            return
        await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, body: object) -> None:
        from starlette.responses import JSONResponse, PlainTextResponse, Response

        response: Response = (
            PlainTextResponse(body, status_code=status)
            if isinstance(body, str)
            else JSONResponse(body, status_code=status)
        )
        if status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        if scope["type"] == "websocket":
            await WebSocket(scope, receive, send).send_denial_response(response)
        else:
            await response(scope, receive, send)
