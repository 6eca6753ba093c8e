"""Pure text <-> message conversion: no sockets, no clocks, no Redis."""

from __future__ import annotations

import json
from json.encoder import encode_basestring  # type: ignore[attr-defined]  # C speedup
from typing import Any

from pydantic import TypeAdapter, ValidationError

from .errors import InvalidMessage, ParleyError, PayloadTooLarge
from .messages import CLIENT_TYPES, ClientMessage, Error, ServerEvent, _Server

_client_adapter: TypeAdapter[Any] = TypeAdapter(ClientMessage)
_server_adapter: TypeAdapter[Any] = TypeAdapter(ServerEvent)

_REF_FIELDS = ("type", "client_msg_id", "response_id", "call_id", "nonce")


def _ref_of(text: str | bytes) -> dict[str, Any] | None:
    """Best-effort identification of the offending frame, for ``error.ref``."""
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(raw, dict):
        return None
    ref = {k: raw[k] for k in _REF_FIELDS if _echoable(raw.get(k))}
    return ref or None


def _echoable(value: object) -> bool:
    """Only short, well-formed strings are echoed back in ``ref`` (no lone surrogates, no control bytes)."""
    if not isinstance(value, str) or not 0 < len(value) <= 128 or not value.isprintable():
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_client(text: str | bytes, *, max_bytes: int | None = None) -> ClientMessage:
    """Parse one client frame or raise a ``ProtocolError`` saying why, with a ``ref``."""
    if max_bytes is not None and len(text) > max_bytes:
        raise PayloadTooLarge(f"frame exceeds {max_bytes} bytes")
    try:
        return _client_adapter.validate_json(text, strict=True)
    except ValidationError as exc:
        raise InvalidMessage(_describe(exc, text), ref=_ref_of(text)) from None
    except (ValueError, RecursionError):  # pragma: no cover - pydantic wraps these already
        raise InvalidMessage("frame is not valid JSON") from None


def _describe(exc: ValidationError, text: str | bytes) -> str:
    """A short human message for a validation failure, without echoing the payload."""
    err = exc.errors(include_url=False, include_input=False)[0]
    kind = err.get("type", "")
    loc = ".".join(str(p) for p in err.get("loc", ()))
    if kind == "json_invalid":
        return "frame is not valid JSON"
    if kind in ("model_attributes_type", "model_type", "dict_type") and not loc:
        return "frame must be a JSON object"
    if kind == "union_tag_not_found":
        return "frame has no 'type' field"
    if kind == "union_tag_invalid":
        return f"unknown message type; expected one of {', '.join(CLIENT_TYPES)}"
    # drop the leading discriminator value pydantic puts in loc (it may contain dots itself)
    field = ".".join(str(p) for p in err.get("loc", ())[1:])
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{field or 'frame'}: {msg}"


def encode(event: _Server) -> str:
    """Serialize a server event (ephemeral or logged, without seq) to JSON text."""
    return event.model_dump_json(exclude_none=True)


def encode_delta(response_id: str, text: str, ts: float | None = None) -> str:
    """``encode(ResponseDelta(...))`` without building a model: the one event written per token.

    Byte-for-byte the same text (tests/test_protocol.py checks it against ``encode``).
    """
    tail = "}" if ts is None else f',"ts":{ts!r}}}'
    return (
        '{"type":"response.delta","response_id":'
        + encode_basestring(response_id)
        + ',"text":'
        + encode_basestring(text)
        + tail
    )


def with_seq(seq: int, body: str) -> str:
    """Prefix an encoded logged event with its ``seq``: ``{"seq":N,...}``.

    Done by string splicing so a store (even a Lua script) can stamp the seq it
    assigns atomically without decoding the event.
    """
    return '{"seq":' + str(seq) + "," + body[1:]


def seq_of(data: str) -> int:
    """The ``seq`` of a logged event produced by ``with_seq`` (cheap: no JSON parse)."""
    return int(data[7 : data.index(",", 7)])


def decode_server(text: str | bytes) -> Any:
    """Parse a server event (used by clients and tests); returns the model."""
    return _server_adapter.validate_json(text)


def error_event(exc: ParleyError) -> Error:
    """The wire form of an exception."""
    return Error(
        code=exc.code,
        message=exc.message,
        retryable=exc.retryable,
        retry_after_ms=exc.retry_after_ms,
        ref=exc.ref,
    )
