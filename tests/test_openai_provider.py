"""The OpenAI-compatible provider over real HTTP, with the real ``openai`` client, against ``FakeOpenAI``."""

from __future__ import annotations

import asyncio
import email.utils
import re
import socket
import time
from collections.abc import Iterator

import pytest

from parley.protocol.errors import (
    ErrorCode,
    InternalError,
    ParleyError,
    PolicyRefusal,
    RateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from parley.server.config_error import ConfigError
from parley.server.providers.base import ChatMessage, Finish, ModelRequest, Profile, TextDelta, UsageReport
from parley.server.providers.openai import OpenAIProvider, openai_response_format, parse_retry_after
from tests.fake_openai import SECRET, FakeOpenAI, Reply, blackhole_listener

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


def make_provider(fake: FakeOpenAI, **overrides: float) -> OpenAIProvider:
    settings = {
        "connect_timeout": 2.0,
        "first_token_timeout": 5.0,
        "between_token_timeout": 5.0,
        "backoff_base": 0.001,
        "backoff_max": 0.005,
    }
    settings.update(overrides)
    return OpenAIProvider(base_url=fake.base_url, api_key="test-key", **settings)  # type: ignore[arg-type]


@pytest.fixture
async def provider(fake: FakeOpenAI):
    p = make_provider(fake)
    yield p
    await p.aclose()


def make_request(
    *,
    system_prompt: str = "",
    params: dict | None = None,
    messages: list[ChatMessage] | None = None,
    trace_id: str = TRACE,
    response_format: dict | None = None,
) -> ModelRequest:
    profile = Profile(
        name="support",
        version="3",
        provider="openai",
        model="gpt-test",
        system_prompt=system_prompt,
        params=params or {},
    )
    return ModelRequest(
        messages=messages or [ChatMessage("user", "hello there")],
        profile=profile,
        trace_id=trace_id,
        response_format=response_format,
    )


async def collect(provider: OpenAIProvider, request: ModelRequest) -> tuple[list, ParleyError | None]:
    events: list = []
    try:
        async for event in provider.stream(request):
            events.append(event)
    except ParleyError as exc:
        return events, exc
    return events, None


def text_of(events: list) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def assert_no_leak(error: BaseException) -> None:
    for shown in (str(error), repr(error), getattr(error, "message", "")):
        assert SECRET not in shown
        assert "upstream says no" not in shown


# -- the happy path and what is sent ------------------------------------------------------------


async def test_streams_text_usage_and_finish_intact(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    """Every streamed chunk arrives in order, followed by the upstream usage and the stop finish."""
    fake.script(Reply(chunks=["Hel", "lo", " wor", "ld"], usage=(12, 4)))
    events, error = await collect(provider, make_request())
    assert error is None
    assert [e for e in events if isinstance(e, TextDelta)] == [
        TextDelta(t) for t in ["Hel", "lo", " wor", "ld"]
    ]
    assert events[-2:] == [UsageReport(input_tokens=12, output_tokens=4), Finish("stop")]
    assert fake.request_count == 1


async def test_sends_model_system_prompt_params_and_include_usage(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    """The profile's model, system prompt (first) and params reach the upstream body, with usage requested."""
    request = make_request(
        system_prompt="You are terse.",
        params={"temperature": 0.2, "max_tokens": 512, "top_p": 0.9, "top_k": 40},
        messages=[
            ChatMessage("user", "one"),
            ChatMessage("assistant", "uno"),
            ChatMessage("user", "two"),
        ],
    )
    await collect(provider, request)
    body = fake.requests[-1].body
    assert fake.requests[-1].path == "/v1/chat/completions"
    assert body["model"] == "gpt-test"
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "uno"},
        {"role": "user", "content": "two"},
    ]
    assert body["temperature"] == 0.2
    assert body["max_tokens"] == 512
    assert body["top_p"] == 0.9
    assert body["top_k"] == 40  # a server-specific param (vLLM) goes through verbatim
    assert fake.requests[-1].headers["authorization"] == "Bearer test-key"


async def test_system_prompt_not_duplicated_when_already_present(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    """A conversation that already starts with the profile's system prompt is sent without a second copy."""
    request = make_request(
        system_prompt="Be kind.",
        messages=[ChatMessage("system", "Be kind."), ChatMessage("user", "hi")],
    )
    await collect(provider, request)
    roles = [m["role"] for m in fake.requests[-1].body["messages"]]
    assert roles == ["system", "user"]


async def test_no_system_message_without_a_system_prompt(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    """An empty system prompt adds no system message."""
    await collect(provider, make_request(system_prompt=""))
    assert [m["role"] for m in fake.requests[-1].body["messages"]] == ["user"]


async def test_trace_id_sent_as_request_id_and_traceparent(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    """A 32-hex trace id goes upstream as X-Request-Id and as a sampled W3C traceparent with that trace."""
    await collect(provider, make_request(trace_id=TRACE))
    headers = fake.requests[-1].headers
    assert headers["x-request-id"] == TRACE
    assert re.fullmatch(rf"00-{TRACE}-[0-9a-f]{{16}}-01", headers["traceparent"])
    assert headers["traceparent"].split("-")[2] != "0" * 16


async def test_non_hex_trace_id_sent_as_request_id_only(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    """A trace id that is not 32 hex is still sent as X-Request-Id, but no invalid traceparent is made."""
    await collect(provider, make_request(trace_id="req-123"))
    headers = fake.requests[-1].headers
    assert headers["x-request-id"] == "req-123"
    assert "traceparent" not in headers


async def test_json_schema_request_shape(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    """A json_schema response format is sent as OpenAI's strict json_schema response_format."""
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    fake.script(Reply(chunks=['{"answer": ', '"yes"}']))
    request = make_request(response_format={"type": "json_schema", "name": "verdict", "schema": schema})
    events, error = await collect(provider, request)
    assert error is None
    assert text_of(events) == '{"answer": "yes"}'
    assert fake.requests[-1].body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "verdict", "schema": schema, "strict": True},
    }


async def test_invalid_schema_output_is_passed_through(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    """Output that is not valid JSON streams as-is; validating it is the caller's job, not the provider's."""
    fake.script(Reply(chunks=["not ", "json"]))
    request = make_request(response_format={"type": "json_schema", "name": "x", "schema": {"type": "object"}})
    events, error = await collect(provider, request)
    assert error is None
    assert text_of(events) == "not json"
    assert events[-1] == Finish("stop")


def test_response_format_mapping() -> None:
    """Schema names are made safe for OpenAI, text means no response_format, json_object passes through."""
    mapped = openai_response_format(
        {"type": "json_schema", "name": "my schema!", "schema": {"type": "object"}}
    )
    assert mapped is not None
    assert mapped["json_schema"]["name"] == "my_schema_"
    unnamed = openai_response_format({"type": "json_schema", "schema": {}})
    assert unnamed is not None
    assert unnamed["json_schema"]["name"] == "response"
    assert openai_response_format({"type": "text"}) is None
    assert openai_response_format(None) is None
    assert openai_response_format({"type": "json_object"}) == {"type": "json_object"}


async def test_text_response_format_sends_no_response_format(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    """A plain text request carries no response_format field upstream."""
    await collect(provider, make_request(response_format={"type": "text"}))
    assert "response_format" not in fake.requests[-1].body


# -- finish reasons -----------------------------------------------------------------------------


async def test_length_finish(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    """finish_reason "length" becomes Finish("length")."""
    fake.script(Reply(chunks=["cut"], finish_reason="length"))
    events, error = await collect(provider, make_request())
    assert error is None
    assert events[-1] == Finish("length")


async def test_content_filter_finish(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    """finish_reason "content_filter" becomes Finish("content_filter") after the text already streamed."""
    fake.script(Reply(chunks=["partial"], finish_reason="content_filter"))
    events, error = await collect(provider, make_request())
    assert error is None
    assert text_of(events) == "partial"
    assert events[-1] == Finish("content_filter")


async def test_refusal_raises_policy_refusal_without_its_text(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    """A refusal delta raises PolicyRefusal, and the model's refusal wording is not in the error."""
    fake.script(Reply(refusal=f"I cannot help with that {SECRET}"))
    events, error = await collect(provider, make_request())
    assert isinstance(error, PolicyRefusal)
    assert error.code is ErrorCode.POLICY_REFUSAL
    assert text_of(events) == ""
    assert_no_leak(error)
    assert "I cannot help" not in str(error)
    assert fake.request_count == 1


# -- HTTP errors --------------------------------------------------------------------------------


async def test_429_is_rate_limited_with_retry_after_seconds(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    """Upstream 429 raises RateLimited carrying Retry-After (seconds) as milliseconds, without a retry."""
    fake.script(Reply.error(429, retry_after="7"))
    events, error = await collect(provider, make_request())
    assert isinstance(error, RateLimited)
    assert error.retryable
    assert error.retry_after_ms == 7000
    assert events == []
    assert fake.request_count == 1
    assert_no_leak(error)


async def test_429_retry_after_http_date(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    """A Retry-After HTTP date becomes the milliseconds until that date."""
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    fake.script(Reply.error(429, retry_after=when))
    _, error = await collect(provider, make_request())
    assert isinstance(error, RateLimited)
    assert error.retry_after_ms is not None
    assert 100_000 <= error.retry_after_ms <= 120_000


async def test_429_without_retry_after(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    """A 429 without Retry-After is still rate_limited, with no invented retry_after_ms."""
    fake.script(Reply.error(429))
    _, error = await collect(provider, make_request())
    assert isinstance(error, RateLimited)
    assert error.retry_after_ms is None


async def test_429_insufficient_quota_is_internal(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    """An exhausted quota (429 insufficient_quota) is not something a client can wait out: internal."""
    body = {
        "error": {"message": f"quota {SECRET}", "type": "insufficient_quota", "code": "insufficient_quota"}
    }
    fake.script(Reply.error(429, retry_after="1", error_body=body))
    _, error = await collect(provider, make_request())
    assert isinstance(error, InternalError)
    assert_no_leak(error)


def test_parse_retry_after_forms() -> None:
    """retry-after-ms wins, then delta-seconds, then an HTTP date; past dates are 0 and garbage is None."""
    now = 1_700_000_000.0
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}, now) == 1500
    assert parse_retry_after({"retry-after": "2.5"}, now) == 2500
    assert parse_retry_after({"retry-after": email.utils.formatdate(now + 30, usegmt=True)}, now) == 30_000
    assert parse_retry_after({"retry-after": email.utils.formatdate(now - 30, usegmt=True)}, now) == 0
    assert parse_retry_after({"retry-after": "soon"}, now) is None
    assert parse_retry_after({}, now) is None


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_client_errors_are_internal_without_provider_text(
    fake: FakeOpenAI, provider: OpenAIProvider, status: int
) -> None:
    """Upstream 4xx (bad request, bad key, forbidden, unknown model) is internal, generic and not retried."""
    fake.script(Reply.error(status))
    _, error = await collect(provider, make_request())
    assert isinstance(error, InternalError)
    assert error.code is ErrorCode.INTERNAL
    assert not error.retryable
    assert_no_leak(error)
    assert fake.request_count == 1


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_5xx_retried_then_succeeds(fake: FakeOpenAI, provider: OpenAIProvider, status: int) -> None:
    """A 5xx before the first token is retried, and the next good answer streams normally."""
    fake.script(Reply.error(status), Reply.error(status), Reply(chunks=["fine"]))
    events, error = await collect(provider, make_request())
    assert error is None
    assert text_of(events) == "fine"
    assert fake.request_count == 3


async def test_5xx_gives_up_after_configured_attempts(fake: FakeOpenAI) -> None:
    """Persistent 5xx makes exactly retry_attempts requests, then raises a retryable UpstreamUnavailable."""
    fake.script(Reply.error(503))
    p = make_provider(fake, retry_attempts=4)
    try:
        _, error = await collect(p, make_request())
    finally:
        await p.aclose()
    assert isinstance(error, UpstreamUnavailable)
    assert error.retryable
    assert fake.request_count == 4
    assert_no_leak(error)


async def test_default_attempts_is_three(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    """By default a failing upstream is tried three times in all."""
    fake.script(Reply.error(500))
    _, error = await collect(provider, make_request())
    assert isinstance(error, UpstreamUnavailable)
    assert fake.request_count == 3


async def test_single_attempt_means_no_retry(fake: FakeOpenAI) -> None:
    """retry_attempts=1 disables retrying."""
    fake.script(Reply.error(503), Reply(chunks=["never"]))
    p = make_provider(fake, retry_attempts=1)
    try:
        _, error = await collect(p, make_request())
    finally:
        await p.aclose()
    assert isinstance(error, UpstreamUnavailable)
    assert fake.request_count == 1


# -- connection failures ------------------------------------------------------------------------


async def test_connection_drop_before_response_is_retried(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    """A connection closed before any response is retried, then succeeds."""
    fake.script(Reply(drop_before_headers=True), Reply(chunks=["back"]))
    events, error = await collect(provider, make_request())
    assert error is None
    assert text_of(events) == "back"
    assert fake.request_count == 2


async def test_drop_after_headers_before_first_token_is_retried(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    """A stream that breaks after the headers but before any text counts as before the first token."""
    fake.script(Reply(drop_after=0), Reply(drop_after=0), Reply(chunks=["third"]))
    events, error = await collect(provider, make_request())
    assert error is None
    assert text_of(events) == "third"
    assert fake.request_count == 3


async def test_persistent_connection_drops_raise_upstream_unavailable(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    """Connections that keep dropping end in UpstreamUnavailable after the configured attempts."""
    fake.script(Reply(drop_before_headers=True))
    _, error = await collect(provider, make_request())
    assert isinstance(error, UpstreamUnavailable)
    assert fake.request_count == 3


async def test_connection_refused_is_upstream_unavailable() -> None:
    """Nothing listening at the base URL is upstream_unavailable (retryable), not a crash."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = OpenAIProvider(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", backoff_base=0.001)
    try:
        _, error = await collect(p, make_request())
    finally:
        await p.aclose()
    assert isinstance(error, UpstreamUnavailable)
    assert error.retryable


async def test_break_after_tokens_keeps_partial_and_is_not_retried(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    """A stream that breaks after some text yields that text, then raises UpstreamUnavailable, no retry."""
    fake.script(Reply(chunks=["a", "b", "c", "d"], drop_after=2), Reply(chunks=["never"]))
    events, error = await collect(provider, make_request())
    assert text_of(events) == "ab"
    assert isinstance(error, UpstreamUnavailable)
    assert fake.request_count == 1
    assert not any(isinstance(e, Finish | UsageReport) for e in events)


async def test_stream_ending_without_finish_is_a_break(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    """A body that ends cleanly but without a finish_reason after text is a broken stream, not a stop."""
    fake.script(Reply(chunks=["a", "b", "c"], end_after=1))
    events, error = await collect(provider, make_request())
    assert text_of(events) == "a"
    assert isinstance(error, UpstreamUnavailable)
    assert fake.request_count == 1


async def test_in_stream_error_event_is_unavailable_without_text(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    """An ``{"error": ...}`` event mid-stream raises UpstreamUnavailable and its message does not leak."""
    fake.script(Reply(chunks=["a", "b"], stream_error_after=1))
    events, error = await collect(provider, make_request())
    assert text_of(events) == "a"
    assert isinstance(error, UpstreamUnavailable)
    assert_no_leak(error)
    assert "stream broke" not in str(error)


async def test_unreadable_stream_before_text_is_retried(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    """A ``data:`` line that is not JSON before any text is an upstream failure, retried like a 5xx."""
    fake.script(Reply(garbage_after=0), Reply(chunks=["ok"]))
    events, error = await collect(provider, make_request())
    assert error is None
    assert text_of(events) == "ok"
    assert fake.request_count == 2


async def test_unreadable_stream_after_text_is_unavailable(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    """Garbage after some text raises UpstreamUnavailable without echoing the garbage."""
    fake.script(Reply(chunks=["a", "b"], garbage_after=1))
    events, error = await collect(provider, make_request())
    assert text_of(events) == "a"
    assert isinstance(error, UpstreamUnavailable)
    assert_no_leak(error)
    assert fake.request_count == 1


# -- timeouts -----------------------------------------------------------------------------------


async def test_first_token_timeout(fake: FakeOpenAI) -> None:
    """No first token within first_token_timeout raises UpstreamTimeout, closes the stream, no retry."""
    fake.script(Reply(ttft=60))
    p = make_provider(fake, first_token_timeout=0.3)
    try:
        events, error = await collect(p, make_request())
    finally:
        await p.aclose()
    assert isinstance(error, UpstreamTimeout)
    assert error.retryable
    assert events == []
    assert fake.request_count == 1
    assert await fake.wait_disconnect()


async def test_slow_response_headers_hit_first_token_timeout(fake: FakeOpenAI) -> None:
    """An upstream that does not even send headers in time is an UpstreamTimeout too."""
    fake.script(Reply(headers_delay=60))
    p = make_provider(fake, first_token_timeout=0.3)
    try:
        _, error = await collect(p, make_request())
    finally:
        await p.aclose()
    assert isinstance(error, UpstreamTimeout)
    assert fake.request_count == 1


async def test_between_token_timeout_keeps_partial(fake: FakeOpenAI) -> None:
    """A gap longer than between_token_timeout after some text raises UpstreamTimeout after that text."""
    fake.script(Reply(chunks=["first", "second"], between=60))
    p = make_provider(fake, between_token_timeout=0.3)
    try:
        events, error = await collect(p, make_request())
    finally:
        await p.aclose()
    assert text_of(events) == "first"
    assert isinstance(error, UpstreamTimeout)
    assert fake.request_count == 1
    assert await fake.wait_disconnect()


async def test_connect_timeout() -> None:
    """A TCP connect that does not complete within connect_timeout raises UpstreamTimeout promptly."""
    with blackhole_listener() as url:
        p = OpenAIProvider(base_url=url, api_key="k", connect_timeout=0.2, first_token_timeout=30)
        started = time.monotonic()
        try:
            _, error = await collect(p, make_request())
        finally:
            await p.aclose()
    assert isinstance(error, UpstreamTimeout)
    assert time.monotonic() - started < 10


# -- cancellation -------------------------------------------------------------------------------


async def test_aclose_closes_upstream_stream(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    """Stopping iteration (aclose) closes the upstream HTTP stream at once; the server sees the disconnect."""
    fake.script(Reply(chunks=["one", "two", "three"], between=60))
    stream = provider.stream(make_request())
    assert await anext(stream) == TextDelta("one")
    await stream.aclose()
    assert await fake.wait_disconnect()
    assert fake.completed == 0


async def test_task_cancel_closes_upstream_stream(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    """Cancelling the consuming task while it waits for a token closes the upstream HTTP stream."""
    fake.script(Reply(chunks=["one", "two"], between=60))
    got_first = asyncio.Event()

    async def consume() -> None:
        async for event in provider.stream(make_request()):
            if isinstance(event, TextDelta):
                got_first.set()

    task = asyncio.create_task(consume())
    await got_first.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await fake.wait_disconnect()


async def test_cancel_before_first_token_closes_upstream(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    """Cancelling while the model is still thinking also disconnects from the upstream server."""
    fake.script(Reply(ttft=60))

    async def consume() -> None:
        async for _ in provider.stream(make_request()):
            pass

    task = asyncio.create_task(consume())
    assert await fake.wait_requests(1)  # the request is in flight once the fake has recorded it
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await fake.wait_disconnect()


# -- configuration ------------------------------------------------------------------------------


async def test_honours_openai_env_vars(fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without overrides the provider uses the openai package's OPENAI_BASE_URL and OPENAI_API_KEY."""
    monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "env-key")
    p = OpenAIProvider()
    try:
        events, error = await collect(p, make_request())
    finally:
        await p.aclose()
    assert error is None
    assert text_of(events) == "Hello, world!"
    assert fake.requests[-1].headers["authorization"] == "Bearer env-key"


def test_missing_api_key_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without any API key the provider refuses to start, naming OPENAI_API_KEY."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_ADMIN_KEY", raising=False)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        OpenAIProvider(base_url="http://127.0.0.1:9/v1")


def test_invalid_settings_rejected() -> None:
    """Non-positive timeouts and fewer than one attempt are configuration errors."""
    with pytest.raises(ValueError, match="retry_attempts"):
        OpenAIProvider(api_key="k", retry_attempts=0)
    with pytest.raises(ValueError, match="first_token_timeout"):
        OpenAIProvider(api_key="k", first_token_timeout=0)


async def test_reserved_params_cannot_override_streaming(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    """Profile params cannot turn off streaming or swap the model; Parley's own fields win."""
    await collect(provider, make_request(params={"stream": False, "model": "other", "temperature": 1}))
    body = fake.requests[-1].body
    assert body["stream"] is True
    assert body["model"] == "gpt-test"
    assert body["temperature"] == 1
