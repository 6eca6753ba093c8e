"""Bad input after hello gets a structured error, and the connection stays usable."""

from __future__ import annotations

import contextlib
import json
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as sync_connect

from .support import ServerProcess

DEEP = (
    '{"type":"message.send","client_msg_id":"a","content":"x","metadata":{"k":'
    + "[" * 5000
    + "]" * 5000
    + "}}"
)

BAD_FRAMES = {
    "not json": "hello?",
    "truncated json": '{"type": "ping"',
    "array": "[1,2]",
    "number": "42",
    "string": '"ping"',
    "null": "null",
    "no type": '{"nonce": "x"}',
    "unknown type": '{"type": "message.edit"}',
    "type not a string": '{"type": 7}',
    "missing content": '{"type":"message.send","client_msg_id":"a"}',
    "content wrong type": '{"type":"message.send","client_msg_id":"a","content":5}',
    "empty content": '{"type":"message.send","client_msg_id":"a","content":""}',
    "client_msg_id too long": json.dumps(
        {"type": "message.send", "client_msg_id": "x" * 500, "content": "a"}
    ),
    "bad rating": '{"type":"feedback","response_id":"r","rating":"meh"}',
    "huge number": '{"type":"hello","protocol":"parley.v1","last_seq":1e999}',
    "huge integer": '{"type":"hello","protocol":"parley.v1","last_seq":' + "9" * 400 + "}",
    "negative seq": '{"type":"hello","protocol":"parley.v1","last_seq":-1}',
    "deep nesting": DEEP,
    "metadata not an object": '{"type":"message.send","client_msg_id":"a","content":"x","metadata":[1]}',
    "bad response_format": (
        '{"type":"message.send","client_msg_id":"a","content":"x","response_format":{"type":"xml"}}'
    ),
    "nul and surrogates": '{"type":"\\u0000\\ud800"}',
    "second hello": '{"type":"hello","protocol":"parley.v1"}',
}


@pytest.fixture(scope="module")
def proc() -> Iterator[ServerProcess]:
    p = ServerProcess({"PARLEY_STORE": "memory://", "PARLEY_ECHO_TOKENS_PER_SECOND": "0"})
    p.start()
    yield p
    p.stop(signal.SIGKILL)


@contextlib.contextmanager
def open_session(p: ServerProcess) -> Iterator[ClientConnection]:
    with sync_connect(p.url, subprotocols=["parley.v1"], compression=None, open_timeout=5) as ws:  # type: ignore[list-item]
        ws.send(json.dumps({"type": "hello", "protocol": "parley.v1"}))
        assert json.loads(ws.recv(timeout=5))["type"] == "session.ready"
        yield ws


def still_usable(ws: ClientConnection) -> None:
    ws.send('{"type":"ping","nonce":"alive"}')
    while True:
        event = json.loads(ws.recv(timeout=5))
        if event["type"] == "pong" and event.get("nonce") == "alive":
            return
        # answers to the frame under test (a fuzzed frame may be valid) are fine; closes are not
        assert event["type"] != "session.ready", event


@pytest.mark.parametrize("frame", list(BAD_FRAMES.values()), ids=list(BAD_FRAMES))
def test_bad_frame_gets_invalid_message_and_connection_survives(proc: ServerProcess, frame: str) -> None:
    """Each kind of malformed frame is answered with invalid_message (not retryable); ping still works."""
    with open_session(proc) as ws:
        ws.send(frame)
        err = json.loads(ws.recv(timeout=5))
        assert err["type"] == "error" and err["code"] == "invalid_message", err
        assert err["retryable"] is False and err["message"]
        assert "seq" not in err
        still_usable(ws)


def test_binary_frame_is_invalid_message(proc: ServerProcess) -> None:
    """A binary frame is invalid_message; the session goes on."""
    with open_session(proc) as ws:
        ws.send(b"\x00\x01binary")
        assert json.loads(ws.recv(timeout=5))["code"] == "invalid_message"
        still_usable(ws)


def test_error_ref_names_the_offending_message(proc: ServerProcess) -> None:
    """error.ref carries the type and client_msg_id of the frame it answers."""
    with open_session(proc) as ws:
        ws.send('{"type":"message.send","client_msg_id":"c-77","content":7}')
        err = json.loads(ws.recv(timeout=5))
        assert err["ref"] == {"type": "message.send", "client_msg_id": "c-77"}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
message_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["hello", "message.send", "response.cancel", "feedback", "ping", "x"])},
    optional={
        "client_msg_id": json_values,
        "content": json_values,
        "response_id": json_values,
        "rating": json_values,
        "nonce": json_values,
        "metadata": json_values,
        "response_format": json_values,
        "profile": json_values,
        "tags": json_values,
    },
)
frames = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200),
    json_values.map(json.dumps),
    message_like.map(json.dumps),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frame=frames)
def test_fuzzed_frames_never_break_the_connection(proc: ServerProcess, frame: Any) -> None:
    """Arbitrary frames never close the socket (no 1011) and the next valid message still works."""
    with open_session(proc) as ws:
        ws.send(frame)
        still_usable(ws)
        ws.send('{"type":"response.cancel"}')  # idempotent, answers nothing when idle
        still_usable(ws)


def test_no_traceback_and_no_internal_error_after_all_of_the_above(proc: ServerProcess) -> None:
    """After every bad and fuzzed frame the server logged no traceback and answered no internal error."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    log = proc.log()
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-4000:]
    metrics = httpx.get(f"{proc.http}/metrics", timeout=5).text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
    }
    assert samples.get(("parley_errors_total", (("code", "invalid_message"),)), 0) > 0
    assert samples.get(("parley_errors_total", (("code", "internal"),)), 0) == 0
    assert not any(
        name == "parley_connection_closes_total" and ("code", "1011") in labels for name, labels in samples
    )
