"""The pure protocol package: parsing, encoding, codes, and the generated AsyncAPI document."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parley.protocol import (
    ERROR_CLASSES,
    CloseCode,
    ErrorCode,
    ParleyError,
    encode,
    parse_client,
    seq_of,
    with_seq,
)
from parley.protocol.asyncapi import CLIENT_MODELS, SERVER_MODELS, asyncapi_document
from parley.protocol.codec import encode_delta
from parley.protocol.errors import InvalidMessage, PayloadTooLarge, ProtocolError
from parley.protocol.messages import Hello, MessageSend, ResponseDelta


def test_every_error_code_has_exactly_one_exception_class() -> None:
    """The exception tree maps 1:1 onto the wire error codes."""
    assert set(ERROR_CLASSES) == set(ErrorCode)
    assert len(set(ERROR_CLASSES.values())) == len(ErrorCode)
    for code, cls in ERROR_CLASSES.items():
        assert cls.code is code and issubclass(cls, ParleyError)


def test_retryable_is_fixed_per_code() -> None:
    """Exactly rate_limited, busy, upstream_unavailable, upstream_timeout and overloaded are retryable."""
    assert {c.value for c in ErrorCode if c.retryable} == {
        "rate_limited",
        "busy",
        "upstream_unavailable",
        "upstream_timeout",
        "overloaded",
    }


def test_close_codes_are_the_documented_ones() -> None:
    """Parley's own close codes live in 4000-4999; standard ones keep their RFC numbers."""
    assert CloseCode.MESSAGE_TOO_BIG == 1009 and CloseCode.SERVICE_RESTART == 1012
    assert all(
        4000 <= c < 5000
        for c in CloseCode
        if c.name not in {"NORMAL", "GOING_AWAY", "MESSAGE_TOO_BIG", "INTERNAL_ERROR", "SERVICE_RESTART"}
    )


def test_parse_client_returns_typed_messages() -> None:
    """Valid frames become their models, discriminated on type."""
    hello = parse_client('{"type":"hello","protocol":"parley.v1","last_seq":3,"metadata":{"tenant_id":"t"}}')
    assert isinstance(hello, Hello) and hello.last_seq == 3
    send = parse_client('{"type":"message.send","client_msg_id":"c","content":"hi","extra":"ignored"}')
    assert isinstance(send, MessageSend) and send.content == "hi"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "nope",
        "[]",
        "{}",
        '{"type":"zzz"}',
        '{"type":"ping","nonce":5}',
        '{"type":"hello","protocol":"parley.v1","last_seq":"3"}',
    ],
)
def test_parse_client_raises_one_protocol_error(text: str) -> None:
    """Anything that is not a valid client message raises ProtocolError with code invalid_message."""
    with pytest.raises(ProtocolError) as info:
        parse_client(text)
    assert isinstance(info.value, InvalidMessage) and info.value.code == ErrorCode.INVALID_MESSAGE


def test_parse_client_size_limit() -> None:
    """A frame over max_bytes is payload_too_large without being parsed."""
    with pytest.raises(PayloadTooLarge):
        parse_client("x" * 11, max_bytes=10)


def test_encode_and_seq_splicing_roundtrip() -> None:
    """with_seq puts seq first in the JSON, and seq_of reads it back without parsing."""
    body = encode(ResponseDelta(response_id="r", text='a "quoted" , text'))
    data = with_seq(42, body)
    assert json.loads(data) == {
        "seq": 42,
        "type": "response.delta",
        "response_id": "r",
        "text": 'a "quoted" , text',
    }
    assert seq_of(data) == 42


def test_asyncapi_document_covers_every_message() -> None:
    """The generated AsyncAPI 3 document names every client and server message and the codes."""
    doc = asyncapi_document()
    assert doc["asyncapi"] == "3.0.0"
    names = {m["name"] for m in doc["components"]["messages"].values()}
    assert len(names) == len(CLIENT_MODELS) + len(SERVER_MODELS)
    assert {"hello", "message.send", "response.delta", "error", "session.snapshot"} <= names
    assert doc["info"]["x-error-codes"]["busy"] == {"retryable": True}
    delta = doc["components"]["schemas"]["ResponseDelta"]
    assert delta["required"][0] == "seq"
    json.dumps(doc)  # serializable


_texts = st.text(
    st.characters(blacklist_categories=("Cs",))
)  # any text a model can produce (no lone surrogates)


@settings(max_examples=500, deadline=None)
@given(_texts, _texts, st.none() | st.floats(0, 1e13, allow_nan=False).map(lambda f: round(f, 3)))
def test_fast_delta_encoding_is_byte_identical_to_the_model(rid: str, text: str, ts: float | None) -> None:
    """encode_delta (the per-token fast path) writes exactly what encode(ResponseDelta(...)) writes."""
    assert encode_delta(rid, text, ts) == encode(ResponseDelta(response_id=rid, text=text, ts=ts))
