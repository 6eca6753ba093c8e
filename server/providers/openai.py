"""Any OpenAI-compatible Chat Completions server (OpenAI, vLLM, Ollama, llama.cpp, LiteLLM).

Uses the ``openai`` package's ``AsyncOpenAI`` with streaming and
``stream_options.include_usage``; the base URL and key come from the package's own
``OPENAI_BASE_URL`` / ``OPENAI_API_KEY`` unless given explicitly.

Upstream failures become Parley errors here and nowhere else; no provider text
(error bodies, refusal wording, status lines) is put in a raised error's message::

    upstream condition                      raised / yielded             retried before 1st token
    429 (Retry-After / retry-after-ms)      RateLimited(retry_after_ms)  no
    429 insufficient_quota                  InternalError                no
    5xx, connection refused/reset/dropped   UpstreamUnavailable          yes (jittered backoff)
    stream breaks after some text           UpstreamUnavailable          no (caller keeps the partial)
    connect / first-token / between-token   UpstreamTimeout              no
      timeout
    finish_reason "content_filter"          Finish("content_filter")     -
    a ``refusal`` delta                     PolicyRefusal                no
    any other 4xx (400/401/403/404/422...)  InternalError                no
    a call's arguments not a JSON object    SchemaValidationFailed       no
    a call naming an undeclared tool        SchemaValidationFailed       no

Tool calls: ``request.tools`` / ``tool_choice`` go up as Chat Completions
``tools`` / ``tool_choice``; streamed ``tool_calls`` deltas are assembled by their
``index`` (several calls per response, interleaved or not, arguments cut
anywhere), each argument piece is passed on as a ``ToolCallDelta``, and the
complete calls (``ToolCall``) follow when the stream ends. A response with calls
finishes ``tool_calls`` whatever finish_reason the server sent (some servers say
``stop``), except ``length`` (the calls were cut off: they are dropped and the
response finishes ``length``) and ``content_filter``.

Reasoning: ``reasoning_content`` (DeepSeek, vLLM) and ``reasoning`` (OpenRouter,
Ollama, newer vLLM) deltas become ``ReasoningDelta``. Any streamed piece (text,
reasoning, call arguments) is proof of life: the first one ends the first-token
deadline and each one restarts the between-token deadline, so a model that thinks
for minutes in small steps is not timed out. ``usage.completion_tokens_details
.reasoning_tokens`` becomes ``UsageReport.reasoning_tokens``.

The SDK's own retries are off (``max_retries=0``): a retry after text has been
streamed would duplicate it, so only this module decides, and only before the
first token.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import inspect
import json
import logging
import random
import re
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import openai
from openai import AsyncOpenAI

from parley.protocol.errors import (
    InternalError,
    ParleyError,
    PolicyRefusal,
    RateLimited,
    SchemaValidationFailed,
    UpstreamTimeout,
    UpstreamUnavailable,
)

from ..config_error import ConfigError
from ..profiles import RESERVED_PARAMS
from .base import (
    ChatMessage,
    Finish,
    ModelRequest,
    NamedToolChoice,
    ProviderEvent,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    UsageReport,
    parse_arguments,
)

log = logging.getLogger("parley.providers.openai")

_TRACE_RE = re.compile(r"^[0-9a-f]{32}$")
_SCHEMA_NAME_RE = re.compile(r"[^a-zA-Z0-9_-]")
_MAX_RETRY_AFTER_MS = 3_600_000
_END = object()
#: Delta fields reasoning models stream their thinking in (servers differ; the SDK keeps both as extras).
_REASONING_FIELDS = ("reasoning_content", "reasoning")


def _create_parameters() -> frozenset[str]:
    """Keyword arguments ``chat.completions.create`` types itself; the rest go in ``extra_body``."""
    create = openai.resources.chat.completions.AsyncCompletions.create
    names = set(inspect.signature(create).parameters) - {"self"}
    return frozenset(names - {"extra_headers", "extra_query", "extra_body", "timeout"})


_KNOWN_PARAMS = _create_parameters()


def parse_retry_after(headers: Any, now: float | None = None) -> int | None:
    """Milliseconds from ``retry-after-ms`` or ``Retry-After`` (delta-seconds or an HTTP date)."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return _clamp_ms(float(raw_ms))
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    raw = raw.strip()
    try:
        return _clamp_ms(float(raw) * 1000)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    now = time.time() if now is None else now
    return _clamp_ms((when.timestamp() - now) * 1000)


