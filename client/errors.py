"""What the client raises: the protocol's own exception tree, plus the few things only a client sees.

The server's refusals are raised as the classes of ``parley.protocol.errors`` (one
per wire code, each with ``retryable`` and ``retry_after_ms``), so an application
catches ``RateLimited`` or ``Unauthorized`` by name::

    ParleyError                         (parley.protocol.errors: one class per wire code)
     +-- ...                            InvalidMessage, Unauthorized, SessionNotFound, Busy, ...
     +-- UnknownServerError             a code this client does not know yet (a newer server):
                                        ``wire_code`` keeps the string, ``retryable`` is the wire's flag
    TimeoutError
     +-- ResponseTimeout                no event of a turn within the first-event or idle bound
    Exception
     +-- ParleyClosed                   low-level API only: the server closed for good (``code`` is the
                                        close code, ``error`` the ParleyError it means)
"""

from __future__ import annotations

from typing import Any, Literal

from parley.protocol.errors import (
    ERROR_CLASSES,
    Busy,
    CloseCode,
    ErrorCode,
    Forbidden,
    InternalError,
    InvalidMessage,
    Overloaded,
    ParleyError,
    PayloadTooLarge,
    PolicyRefusal,
    ProtocolError,
    RateLimited,
    SchemaValidationFailed,
    SessionNotFound,
    Unauthorized,
    UnsupportedVersion,
    UpstreamTimeout,
    UpstreamUnavailable,
)

__all__ = [
    "Busy",
    "Forbidden",
    "InternalError",
    "InvalidMessage",
    "Overloaded",
    "ParleyClosed",
    "ParleyError",
    "PayloadTooLarge",
    "PolicyRefusal",
    "ProtocolError",
    "RateLimited",
    "ResponseTimeout",
    "SchemaValidationFailed",
    "SessionNotFound",
    "Unauthorized",
    "UnknownServerError",
    "UnsupportedVersion",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "error_from_close",
    "error_from_wire",
    "resumable_close",
    "wire_code",
]


class UnknownServerError(ParleyError):
    """An error code this client does not know (sent by a newer server); never retried by the client."""

    code = ErrorCode.INTERNAL  # the nearest known class; ``wire_code`` is what the server said

    def __init__(
        self,
        wire_code: str,
        message: str | None = None,
        *,
        retryable: bool = False,
        retry_after_ms: int | None = None,
        ref: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message or wire_code, retry_after_ms=retry_after_ms, ref=ref)
        self.wire_code = wire_code
        self._retryable = retryable

    @property
    def retryable(self) -> bool:
        return self._retryable


class ResponseTimeout(TimeoutError):
    """A turn saw no event for too long: before its first event, or between two of its events."""

    def __init__(self, phase: Literal["first_event", "idle"], seconds: float, client_msg_id: str) -> None:
        what = "no answer to the message" if phase == "first_event" else "the reply stalled"
        super().__init__(f"{what} for {seconds:g} s (client_msg_id {client_msg_id})")
        self.phase = phase
        self.seconds = seconds
        self.client_msg_id = client_msg_id


class ParleyClosed(Exception):
    """The server closed the session for good (``code``: the close code; ``reason``: its text).

    Raised by the low-level API (``connect``, ``events``, ``next_event``); the typed API
    raises ``error``, the ``ParleyError`` the close stands for, chained to this one.
    """

    def __init__(self, code: int | None, reason: str = "", error: ParleyError | None = None) -> None:
        super().__init__(f"closed by server: {code} {reason}")
        self.code = code
        self.reason = reason
        self.error = error if error is not None else error_from_close(code, reason)


def wire_code(exc: ParleyError) -> str:
    """An error's code as the server sent it, also for a code this client does not know."""
    return exc.wire_code if isinstance(exc, UnknownServerError) else str(exc.code)


def error_from_wire(
    code: str,
    message: str | None = None,
    *,
    retryable: bool | None = None,
    retry_after_ms: int | None = None,
    ref: dict[str, Any] | None = None,
) -> ParleyError:
    """The exception for a wire ``error`` (or a completed response's ``error``): its class by code."""
    try:
        known = ErrorCode(code)
    except ValueError:
        return UnknownServerError(
            code, message, retryable=bool(retryable), retry_after_ms=retry_after_ms, ref=ref
        )
    cls = ERROR_CLASSES.get(known, InternalError)
    return cls(message, retry_after_ms=retry_after_ms, ref=ref)


def error_event_to_exception(event: dict[str, Any]) -> ParleyError:
    """``error_from_wire`` for a whole ``error`` event as a dict."""
    return error_from_wire(
        str(event.get("code", "")),
        event.get("message"),
        retryable=event.get("retryable"),
        retry_after_ms=event.get("retry_after_ms"),
        ref=event.get("ref"),
    )


#: The error a close code means when no ``error`` event said more (docs/protocol.md, "Close codes").
_CLOSE_ERRORS: dict[int, ErrorCode] = {
    CloseCode.BAD_HANDSHAKE: ErrorCode.INVALID_MESSAGE,
    CloseCode.UNAUTHORIZED: ErrorCode.UNAUTHORIZED,
    CloseCode.UNSUPPORTED_VERSION: ErrorCode.UNSUPPORTED_VERSION,
    CloseCode.SESSION_NOT_FOUND: ErrorCode.SESSION_NOT_FOUND,
    CloseCode.SESSION_LOST: ErrorCode.SESSION_LOST,
    CloseCode.POLICY_VIOLATION: ErrorCode.RATE_LIMITED,
}

#: 4xxx close codes after which a resume can work; every other 4xxx code (a known refusal, or
#: one this client does not know, such as a newer server's) ends the session for good.
_RESUMABLE_4XXX = frozenset({CloseCode.HELLO_TIMEOUT, CloseCode.SLOW_CONSUMER})


def resumable_close(code: int | None) -> bool:
    """Whether to resume after this close: transport-level codes (< 4000) yes, Parley's 4xxx mostly not."""
    return code is None or code < 4000 or code in _RESUMABLE_4XXX


def error_from_close(
    code: int | None, reason: str = "", last_error: dict[str, Any] | None = None
) -> ParleyError:
    """The exception a terminal close means: the ``error`` event sent just before it, else the code."""
    if last_error is not None:
        return error_event_to_exception(last_error)
    if reason:
        try:
            ErrorCode(reason)
        except ValueError:
            pass
        else:
            return error_from_wire(reason)
    known = _CLOSE_ERRORS.get(code) if code is not None else None
    if known is not None:
        return error_from_wire(known, reason or None)
    return UnknownServerError(f"close_{code}", reason or f"connection closed ({code})")
