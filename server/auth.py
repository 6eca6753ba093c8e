"""Who is connecting: JWT verification for ``hello.token`` (HS256 or RS256).

The key is loaded and checked once, at start-up (``Authenticator(settings)``): a short
HS256 secret or an unreadable RS256 key stops the server before it serves anyone.
Exactly one algorithm is accepted (no ``none``, no HS/RS confusion); ``sub``,
``tenant`` and ``exp`` are required; the tenant comes from the token, never from
``hello.metadata``. Failures raise ``Unauthorized`` with a short reason that never
echoes the token.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from parley.protocol.errors import Unauthorized

from .config_error import ConfigError
from .service import Principal
from .settings import Settings

#: Tokens longer than this are refused unread (a JWT with a few claims is well under 2 KiB).
MAX_TOKEN_CHARS = 8192
#: Identifiers taken from claims are bounded like every other id on the wire.
MAX_CLAIM_CHARS = 128
#: Smallest RSA key accepted for RS256.
MIN_RSA_BITS = 2048


@dataclass(frozen=True, slots=True)
class Identity:
    """A verified token: who it names and until when it is valid (epoch seconds)."""

    principal: Principal
    expires_at: float


def _load_public_key(value: str) -> RSAPublicKey:
    """The RS256 key from PEM text or a PEM file; anything else is a ``ConfigError`` (one line)."""
    fix = "set it to a PEM public key (-----BEGIN PUBLIC KEY-----...) or the path of a PEM file"
    if "-----BEGIN" in value:
        text = value
    else:
        try:
            text = Path(value).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise ConfigError(
                f"PARLEY_AUTH_JWT_PUBLIC_KEY is neither PEM text nor a readable file ({reason})", fix
            ) from None
    try:
        key = serialization.load_pem_public_key(text.encode())
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"PARLEY_AUTH_JWT_PUBLIC_KEY is not a PEM public key ({exc})", fix) from None
    if not isinstance(key, RSAPublicKey):
        raise ConfigError("PARLEY_AUTH_JWT_PUBLIC_KEY is not an RSA key", "RS256 needs an RSA public key")
    if key.key_size < MIN_RSA_BITS:
        raise ConfigError(
            f"PARLEY_AUTH_JWT_PUBLIC_KEY is a {key.key_size}-bit RSA key",
            f"use a key of at least {MIN_RSA_BITS} bits",
        )
    return key


def _claim(payload: dict[str, Any], name: str) -> str:
    value = payload.get(name)
    if not isinstance(value, str) or not 0 < len(value) <= MAX_CLAIM_CHARS:
        raise Unauthorized(f"token claim {name!r} missing or invalid")
    return value


class Authenticator:
    """Verifies tokens with the one key and algorithm the settings name."""

    def __init__(self, settings: Settings) -> None:
        self.key: Any
        if settings.auth_jwt_secret:
            if len(settings.auth_jwt_secret.encode()) < 32:
                raise ValueError("PARLEY_AUTH_JWT_SECRET must be at least 32 bytes (HS256)")
            self.algorithm = "HS256"
            self.key = settings.auth_jwt_secret
        elif settings.auth_jwt_public_key:
            self.algorithm = "RS256"
            self.key = _load_public_key(settings.auth_jwt_public_key)
        else:
            raise ValueError(
                "auth is off: neither PARLEY_AUTH_JWT_SECRET nor PARLEY_AUTH_JWT_PUBLIC_KEY is set"
            )
        self.audience = settings.auth_jwt_audience
        self.issuer = settings.auth_jwt_issuer
        self.leeway = min(settings.auth_leeway_s, 30)

    def verify(self, token: str | None) -> Identity:
        """The identity a valid token names; ``Unauthorized`` for anything else."""
        if not token:
            raise Unauthorized("a token is required (hello.token)")
        if len(token) > MAX_TOKEN_CHARS:
            raise Unauthorized("invalid token")
        try:
            payload = jwt.decode(
                token,
                self.key,
                algorithms=[self.algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.PyJWTError:
            raise Unauthorized("invalid token") from None
        exp = payload.get("exp")
        if not isinstance(exp, int | float):
            raise Unauthorized("invalid token")
        return Identity(Principal(_claim(payload, "tenant"), _claim(payload, "sub")), float(exp))

    def still_valid(self, identity: Identity, now: float | None = None) -> bool:
        """Whether a verified identity has not expired yet (with the same leeway as ``verify``)."""
        return (time.time() if now is None else now) < identity.expires_at + self.leeway


def build_authenticator(settings: Settings) -> Authenticator | None:
    """The authenticator when auth is configured, else None (auth off)."""
    return Authenticator(settings) if settings.auth_enabled else None


def principal_from_token(token: str | None, settings: Settings) -> Principal:
    """Convenience for callers without an ``Authenticator`` at hand (loads the key each call)."""
    return Authenticator(settings).verify(token).principal