def _clamp_ms(ms: float) -> int:
    return int(min(max(ms, 0.0), _MAX_RETRY_AFTER_MS))


def trace_headers(trace_id: str) -> dict[str, str]:
    """``X-Request-Id`` always; a W3C ``traceparent`` too when the trace id is 32 lowercase hex."""
    headers = {"X-Request-Id": trace_id}
    trace = trace_id.lower()
    if _TRACE_RE.match(trace) and trace != "0" * 32:
        span = secrets.token_hex(8)
        while span == "0" * 16:  # pragma: no cover - 2**-64
            span = secrets.token_hex(8)
        headers["traceparent"] = f"00-{trace}-{span}-01"
    return headers


def openai_response_format(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    """Parley's ``{"type":"json_schema","name":..,"schema":..}`` as the Chat Completions field."""
    if not response_format:
        return None
    kind = response_format.get("type", "text")
    if kind == "json_schema":
        name = _SCHEMA_NAME_RE.sub("_", str(response_format.get("name") or "response"))[:64] or "response"
        return {
            "type": "json_schema",
            "json_schema": {"name": name, "schema": response_format.get("schema") or {}, "strict": True},
        }
    if kind == "json_object":
        return {"type": "json_object"}
    return None


def upstream_messages(request: ModelRequest) -> list[dict[str, Any]]:
    """The conversation as sent: the profile's system prompt first unless the caller already put it in."""
    messages: list[ChatMessage] = list(request.messages)
    prompt = request.profile.system_prompt
    if prompt and not any(m.role == "system" and m.content == prompt for m in messages):
        messages.insert(0, ChatMessage("system", prompt))
    return [upstream_message(m) for m in messages]


def upstream_message(message: ChatMessage) -> dict[str, Any]:
    """One message in Chat Completions form, assistant ``tool_calls`` and ``role: "tool"`` results too."""
    if message.role == "tool":
        return {"role": "tool", "tool_call_id": message.tool_call_id or "", "content": message.content}
    if message.role == "assistant" and message.tool_calls:
        calls = [
            {
                "id": call.call_id,
                "type": "function",
                "function": {"name": call.name, "arguments": json.dumps(call.arguments, ensure_ascii=False)},
            }
            for call in message.tool_calls
        ]
        return {"role": "assistant", "content": message.content or None, "tool_calls": calls}
    return {"role": message.role, "content": message.content}


def openai_tools(request: ModelRequest) -> dict[str, Any]:
    """``tools`` and ``tool_choice`` for the request body; nothing at all when no tools are declared."""
    if not request.tools:
        return {}
    fields: dict[str, Any] = {
        "tools": [
            {
                "type": "function",
                "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
            }
            for t in request.tools
        ]
    }
    choice = request.tool_choice
    if isinstance(choice, NamedToolChoice):
        fields["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    elif choice is not None:
        fields["tool_choice"] = choice
    return fields


class _PendingCall:
    """One call being assembled from ``tool_calls`` deltas that share its ``index``."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.call_id = ""
        self.name = ""
        self.arguments: list[str] = []
        self.unsent = ""  # argument text that arrived before the name (passed on once it is known)

    def feed(self, call_id: str | None, name: str | None, arguments: str | None) -> ToolCallDelta | None:
        """Take one delta; the ``ToolCallDelta`` to pass on, if it carried argument text."""
        if call_id and not self.call_id:
            self.call_id = call_id
        if name:
            self.name += name  # servers send the name whole; a split one still assembles
        if arguments:
            self.arguments.append(arguments)
            self.unsent += arguments
        if not (self.unsent and self.name):
            return None
        if not self.call_id:  # some local servers send no id: the id only has to be unique in history
            self.call_id = f"call_{secrets.token_hex(12)}"
        delta, self.unsent = ToolCallDelta(self.index, self.call_id, self.name, self.unsent), ""
        return delta

    def complete(self, declared: set[str]) -> ToolCall:
        """The finished call; a missing or undeclared name, or arguments that are not an object,
        is the model's error (``SchemaValidationFailed``)."""
        if self.name not in declared:
            shown = repr(self.name[:64]) if self.name else "without a name"
            raise SchemaValidationFailed(f"the model called a tool {shown} that was not declared")
        return ToolCall(
            self.call_id or f"call_{secrets.token_hex(12)}",
            self.name,
            parse_arguments(self.name, "".join(self.arguments)),
        )


def usage_report(usage: Any) -> UsageReport:
    """Chat Completions ``usage`` as a ``UsageReport``, reasoning tokens included when reported."""
    details = getattr(usage, "completion_tokens_details", None)
    reasoning = getattr(details, "reasoning_tokens", None) if details is not None else None
    return UsageReport(
        input_tokens=int(usage.prompt_tokens or 0),
        output_tokens=int(usage.completion_tokens or 0),
        reasoning_tokens=int(reasoning) if isinstance(reasoning, int) else None,
    )


def _delta_events(delta: Any, calls: dict[int, _PendingCall]) -> list[ProviderEvent]:
    """The events one chunk's delta carries: reasoning, then text, then call-argument pieces."""
    events: list[ProviderEvent] = []
    for field in _REASONING_FIELDS:
        text = getattr(delta, field, None)
        if isinstance(text, str) and text:
            events.append(ReasoningDelta(text))
            break  # a server that sends both sends the same text twice
    if delta.content:
        events.append(TextDelta(delta.content))
    for part in delta.tool_calls or ():
        index = part.index if isinstance(part.index, int) else len(calls)
        pending = calls.get(index)
        if pending is None:
            pending = calls[index] = _PendingCall(index)
        function = part.function
        piece = pending.feed(
            part.id,
            function.name if function is not None else None,
            function.arguments if function is not None else None,
        )
        if piece is not None:
            events.append(piece)
    return events


class _Retry(Exception):
    """Internal: this attempt failed before the first token in a way worth another try."""

    def __init__(self, error: ParleyError) -> None:
        super().__init__(error.message)
        self.error = error


class OpenAIProvider:
    """Streams Chat Completions from an OpenAI-compatible server, with honest error semantics.

    ``base_url`` / ``api_key`` default to the ``openai`` package's environment
    (``OPENAI_BASE_URL``, ``OPENAI_API_KEY``). Timeouts are seconds: ``connect_timeout``
    for the TCP/TLS connect, ``first_token_timeout`` from sending the request to the
    first text, ``between_token_timeout`` for any gap after that. ``retry_attempts``
    counts every try (1 = no retry); retries happen only before the first token, after
    a full-jitter exponential backoff of ``backoff_base * 2**n`` capped at ``backoff_max``.
    """

    name = "openai"

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        connect_timeout: float = 5.0,
        first_token_timeout: float = 30.0,
        between_token_timeout: float = 30.0,
        retry_attempts: int = 3,
        backoff_base: float = 0.25,
        backoff_max: float = 4.0,
        default_headers: dict[str, str] | None = None,
    ) -> None:
        if retry_attempts < 1:
            raise ValueError("retry_attempts must be at least 1")
        for label, value in (
            ("connect_timeout", connect_timeout),
            ("first_token_timeout", first_token_timeout),
            ("between_token_timeout", between_token_timeout),
        ):
            if value <= 0:
                raise ValueError(f"{label} must be positive seconds")
        self.connect_timeout = connect_timeout
        self.first_token_timeout = first_token_timeout
        self.between_token_timeout = between_token_timeout
        self.retry_attempts = retry_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        # httpx's read timeout is only a backstop; the token deadlines below are the real ones.
        read = max(first_token_timeout, between_token_timeout) + 1.0
        timeout = openai.Timeout(read, connect=connect_timeout)  # httpx's (openai 1.x) or httpx2's (3.x)
        try:
            self._client = AsyncOpenAI(
                base_url=base_url,
                api_key=api_key,
                max_retries=0,
                timeout=timeout,
                default_headers=default_headers,
            )
        except openai.OpenAIError:
            raise ConfigError(
                "the openai provider needs an API key",
                "set OPENAI_API_KEY (any value for local servers such as vLLM or Ollama)",
            ) from None

    @property
    def base_url(self) -> str:
        return str(self._client.base_url)

    async def aclose(self) -> None:
        await self._client.close()

    def request_arguments(self, request: ModelRequest) -> dict[str, Any]:
        """Keyword arguments for ``chat.completions.create`` (without the per-attempt headers)."""
        profile = request.profile
        kwargs: dict[str, Any] = {
            "model": profile.model,
            "messages": upstream_messages(request),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        extra: dict[str, Any] = {}
        for key, value in profile.params.items():
            if key in RESERVED_PARAMS:
                continue
            (kwargs if key in _KNOWN_PARAMS else extra)[key] = value
        if extra:
            kwargs["extra_body"] = extra
        response_format = openai_response_format(request.response_format)
        if response_format is not None:
            kwargs["response_format"] = response_format
        kwargs.update(openai_tools(request))
        return kwargs

    async def stream(self, request: ModelRequest) -> AsyncIterator[ProviderEvent]:
        kwargs = self.request_arguments(request)
        for attempt in range(1, self.retry_attempts + 1):
            emitted = False
            try:
                # aclosing: when our consumer stops, the attempt (and its HTTP stream) closes now, not at GC.
                async with contextlib.aclosing(self._attempt(request, kwargs)) as events:
                    async for event in events:
                        if isinstance(event, TextDelta | ReasoningDelta | ToolCallDelta):
                            emitted = True
                        yield event
                return
            except _Retry as retry:
                if emitted:  # pragma: no cover - _attempt only raises _Retry before text
                    raise retry.error from None
                if attempt >= self.retry_attempts:
                    raise retry.error from None
                delay = random.uniform(0, min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1)))
                log.info(
                    "upstream attempt %d failed before the first token (%s); retrying in %.3fs",
                    attempt,
                    retry.error.code,
                    delay,
                    extra={"trace_id": request.trace_id},
                )
                await asyncio.sleep(delay)

    async def _attempt(self, request: ModelRequest, kwargs: dict[str, Any]) -> AsyncIterator[ProviderEvent]:
        """One upstream call. Raises ``_Retry`` for retryable failures before the first token.

        "Token" here is any streamed piece: text, reasoning or call arguments.
        """
        loop = asyncio.get_running_loop()
        first_deadline = loop.time() + self.first_token_timeout
        upstream = None
        emitted = False
        finish: str | None = None
        usage: UsageReport | None = None
        calls: dict[int, _PendingCall] = {}
        try:
            try:
                async with asyncio.timeout_at(first_deadline):
                    upstream = await self._client.chat.completions.create(
                        **kwargs, extra_headers=trace_headers(request.trace_id)
                    )
                while True:
                    deadline = loop.time() + self.between_token_timeout if emitted else first_deadline
                    async with asyncio.timeout_at(deadline):
                        chunk = await anext(upstream, _END)
                    if chunk is _END:
                        break
                    if chunk.usage is not None:
                        usage = usage_report(chunk.usage)
                    for choice in chunk.choices[:1]:
                        delta = choice.delta
                        if delta is not None and delta.refusal:
                            log.warning("upstream refusal", extra={"trace_id": request.trace_id})
                            raise PolicyRefusal()
                        if delta is not None:
                            for event in _delta_events(delta, calls):
                                emitted = True
                                yield event
                        if choice.finish_reason:
                            finish = choice.finish_reason
            except TimeoutError:
                phase = "between tokens" if emitted else "before the first token"
                log.warning("upstream timed out %s", phase, extra={"trace_id": request.trace_id})
                if emitted:
                    raise UpstreamTimeout("the model stopped answering mid-response") from None
                raise UpstreamTimeout("the model did not start answering in time") from None
            except openai.APIError as exc:
                raise self._map_error(exc, request.trace_id, emitted) from None
            except ParleyError:
                raise
            except Exception:
                # Not JSON, not chunk-shaped, or an SDK error outside the APIError tree: a broken upstream.
                log.exception("upstream sent an unreadable stream", extra={"trace_id": request.trace_id})
                error = UpstreamUnavailable("the model sent an unreadable response")
                if emitted:
                    raise error from None
                raise _Retry(error) from None
        finally:
            if upstream is not None:
                # Close at once (also on aclose()/cancel): the upstream server sees the disconnect.
                await upstream.close()
        if finish is None:
            # The body ended without a finish_reason: the stream broke.
            log.warning("upstream stream ended without a finish_reason", extra={"trace_id": request.trace_id})
            error = UpstreamUnavailable("the model stream ended unexpectedly")
            if emitted:
                raise error
            raise _Retry(error)
        if calls and finish not in ("length", "content_filter"):
            declared = {t.name for t in request.tools}
            for index in sorted(calls):
                yield calls[index].complete(declared)
            if usage is not None:
                yield usage
            yield Finish("tool_calls")
            return
        if usage is not None:
            yield usage
        if finish == "length":
            yield Finish("length")  # calls cut off mid-arguments are dropped: their deltas were a preview
        elif finish == "content_filter":
            yield Finish("content_filter")
        else:  # "stop"; "tool_calls" without any call; "function_call", which Parley never requests
            if finish == "tool_calls":
                log.warning("upstream said tool_calls but sent no call", extra={"trace_id": request.trace_id})
            yield Finish("stop")

    def _map_error(self, exc: openai.APIError, trace_id: str, emitted: bool) -> Exception:
        """The Parley error for an SDK error; the provider's own text only goes to the log."""
        extra = {"trace_id": trace_id}
        if isinstance(exc, openai.APITimeoutError):
            log.warning("upstream HTTP timeout: %s", exc, extra=extra)
            if emitted:
                return UpstreamTimeout("the model stopped answering mid-response")
            return UpstreamTimeout("could not reach the model in time")
        if isinstance(exc, openai.APIConnectionError):
            log.warning("upstream connection failed: %r", exc.__cause__ or exc, extra=extra)
            error = UpstreamUnavailable("the model connection failed")
            return error if emitted else _Retry(error)
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            log.warning("upstream HTTP %d: %s", status, exc.message, extra=extra)
            if status == 429:
                if exc.code == "insufficient_quota":
                    return InternalError("the model provider rejected the request")
                return RateLimited(
                    "the model is rate limited; retry later",
                    retry_after_ms=parse_retry_after(exc.response.headers),
                )
            if status >= 500:
                error = UpstreamUnavailable(f"the model service failed (HTTP {status})")
                return error if emitted else _Retry(error)
            if status in (408,):
                return UpstreamTimeout("the model did not answer in time")
            return InternalError("the model provider rejected the request")
        # An error event inside the stream (``data: {"error": ...}``) or an invalid response.
        log.warning("upstream stream error: %s", exc.message, extra=extra)
        error = UpstreamUnavailable("the model stream failed")
        return error if emitted else _Retry(error)
