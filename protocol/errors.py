"""Error codes, close codes and the one exception tree of Parley.

Every failure a client can see is a ``ParleyError`` subclass; each subclass maps
to exactly one wire ``ErrorCode`` and that code has a fixed ``retryable`` flag, so
a client can decide what to do from the code alone::

    ParleyError
     +-- ProtocolError            the client's frame could not be accepted
     |    +-- InvalidMessage          invalid_message
     |    +-- UnsupportedVersion      unsupported_version
     |    +-- PayloadTooLarge         payload_too_large
     +-- Unauthorized                 unauthorized
     +-- Forbidden                    forbidden
     +-- SessionNotFound              session_not_found
     +-- SessionLost                  session_lost
     +-- RateLimited                  rate_limited          (retryable)
     +-- Busy                         busy                  (retryable)
     +-- UpstreamUnavailable          upstream_unavailable  (retryable)
     +-- UpstreamTimeout              upstream_timeout      (retryable)
     +-- PolicyRefusal                policy_refusal
     +-- SchemaValidationFailed       schema_validation_failed
     +-- ToolTimeout                  tool_timeout
     +-- Overloaded                   overloaded            (retryable)
     +-- InternalError                internal
"""

from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import Any, ClassVar


class ErrorCode(StrEnum):
    """The closed set of error codes on the wire."""

    INVALID_MESSAGE = "invalid_message"
    UNSUPPORTED_VERSION = "unsupported_version"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    SESSION_NOT_FOUND = "session_not_found"
    #: the session existed while this connection read it, but the store lost its state (Redis
    #: restarted without persistence, failover to an empty replica, a flush): nothing can resume it
    SESSION_LOST = "session_lost"
    RATE_LIMITED = "rate_limited"
    BUSY = "busy"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    POLICY_REFUSAL = "policy_refusal"
    SCHEMA_VALIDATION_FAILED = "schema_validation_failed"
    #: a response waited for tool results (or approvals) longer than PARLEY_TOOL_RESULT_TIMEOUT_MS
    TOOL_TIMEOUT = "tool_timeout"
    OVERLOADED = "overloaded"
    INTERNAL = "internal"

    @property
    def retryable(self) -> bool:
        """Whether sending the same request again later can succeed."""
        return self in _RETRYABLE


_RETRYABLE = frozenset(
    {
        ErrorCode.RATE_LIMITED,
        ErrorCode.BUSY,
        ErrorCode.UPSTREAM_UNAVAILABLE,
        ErrorCode.UPSTREAM_TIMEOUT,
        ErrorCode.OVERLOADED,
    }
)


class CloseCode(IntEnum):
    """WebSocket close codes Parley uses; 4xxx are Parley's own."""

    NORMAL = 1000
    GOING_AWAY = 1001
    MESSAGE_TOO_BIG = 1009  # frame over the size limit; never read, never answered
    INTERNAL_ERROR = 1011  # a bug: never expected in normal operation
    SERVICE_RESTART = 1012  # server shutting down; resume on any instance
    BAD_HANDSHAKE = 4000  # first frame was not a valid hello
    UNAUTHORIZED = 4001  # missing, invalid or expired token
    UNSUPPORTED_VERSION = 4002  # hello.protocol is not one we speak
    SESSION_NOT_FOUND = 4004  # resume of an unknown (or another tenant's) session
    HELLO_TIMEOUT = 4008  # no hello within the hello deadline
    SLOW_CONSUMER = 4009  # client stopped reading; resume to catch up
    SESSION_LOST = 4010  # the store lost the session's state (like HTTP 410 Gone): start a new session
    POLICY_VIOLATION = 4029  # sustained abuse (rate limits hit again and again)


#: Close codes after which resuming is pointless: the request itself was refused (every client's rule).
FATAL_CLOSE_CODES = frozenset(
    {
        CloseCode.BAD_HANDSHAKE,
        CloseCode.UNAUTHORIZED,
        CloseCode.UNSUPPORTED_VERSION,
        CloseCode.SESSION_NOT_FOUND,
        CloseCode.POLICY_VIOLATION,
    }
)


class ParleyError(Exception):
    """Root of every error a client can be told about."""

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL

    def __init__(
        self,
        message: str | None = None,
        *,
        retry_after_ms: int | None = None,
        ref: dict[str, Any] | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.retry_after_ms = retry_after_ms
        self.ref = ref
        super().__init__(self.message)

    default_message: ClassVar[str] = "internal error"

    @property
    def retryable(self) -> bool:
        return self.code.retryable


class ProtocolError(ParleyError):
    """The client's frame cannot be accepted as a v1 message."""

    code = ErrorCode.INVALID_MESSAGE
    default_message = "invalid message"


class InvalidMessage(ProtocolError):
    code = ErrorCode.INVALID_MESSAGE
    default_message = "invalid message"


class UnsupportedVersion(ProtocolError):
    code = ErrorCode.UNSUPPORTED_VERSION
    default_message = "unsupported protocol version; this server speaks parley.v1"


class PayloadTooLarge(ProtocolError):
    code = ErrorCode.PAYLOAD_TOO_LARGE
    default_message = "payload too large"


class Unauthorized(ParleyError):
    code = ErrorCode.UNAUTHORIZED
    default_message = "missing or invalid token"


class Forbidden(ParleyError):
    code = ErrorCode.FORBIDDEN
    default_message = "forbidden"


class SessionNotFound(ParleyError):
    code = ErrorCode.SESSION_NOT_FOUND
    default_message = "session not found"


class SessionLost(ParleyError):
    code = ErrorCode.SESSION_LOST
    default_message = "the session's state was lost by the session store; start a new session"


class RateLimited(ParleyError):
    code = ErrorCode.RATE_LIMITED
    default_message = "rate limit exceeded"


class Busy(ParleyError):
    code = ErrorCode.BUSY
    default_message = "a response is already running in this session"


class UpstreamUnavailable(ParleyError):
    code = ErrorCode.UPSTREAM_UNAVAILABLE
    default_message = "a backing service is unavailable"


class UpstreamTimeout(ParleyError):
    code = ErrorCode.UPSTREAM_TIMEOUT
    default_message = "the model did not answer in time"


class PolicyRefusal(ParleyError):
    code = ErrorCode.POLICY_REFUSAL
    default_message = "the model refused this request"


class SchemaValidationFailed(ParleyError):
    code = ErrorCode.SCHEMA_VALIDATION_FAILED
    default_message = "the output did not match the requested schema"


class ToolTimeout(ParleyError):
    code = ErrorCode.TOOL_TIMEOUT
    default_message = "the tool results did not arrive in time"


class Overloaded(ParleyError):
    code = ErrorCode.OVERLOADED
    default_message = "server overloaded"


class InternalError(ParleyError):
    code = ErrorCode.INTERNAL
    default_message = "internal error"


#: The exception class for each code: the 1:1 map of the tree above.
ERROR_CLASSES: dict[ErrorCode, type[ParleyError]] = {
    cls.code: cls
    for cls in (
        InvalidMessage,
        UnsupportedVersion,
        PayloadTooLarge,
        Unauthorized,
        Forbidden,
        SessionNotFound,
        SessionLost,
        RateLimited,
        Busy,
        UpstreamUnavailable,
        UpstreamTimeout,
        PolicyRefusal,
        SchemaValidationFailed,
        ToolTimeout,
        Overloaded,
        InternalError,
    )
}
