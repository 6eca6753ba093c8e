"""Generations: model responses that run apart from any WebSocket and write to the log.

A ``Generation`` reads its provider's stream and hands text to the process-wide
``DeltaWriter``, which coalesces: when no write is in flight, text goes out at
once; text arriving while a write is in flight (for any local generation) joins
the next write, one pipelined store round trip for all of them. A client that
drops does not stop a generation; only a cancel (from any instance), a lease
lost to another instance, or process shutdown does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from parley.protocol import encode
from parley.protocol.codec import encode_delta
from parley.protocol.errors import (
    ErrorCode,
    ParleyError,
    PolicyRefusal,
    SchemaValidationFailed,
    UpstreamUnavailable,
)
from parley.protocol.messages import (
    ErrorInfo,
    ResponseCompleted,
    ResponseReasoningDelta,
    ResponseStarted,
    ResponseToolCallDelta,
    ToolResultAccepted,
    Usage,
)
from parley.sessions import DeltaWrite, SessionStore
from parley.sessions.store import CallsOutcome, Continuation, ToolRun

from .providers.base import (
    Finish,
    ModelProvider,
    ModelRequest,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    UsageReport,
)
from .schema_check import OutputValidator
from .settings import Settings
from .tool_turns import MadeCall, TurnContext, assistant_turn, call_id_for, tool_turn
from .tools import ServerTools, ToolContext, run_tool

log = logging.getLogger("parley.generation")

#: Back-off between retries of a failed store write (Redis outage) by the delta writer.
WRITE_RETRY_S = 0.1
#: How long a finished generation keeps retrying its terminal write before the reaper's lease
#: expiry takes over (the reaper then logs it as interrupted on some instance).
FINISH_RETRY_S = 30.0


#: What a client is told when a response's generating process stopped before it finished.
INTERRUPTED_MESSAGE = "the response was interrupted; you may send it again"


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(eq=False, slots=True)
class Generation:
    session_id: str
    response_id: str
    request: ModelRequest
    provider: ModelProvider
    on_done: Callable[[Generation], None] | None = None
    task: asyncio.Task[None] | None = None
    cancel_requested: bool = False
    streaming: bool = False  # inside the model-reading part of the runner (interruptible)
    abandoned: bool = False  # another instance ended it: write nothing more
    logged_chars: int = 0
    text_parts: list[str] = field(default_factory=list)
    usage: UsageReport | None = None
    output_tokens: int = 0
    flushed: asyncio.Event = field(default_factory=asyncio.Event)
    started: float = field(default_factory=time.monotonic)
    first_token: float | None = None
    # tool calls (issue 17)
    turn: TurnContext | None = None  # set when the turn may call tools or continue from results
    runs: list[ToolRun] = field(default_factory=list)  # server calls to run before the model
    rebuild: Callable[[list[dict[str, Any]]], ModelRequest] | None = None  # the request, given new tool turns
    calls: list[MadeCall] = field(default_factory=list)  # complete, validated calls, in order
    call_ids: dict[str, str] = field(default_factory=dict)  # the provider's call id -> ours

    def request_cancel(self) -> None:
        """Stop reading the model; the runner then logs ``finish_reason: cancelled``.

        The task is interrupted only while it reads the model: a task cancelled before its
        first step would never run its ``finally`` (and never log a terminal event), and one
        cancelled while logging its terminal event would lose it. Otherwise the flag suffices.
        """
        if self.cancel_requested:
            return
        self.cancel_requested = True
        if self.streaming and self.task is not None and not self.task.done():
            self.task.cancel()

    def abandon(self) -> None:
        self.abandoned = True
        self.request_cancel()


#: What a pending piece of a generation's output is: its text (None), its reasoning, or a call's
#: arguments ((call_id, name)). Adjacent pieces of one kind are coalesced into one event.
PieceKind = str | tuple[str, str] | None
REASONING = "reasoning"


class DeltaWriter:
    """Batches pending text of all local generations into one store write per tick.

    Besides text, a generation's reasoning (when its profile streams it) and its tool calls'
    argument pieces are coalesced the same way: per generation, pieces are kept in order and
    adjacent ones of one kind become one event; only text is kept as the partial reply.
    """

    def __init__(
        self,
        store: SessionStore,
        coalesce_ms: float = 0.0,
        timestamps: bool = False,
        busy_ms: float = 0.0,
        busy_writes: int = 100,
    ) -> None:
        self.store = store
        self.coalesce_s = coalesce_ms / 1000
        self.busy_s = max(busy_ms, coalesce_ms) / 1000
        self.busy_writes = busy_writes
        # sessions whose text arrived while the previous write was in flight: the load signal for the
        # busy window. Not the previous flush's size: with the window on, that counts the window's own
        # gathering, and a window once opened kept itself open at any load above busy_writes/window.
        self._piled = 0
        self.timestamps = timestamps
        self._pending: dict[Generation, list[tuple[PieceKind, list[str]]]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.frames = 0  # delta events written (for benchmarks and metrics)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="parley-delta-writer")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def add(self, gen: Generation, text: str, kind: PieceKind = None) -> None:
        pieces = self._pending.get(gen)
        if pieces is None:
            self._pending[gen] = [(kind, [text])]
            gen.flushed.clear()
            self._wake.set()
        elif pieces[-1][0] == kind:
            pieces[-1][1].append(text)
        else:
            pieces.append((kind, [text]))

    def discard(self, gen: Generation) -> None:
        """Drop text not yet written (after a cancel nothing more may be logged)."""
        self._pending.pop(gen, None)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            window = self.busy_s if self._piled >= self.busy_writes else self.coalesce_s
            if window:
                await asyncio.sleep(window)
            batch, self._pending = self._pending, {}
            if not batch:
                continue
            ts = round(time.time() * 1000, 3) if self.timestamps else None
            gens: list[Generation] = []
            texts: list[str] = []
            writes: list[DeltaWrite] = []
            for g, pieces in batch.items():
                for kind, parts in pieces:
                    t = "".join(parts)
                    gens.append(g)
                    texts.append(t if kind is None else "")
                    writes.append(_write(g, kind, t, ts))
            try:
                results = await self.store.append_deltas(writes)
            except ParleyError:  # the store is unreachable: its tracker logs the outage once (outage.py)
                log.debug("delta write failed; retrying", exc_info=True)
                self.store.health.write_retried(len(writes))
                for g, pieces in batch.items():  # put back, ahead of newer text
                    self._pending[g] = [*pieces, *self._pending.get(g, [])]
                await asyncio.sleep(WRITE_RETRY_S)
                self._wake.set()
                continue
            self._piled = len(self._pending)
            for g, t, res in zip(gens, texts, results, strict=True):
                if res == "cancel":
                    g.request_cancel()
                elif res == "gone":
                    g.abandon()
                else:
                    g.logged_chars += len(t)
                    self.frames += 1
                if g not in self._pending:
                    g.flushed.set()
            if self._pending:
                self._wake.set()


def _write(gen: Generation, kind: PieceKind, text: str, ts: float | None) -> DeltaWrite:
    """One coalesced piece as the event the store appends (only text joins the partial reply)."""
    rid = gen.response_id
    if kind is None:
        return DeltaWrite(gen.session_id, rid, text, encode_delta(rid, text, ts))
    if kind == REASONING:
        return DeltaWrite(gen.session_id, rid, "", encode(ResponseReasoningDelta(response_id=rid, text=text)))
    call_id, name = kind
    event = ResponseToolCallDelta(response_id=rid, call_id=call_id, name=name, arguments_delta=text)
    return DeltaWrite(gen.session_id, rid, "", encode(event))


class Generations:
    """This process's running generations: start, cancel, lease renewal, crash recovery."""

    def __init__(self, store: SessionStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.writer = DeltaWriter(
            store,
            settings.coalesce_ms,
            settings.event_timestamps,
            busy_ms=settings.coalesce_busy_ms,
            busy_writes=settings.coalesce_busy_writes,
        )
        self.running: dict[tuple[str, str], Generation] = {}
        self.validator = OutputValidator()
        self._loops: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self.on_finish: list[Callable[[Generation, str], None]] = []
        # tool calls: the profiles' server tools, and who starts a continuation (the service)
        self.server_tools = ServerTools({})
        self.on_continue: Callable[[str, CallsOutcome], None] | None = None
        #: called with (session_id, response_id) for each response the reaper ended (its process died)
        self.on_reaped: list[Callable[[str, str], None]] = []
        # responses being accepted here but not launched yet, and cancels that arrived meanwhile
        self._expected: dict[tuple[str, str], bool] = {}
        store.on_cancel(self._on_cancel)

    def start(self) -> None:
        self.writer.start()
        self._loops = [
            asyncio.create_task(self._renew_loop(), name="parley-lease-renew"),
            asyncio.create_task(self._reap_loop(), name="parley-reaper"),
        ]

    async def stop(self, drain_s: float = 0.0) -> None:
        """Let running generations finish for up to ``drain_s``, then end the rest as interrupted."""
        if self.running and drain_s > 0:
            tasks = [g.task for g in self.running.values() if g.task]
            await asyncio.wait(tasks, timeout=drain_s)
        for gen in list(self.running.values()):
            if gen.task and not gen.task.done():
                gen.task.cancel()
        tasks = [g.task for g in self.running.values() if g.task]
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        for task in self._loops:
            task.cancel()
        await self.writer.stop()
        await self.validator.aclose()

    def spawn(self, coro: Any) -> None:
        """Run a store write in the background (kept referenced until it ends)."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # (the reaper repairs a failure)

    def expect(self, session_id: str, response_id: str) -> None:
        """Announce a response about to be accepted, so a cancel racing its launch is not lost."""
        self._expected[(session_id, response_id)] = False

    def forget(self, session_id: str, response_id: str) -> None:
        self._expected.pop((session_id, response_id), None)

    def launch(
        self,
        session_id: str,
        response_id: str,
        request: ModelRequest,
        provider: ModelProvider,
        *,
        turn: TurnContext | None = None,
        runs: list[ToolRun] | None = None,
        rebuild: Callable[[list[dict[str, Any]]], ModelRequest] | None = None,
    ) -> None:
        gen = Generation(
            session_id, response_id, request, provider, turn=turn, runs=runs or [], rebuild=rebuild
        )
        gen.flushed.set()
        # a cancel that arrived before the launch: _run ends it as cancelled before calling the model
        gen.cancel_requested = self._expected.pop((session_id, response_id), False)
        self.running[(session_id, response_id)] = gen
        gen.task = asyncio.create_task(self._run(gen), name=f"gen-{response_id}")

    def _on_cancel(self, session_id: str, response_id: str) -> None:
        key = (session_id, response_id)
        gen = self.running.get(key)
        if gen is not None:
            gen.request_cancel()
        elif key in self._expected:
            self._expected[key] = True

    async def _run(self, gen: Generation) -> None:
        finish_reason = "stop"
        error: ParleyError | None = None
        shutdown = False
        try:
            try:
                gen.streaming = True
                if gen.cancel_requested:  # asked before the model was even called
                    raise asyncio.CancelledError
                if gen.runs:
                    await self._run_server_tools(gen)
                stream_reasoning = gen.request.profile.reasoning == "stream"
                async for ev in gen.provider.stream(gen.request):
                    if isinstance(ev, TextDelta):
                        if not ev.text:
                            continue
                        if gen.first_token is None:
                            gen.first_token = time.monotonic()
                        gen.text_parts.append(ev.text)
                        gen.output_tokens += 1
                        self.writer.add(gen, ev.text)
                    elif isinstance(ev, ReasoningDelta):
                        if stream_reasoning and ev.text:  # hidden or not, it proved the model alive
                            self.writer.add(gen, ev.text, REASONING)
                    elif isinstance(ev, ToolCallDelta):
                        call_id = self._call_id(gen, ev.call_id)
                        if ev.arguments_delta:
                            self.writer.add(gen, ev.arguments_delta, (call_id, ev.name))
                    elif isinstance(ev, ToolCall):
                        gen.calls.append(await self._checked_call(gen, ev))
                    elif isinstance(ev, UsageReport):
                        gen.usage = ev
                    elif isinstance(ev, Finish):
                        finish_reason = ev.reason
                await gen.flushed.wait()
            except asyncio.CancelledError:
                if not gen.cancel_requested:
                    shutdown = True  # process shutdown: end as interrupted
                asyncio.current_task().uncancel()  # type: ignore[union-attr]
                self.writer.discard(gen)
                finish_reason = "interrupted" if shutdown else "cancelled"
            except PolicyRefusal as exc:
                self.writer.discard(gen)
                finish_reason, error = "content_filter", exc
            except ParleyError as exc:
                await self._settle(gen)
                finish_reason, error = "error", exc
            except Exception:
                log.exception("generation failed", extra={"response_id": gen.response_id})
                await self._settle(gen)
                finish_reason, error = "error", ParleyError()
            gen.streaming = False
            if gen.abandoned:
                return
            if finish_reason == "tool_calls" and gen.calls and error is None:
                if await self._end_with_calls(gen):
                    return
                finish_reason = "cancelled"  # a cancel came first: the calls are not made
            elif finish_reason == "tool_calls":
                finish_reason = "stop"  # (a provider's promise broken: no complete call)
            completed = await self._completed(gen, finish_reason, error)
            await self._finish(gen, completed)
        finally:
            self.running.pop((gen.session_id, gen.response_id), None)

    async def _settle(self, gen: Generation) -> None:
        """Wait (briefly) for text already handed to the writer, so the log keeps the partial reply."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(gen.flushed.wait(), 2.0)

    async def _completed(
        self, gen: Generation, finish_reason: str, error: ParleyError | None
    ) -> ResponseCompleted:
        output: Any = None
        fmt = gen.request.response_format
        if finish_reason == "stop" and fmt and fmt.get("type") == "json_schema":
            try:
                text = "".join(gen.text_parts)
                output = await self.validator.parse_and_validate(text, fmt.get("schema", {}))
            except SchemaValidationFailed as exc:
                output, finish_reason, error = None, "error", exc
        if finish_reason == "interrupted" and error is None:
            error = UpstreamUnavailable(INTERRUPTED_MESSAGE)
        if finish_reason == "content_filter" and error is None:
            error = PolicyRefusal("the model's output was filtered")
        end = time.monotonic()
        usage = gen.usage or UsageReport(
            input_tokens=sum(len(m.content.split()) for m in gen.request.messages),
            output_tokens=gen.output_tokens,
        )
        return ResponseCompleted(
            response_id=gen.response_id,
            finish_reason=finish_reason,  # type: ignore[arg-type]
            output=output,
            usage=Usage(
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                reasoning_tokens=usage.reasoning_tokens,
            ),
            ttft_ms=None if gen.first_token is None else round((gen.first_token - gen.started) * 1000),
            latency_ms=round((end - gen.started) * 1000),
            error=None
            if error is None
            else ErrorInfo(
                code=error.code,
                message=error.message,
                retryable=error.retryable,
                retry_after_ms=error.retry_after_ms,
            ),
        )

    async def _finish(self, gen: Generation, completed: ResponseCompleted) -> None:
        body = encode(completed)
        deadline = time.monotonic() + FINISH_RETRY_S
        while True:
            try:
                await self.store.finish(
                    gen.session_id, gen.response_id, body=body, finish_reason=completed.finish_reason
                )
                break
            except ParleyError:
                if time.monotonic() > deadline:  # counted in the outage's summary line, not one line each
                    log.debug("could not log the end of %s; the reaper will", gen.response_id)
                    self.store.health.write_dropped()
                    return
                self.store.health.write_retried()
                await asyncio.sleep(WRITE_RETRY_S * 5)
        for cb in self.on_finish:
            cb(gen, completed.finish_reason)

    # ------------------------------------------------------------ tool calls (issue 17)

    @staticmethod
    def _call_id(gen: Generation, provider_id: str) -> str:
        """Our id for a call the provider names ``provider_id`` (unique in one response only)."""
        ours = gen.call_ids.get(provider_id)
        if ours is None:
            ours = gen.call_ids[provider_id] = call_id_for(gen.response_id, len(gen.call_ids))
        return ours

    async def _checked_call(self, gen: Generation, call: ToolCall) -> MadeCall:
        """A complete call under its session-unique id, its arguments checked against the tool's schema
        (``SchemaValidationFailed`` ends the response; the call is never logged)."""
        spec = next((t for t in gen.request.tools if t.name == call.name), None)
        if spec is None:  # providers refuse undeclared names already; this keeps the promise here too
            raise SchemaValidationFailed(f"the model called tool {call.name!r}, which is not declared")
        try:
            await self.validator.parse_and_validate(json.dumps(call.arguments), spec.parameters)
        except SchemaValidationFailed as exc:
            raise SchemaValidationFailed(
                f"the model's arguments for tool {call.name!r} do not match its schema: {exc.message}"
            ) from None
        call_id = self._call_id(gen, call.call_id)
        server = self.server_tools.get(gen.request.profile.name, call.name)
        kind = "client" if server is None else "approval" if server.requires_approval else "server"
        return MadeCall(ToolCall(call_id, call.name, call.arguments), kind)  # type: ignore[arg-type]

    async def _end_with_calls(self, gen: Generation) -> bool:
        """Log the calls and end the response with ``tool_calls``: the session waits (no lease, no
        task), or, when only server tools were called, the continuation starts here at once.
        False: a cancel was asked first (the caller ends it as cancelled)."""
        assert gen.turn is not None, "a response that may call tools has a turn context"
        completed = await self._completed(gen, "tool_calls", None)
        ctx = gen.turn.next_round()
        next_id = f"r_{uuid.uuid4().hex}"
        started = ResponseStarted(
            response_id=next_id,
            in_reply_to=ctx.message_id,
            profile=gen.request.profile.label,
            trace_id=ctx.trace_id,
            continues=gen.response_id,
        )
        bodies = [b for m in gen.calls for b in m.bodies(gen.response_id)]
        deadline = time.monotonic() + FINISH_RETRY_S
        while True:
            now = now_ms()
            try:
                out = await self.store.end_with_calls(
                    gen.session_id,
                    gen.response_id,
                    call_bodies=bodies,
                    calls=[m.record(gen.response_id) for m in gen.calls],
                    turn=assistant_turn(gen.response_id, gen.calls),
                    body=encode(completed),
                    continuation=Continuation(next_id, encode(started), ctx.to_json()),
                    now_ms=now,
                    lease_ms=self.settings.lease_ms,
                    wait_deadline_ms=now + self.settings.tool_result_timeout_ms,
                )
                break
            except ParleyError:
                if time.monotonic() > deadline:
                    self.store.health.write_dropped()
                    return True  # the lease lapses; the reaper logs it as interrupted
                self.store.health.write_retried()
                await asyncio.sleep(WRITE_RETRY_S * 5)
        if out.status == "cancel":
            return False
        if out.status == "gone":
            return True
        for cb in self.on_finish:
            cb(gen, "tool_calls")
        if out.status == "continue" and self.on_continue is not None:
            self.on_continue(gen.session_id, out)
        return True

    async def _run_server_tools(self, gen: Generation) -> None:
        """Run the server calls a continuation starts with, each at most once (``start_run`` marks it
        before it runs), and log each result like a client's; then rebuild the request with them."""
        assert gen.turn is not None
        turns: list[dict[str, Any]] = []
        timeout_s = self.settings.tool_run_timeout_ms / 1000
        for run in gen.runs:
            spec = json.loads(run.spec)
            state = await self.store.start_run(gen.session_id, gen.response_id, run.call_id)
            if state == "cancel":
                gen.cancel_requested = True
                raise asyncio.CancelledError
            if state == "gone":
                gen.abandon()
                raise asyncio.CancelledError
            if state == "done":
                continue  # started before (never twice): its history reads "no result"
            tool = self.server_tools.get(gen.turn.profile, spec["name"])
            ctx = ToolContext(
                gen.session_id,
                spec.get("response_id", ""),
                run.call_id,
                trace_id=gen.turn.trace_id,
                tenant=gen.turn.tenant,
                metadata=dict(gen.turn.metadata),
            )
            if tool is None:  # the profile lost the tool across a restart
                output: Any = f"tool {spec['name']} is not available"
                is_error = True
            else:
                result = await run_tool(tool, spec["arguments"], ctx, timeout_s)
                output, is_error = result.output, result.is_error
            body = encode(
                ToolResultAccepted(response_id="", call_id=run.call_id, output=output, is_error=is_error)
            )
            turn = tool_turn(run.call_id, output, is_error)
            out = await self.store.answer_call(
                gen.session_id,
                run.call_id,
                mode="server",
                body=body,
                turn=turn,
                now_ms=now_ms(),
                lease_ms=self.settings.lease_ms,
                runner=gen.response_id,
            )
            if out.status == "cancel":
                gen.cancel_requested = True
                raise asyncio.CancelledError
            if out.status == "gone":
                gen.abandon()
                raise asyncio.CancelledError
            turns.append(json.loads(turn) | {"response_id": out.response_id})
        if gen.rebuild is not None:
            gen.request = gen.rebuild(turns)

    async def reap_waits_once(self) -> int:
        """End waits for tool results that passed ``PARLEY_TOOL_RESULT_TIMEOUT_MS`` with tool_timeout."""
        now = now_ms()
        ended: list[str] = []
        body = encode(tool_timeout_event(self.settings.tool_result_timeout_ms))
        for session_id, response_id in await self.store.expired_waits(now):
            entries = await self.store.end_wait(
                session_id, response_id, body=body, finish_reason="error", expired_before=now
            )
            if entries is not None:
                ended.append(response_id)
        if ended:
            log.info(
                "ended %d wait(s) for tool results: no results in time",
                len(ended),
                extra={"fields": {"response_ids": ended[:10]}},
            )
        return len(ended)

    async def _renew_loop(self) -> None:
        period = self.settings.lease_renew_ms / 1000
        while True:
            await asyncio.sleep(period)
            gens = list(self.running.values())
            deadline = now_ms() + self.settings.lease_ms
            try:
                results = await self.store.renew([(g.session_id, g.response_id) for g in gens], deadline)
            except ParleyError:
                continue  # the store is down: the next period tries again (leases outlive a few)
            for g, res in zip(gens, results, strict=True):
                if res == "cancel":
                    g.request_cancel()
                elif res == "gone":
                    g.abandon()

    async def _reap_loop(self) -> None:
        period = self.settings.reaper_interval_ms / 1000
        while True:
            await asyncio.sleep(period)
            with contextlib.suppress(ParleyError):
                await self.reap_once()
            with contextlib.suppress(ParleyError):
                await self.reap_waits_once()

    async def reap_once(self) -> int:
        """End generations whose lease expired (their process died) as ``interrupted``."""
        now = now_ms()
        reaped: list[str] = []
        for session_id, response_id in await self.store.expired_leases(now):
            if (session_id, response_id) in self.running:
                continue  # ours and alive; renewal is merely late
            body = encode(interrupted_event(response_id))
            entry = await self.store.finish(
                session_id, response_id, body=body, finish_reason="interrupted", expired_before=now
            )
            if entry is not None:
                reaped.append(response_id)
                for cb in self.on_reaped:
                    cb(session_id, response_id)
        if reaped:  # one line per pass: after an outage longer than the lease there may be hundreds
            log.warning(
                "ended %d response(s) as interrupted: their instance stopped renewing the lease",
                len(reaped),
                extra={"fields": {"response_ids": reaped[:10]}},
            )
        return len(reaped)


def interrupted_event(response_id: str) -> ResponseCompleted:
    """The terminal event for a response whose generating process is gone."""
    return ResponseCompleted(
        response_id=response_id,
        finish_reason="interrupted",
        error=ErrorInfo(
            code=ErrorCode.UPSTREAM_UNAVAILABLE,
            message=INTERRUPTED_MESSAGE,
            retryable=True,
        ),
    )


def tool_timeout_event(timeout_ms: int) -> ResponseCompleted:
    """The end of a continuation whose tool results did not arrive in time (``"response_id":""``:
    the store names the continuation)."""
    return ResponseCompleted(
        response_id="",
        finish_reason="error",
        error=ErrorInfo(
            code=ErrorCode.TOOL_TIMEOUT,
            message=f"no tool results within {timeout_ms / 1000:g} s; the calls are closed",
            retryable=False,
        ),
    )


def cancelled_wait_event() -> ResponseCompleted:
    """The end of a continuation whose wait for tool results was cancelled (the store names it)."""
    return ResponseCompleted(response_id="", finish_reason="cancelled")
