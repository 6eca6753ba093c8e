"""One simulated user: connect, take turns, verify every event, drop and resume in chaos mode.

Event handling runs synchronously in the transport's callback (``_on_text``): no
task and no queue per event. The coroutine ``run`` only waits for turn
boundaries. Integrity is checked on every logged event:

* ``seq`` must be exactly the previous one plus one, from the session's first
  event to the last ``response.completed``; a lower seq the client already has is
  a *duplicate* (dropped, as ``client.ParleyClient`` does), a higher one opens a
  gap whose seqs are *lost* unless they arrive later (then *out of order*);
* the tokens counted in a response's deltas must equal its ``usage.output_tokens``;
* replies of identical conversations must be identical (the echo model is
  deterministic), so a reply rebuilt across drops and resumes is compared with an
  uninterrupted one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from parley.protocol import PROTOCOL_VERSION
from parley.protocol.errors import FATAL_CLOSE_CODES

from .config import TOOL, TOOL_OUTPUT, LoadConfig
from .stats import Histogram, Stats
from .wire import HandshakeError, WireProtocol, open_ws

PROTOCOL = PROTOCOL_VERSION


class SessionFailed(Exception):
    """The session cannot go on (``code`` is counted under errors)."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass
class RunContext:
    """What all sessions of one client process share."""

    config: LoadConfig
    stats: Stats = field(default_factory=Stats)
    t0: float = field(default_factory=time.perf_counter)
    #: turn index -> the first clean reply seen for it (identical conversations, identical replies)
    references: dict[int, str] = field(default_factory=dict)
    #: step mode: latency histograms of the current step, by metric ("delivery", "schedule_lag", "gap")
    windows: dict[str, Histogram] | None = None
    stop_turns_at: float = float("inf")  # perf_counter time after which no turn starts
    connect_gate: asyncio.Semaphore | None = None
    first_send: float | None = None
    last_done: float | None = None
    #: idle mode: set once ``expect_settled`` sessions connected or failed to
    all_settled: asyncio.Event = field(default_factory=asyncio.Event)
    expect_settled: int = 0
    settled: int = 0
    #: burst mode: the gate every session's turns pass through together
    burst: BurstGate | None = None

    def settle(self) -> None:
        self.settled += 1
        if self.settled >= self.expect_settled:
            self.all_settled.set()


class BurstGate:
    """Burst mode: turn k of every session leaves at the same moment, once all have finished turn k-1.

    Sessions ``arrive`` and wait; the runner sees ``all_arrived``, reads the server's CPU and
    ``open``s the gate (every waiting session sends in the same client loop turn), then waits
    for ``all_first``: every released turn got its first token (or failed).
    """

    def __init__(self, sessions: int) -> None:
        self.live = sessions  # sessions still taking part (a failed one leaves)
        self.arrived = 0
        self.all_arrived = asyncio.Event()
        self.all_first = asyncio.Event()
        self.expect_first = 0
        self.firsts = 0
        self._release: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def _check(self) -> None:
        if self.arrived >= self.live:
            self.all_arrived.set()

    async def arrive(self) -> None:
        release = self._release
        self.arrived += 1
        self._check()
        await release

    def leave(self) -> None:
        self.live -= 1
        self._check()

    def open(self) -> int:
        """Release every waiting session; returns how many turns start now."""
        n, self.arrived = self.arrived, 0
        self.all_arrived.clear()
        self.expect_first, self.firsts = n, 0
        self.all_first.clear()
        release, self._release = self._release, asyncio.get_running_loop().create_future()
        release.set_result(None)
        return n

    def first(self) -> None:
        """A released turn got its first token, or ended without one."""
        self.firsts += 1
        if self.firsts >= self.expect_first:
            self.all_first.set()


class LoadSession:
    def __init__(self, ctx: RunContext, index: int) -> None:
        self.ctx = ctx
        self.cfg = ctx.config
        self.stats = ctx.stats
        self.index = index
        ctx.stats.counts["sessions_started"] += 1
        self.rng = random.Random(ctx.config.seed * 1_000_003 + index)
        self.proto: WireProtocol | None = None
        urls = ctx.config.urls
        self.url_index = index % len(urls)
        self._conn_no = 0
        self.session_id: str | None = None
        self.resume_token: str | None = None
        self.last_seq = 0
        self.missing: set[int] = set()
        self._ready: asyncio.Future[dict[str, Any]] | None = None
        self._closed: asyncio.Future[int] | None = None
        self._done: asyncio.Future[dict[str, Any]] | None = None
        self.resumes = 0
        self._live = False
        self.clean_history = True
        # resume measurement
        self._resume_start: float | None = None
        self._catch_up_to = 0
        self._just_resumed = False  # the next gap spans a reconnect: not a streaming gap
        # the current turn
        self.turn = -1
        self.cid = ""
        self.accepted = False
        self.message_id: str | None = None
        self.response_id: str | None = None
        self.sent_at = 0.0
        self.tokens = 0
        self.token_base = 0  # tokens a snapshot handed over (not counted from deltas)
        self.parts: list[str] = []
        self.first_at: float | None = None
        self.prev_at = 0.0
        self.disrupted = False  # a drop/resume happened during this response
        self.rebuilt = False  # a snapshot replaced part of this response
        self.drop_at: int | None = None
        self._dropping = False
        self.arrivals: list[tuple[int, float]] = []  # (token index, perf time) for schedule lag
        self.tool_sent_at: float | None = None  # --tool-calls: when this turn's tool.result went out

    # ------------------------------------------------------------------ events

    def _on_text(self, payload: bytes, wall: float, mono: float) -> None:
        ev = json.loads(payload)
        st = self.stats
        counts = st.counts
        counts["events"] += 1
        seq = ev.get("seq")
        if seq is not None:
            last = self.last_seq
            if seq != last + 1:
                if seq <= last:
                    if seq in self.missing:
                        self.missing.discard(seq)
                        counts["out_of_order"] += 1
                    else:
                        counts["duplicated"] += 1
                        return
                else:
                    self.missing.update(range(last + 1, seq))
                    self.last_seq = seq
            else:
                self.last_seq = seq
        kind = ev.get("type")
        if kind == "response.delta":
            self._delta(ev, seq, wall, mono)
        elif kind == "heartbeat":
            counts["heartbeats"] += 1
        elif kind == "response.started":
            continues = ev.get("continues")
            if continues is not None and continues == self.response_id:  # after the tool's result
                self.response_id = ev["response_id"]
                if self.tool_sent_at is not None:
                    st.observe("tool_round_trip", mono - self.ctx.t0, (mono - self.tool_sent_at) * 1000)
                    self.tool_sent_at = None
            elif self.message_id is not None and ev.get("in_reply_to") == self.message_id:
                self.response_id = ev["response_id"]
                if self.drop_at == 0:
                    self._drop()
        elif kind == "response.tool_call":
            if ev.get("response_id") == self.response_id and self.proto is not None:
                counts["tool_calls"] += 1
                self.tool_sent_at = time.perf_counter()
                answer = {"type": "tool.result", "call_id": ev["call_id"], "output": TOOL_OUTPUT}
                self.proto.send_text(json.dumps(answer))
        elif kind == "message.accepted":
            if ev.get("client_msg_id") == self.cid:
                self.accepted = True
                self.message_id = ev.get("message_id")
        elif kind == "response.completed":
            if ev.get("response_id") == self.response_id:
                self._completed(ev, mono)
        elif kind == "session.ready":
            if self._resume_start is not None:  # caught up once we hold what the log held at ready
                self._catch_up_to = int(ev.get("last_seq") or 0)
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(ev)
        elif kind == "message.duplicate":
            if ev.get("client_msg_id") == self.cid:
                self.accepted = True
                self.message_id = ev.get("message_id")
                self.response_id = ev.get("response_id", self.response_id)
        elif kind == "session.snapshot":
            self._snapshot(ev)
        elif kind == "error":
            self._error(ev)
        if self._resume_start is not None and self.last_seq >= self._catch_up_to:
            self._caught_up(mono)

    def _delta(self, ev: dict[str, Any], seq: int | None, wall: float, mono: float) -> None:
        if ev.get("response_id") != self.response_id:
            return
        text = ev["text"]
        n = text.count(" ")
        if not n:
            self.parts.append(text)
            return
        st = self.stats
        ctx = self.ctx
        t_rel = mono - ctx.t0
        st.counts["tokens"] += n
        st.counts["frames"] += 1
        st.count_tokens_at(t_rel, n)
        self.parts.append(text)
        index = self.tokens
        self.tokens += n
        replay = self._resume_start is not None and seq is not None and seq <= self._catch_up_to
        windows = ctx.windows
        if self.first_at is None:
            self.first_at = mono
            if not self.disrupted:
                st.observe("ttft", t_rel, (mono - self.sent_at) * 1000)
            if ctx.burst is not None:
                ctx.burst.first()
        elif not replay and not self._just_resumed:
            gap = (mono - self.prev_at) * 1000
            st.observe("gap", t_rel, gap)
            if windows is not None:
                windows["gap"].record(gap)
        self._just_resumed = False
        if n > 1:  # tokens that shared a frame arrived together: gaps of zero
            h = st.hist["gap"]
            h.zeros += n - 1
            h.count += n - 1
            h.min = 0.0
        self.prev_at = mono
        ts = ev.get("ts")
        if ts is not None and not replay:
            lat = wall * 1000 - ts
            st.observe("delivery", t_rel, lat)
            if windows is not None:
                windows["delivery"].record(lat)
        if self.cfg.server_tokens_per_second and not self.disrupted:
            self.arrivals.append((index, mono))
        if self.drop_at and self.tokens >= self.drop_at and not self.disrupted:
            self._drop()

    def _completed(self, ev: dict[str, Any], mono: float) -> None:
        st = self.stats
        counts = st.counts
        reason = ev.get("finish_reason", "?")
        counts[f"finish:{reason}"] += 1
        if reason == "tool_calls":  # the turn goes on in the continuation, once the result is in
            return
        usage = ev.get("usage") or {}
        expected = usage.get("output_tokens")
        received = self.tokens + self.token_base
        if expected is not None and expected != received and not self.rebuilt:
            counts["token_mismatch"] += 1
            counts["tokens_missing"] += max(expected - received, 0)
        t_rel = mono - self.ctx.t0
        st.observe("turn", t_rel, (mono - self.sent_at) * 1000)
        server_ttft = ev.get("ttft_ms")
        if isinstance(server_ttft, int | float) and not self.disrupted:
            st.observe("server_ttft", t_rel, server_ttft)
        if self.arrivals and reason == "stop":
            self._schedule_lag(t_rel)
        if reason != "stop":
            self.clean_history = False
        elif self.cfg.text_check and self.clean_history and not self.rebuilt:
            text = "".join(self.parts)
            ref = self.ctx.references.setdefault(self.turn, text)
            if ref != text:
                counts["text_mismatch"] += 1
        if self._done is not None and not self._done.done():
            self._done.set_result(ev)

    def _schedule_lag(self, t_rel: float) -> None:
        """Lateness of each token against the pace, anchored at the stream's earliest-consistent start."""
        interval = 1.0 / self.cfg.server_tokens_per_second
        anchor = min(t - i * interval for i, t in self.arrivals)
        ctx = self.ctx
        window = ctx.windows["schedule_lag"] if ctx.windows is not None else None
        for i, t in self.arrivals:
            lag = (t - i * interval - anchor) * 1000
            self.stats.observe("schedule_lag", t_rel, lag)
            if window is not None:
                window.record(lag)

    def _snapshot(self, ev: dict[str, Any]) -> None:
        """The log could not replay the gap: rebuild the current turn from the conversation."""
        self.stats.counts["snapshots"] += 1
        self.last_seq = ev["last_seq"]
        self.missing.clear()
        self.rebuilt = True
        turns = ev.get("turns") or []
        mine = [
            i for i, t in enumerate(turns) if t.get("role") == "user" and t.get("content") == self._content()
        ]
        flight = ev.get("in_flight")
        if mine:
            self.accepted = True
            after = turns[mine[-1] + 1 :]
            if after and after[0].get("role") == "assistant":  # finished while we were away
                reply = after[0]
                self.response_id = reply.get("id")
                self.parts, self.tokens = [reply.get("content", "")], 0
                self.token_base = reply.get("content", "").count(" ")
                self._completed(
                    {"response_id": self.response_id, "finish_reason": reply.get("finish_reason") or "stop"},
                    time.perf_counter(),
                )
                return
        if flight:
            self.accepted = True
            self.response_id = flight.get("id")
            self.parts, self.tokens = [flight.get("content", "")], 0
            self.token_base = flight.get("content", "").count(" ")

    def _error(self, ev: dict[str, Any]) -> None:
        code = ev.get("code", "unknown")
        self.stats.errors[code] += 1
        ref = ev.get("ref") or {}
        if ref.get("type") == "hello" and self._ready is not None and not self._ready.done():
            self._ready.set_exception(SessionFailed(f"hello:{code}"))
            self._ready.exception()
        elif ref.get("client_msg_id") == self.cid and self._done is not None and not self._done.done():
            self._done.set_exception(SessionFailed(code))

    def _caught_up(self, mono: float) -> None:
        assert self._resume_start is not None
        self.stats.observe("resume", mono - self.ctx.t0, (mono - self._resume_start) * 1000)
        self._resume_start = None
        self._just_resumed = True

    def _on_close(self, conn_no: int, code: int) -> None:
        if conn_no != self._conn_no:
            return  # a previous connection
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(code)
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(SessionFailed(f"closed:{code}"))
            self._ready.exception()  # mark retrieved: connect() may have failed before awaiting it

    def _drop(self) -> None:
        self.disrupted = True
        self._dropping = True
        self.drop_at = None
        self.stats.counts["drops"] += 1
        if self.proto is not None:
            self.proto.abort()

    # ------------------------------------------------------------------ connection

    async def connect(self, resume: bool) -> None:
        self._conn_no += 1
        conn_no = self._conn_no
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        self._closed = loop.create_future()
        gate = self.ctx.connect_gate
        if gate is not None:
            await gate.acquire()
        started = time.perf_counter()  # after the client's own gate: only the server's time counts
        if resume:
            self._resume_start = started
        try:
            if resume and self.cfg.resume_elsewhere:
                self.url_index = (self.url_index + 1) % len(self.cfg.urls)
            self.proto = await open_ws(
                self.cfg.urls[self.url_index],
                self._on_text,
                lambda code: self._on_close(conn_no, code),
                subprotocol=PROTOCOL,
                timeout=self.cfg.connect_timeout_s,
            )
            hello: dict[str, Any] = {"type": "hello", "protocol": PROTOCOL}
            if self.cfg.token:
                hello["token"] = self.cfg.token
            if self.cfg.tenant:
                hello["metadata"] = {"tenant_id": self.cfg.tenant}
            if resume:
                hello.update(
                    session_id=self.session_id, resume_token=self.resume_token, last_seq=self.last_seq
                )
            self.proto.send_text(json.dumps(hello))
            ready = await asyncio.wait_for(self._ready, self.cfg.connect_timeout_s)
        finally:
            if gate is not None:
                gate.release()
        now = time.perf_counter()
        self.session_id = ready["session_id"]
        self.resume_token = ready["resume_token"]
        if not resume:
            self.stats.observe("connect", now - self.ctx.t0, (now - started) * 1000)
            self.stats.counts["connected"] += 1
            self.stats.counts["live"] += 1
            self._live = True

    async def _resume(self, planned: bool) -> None:
        """Reconnect with hello{session_id, resume_token, last_seq}, with back-off on failure."""
        delay = self.cfg.reconnect_delay_s if planned else 0.05
        while True:
            if self.resumes >= self.cfg.max_resumes:
                raise SessionFailed("too_many_resumes")
            await asyncio.sleep(delay)
            self.resumes += 1
            self.stats.counts["resumes"] += 1
            try:
                await self.connect(resume=True)
                return
            except SessionFailed as exc:
                if exc.code.startswith("hello:") or _close_code(exc.code) in FATAL_CLOSE_CODES:
                    raise
            except (OSError, HandshakeError, TimeoutError):
                pass
            self._resume_start = None
            self.stats.counts["resume_retries"] += 1
            delay = min(max(delay, 0.05) * 2, 2.0)

    def close(self) -> None:
        if self._live:
            self._live = False
            self.stats.counts["live"] -= 1
        if self.proto is not None:
            self.proto.close()

    def abort(self) -> None:
        if self.proto is not None:
            self.proto.abort()

    # ------------------------------------------------------------------ turns

    def _content(self) -> str:
        return self.cfg.content.format(turn=self.turn + 1)

    async def take_turn(self, turn: int) -> None:
        """Send turn ``turn`` and wait for its response.completed, resuming across drops."""
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        self.turn = turn
        self.cid = f"lt-{uuid.uuid4().hex[:16]}"
        self.accepted = False
        self.message_id = None
        self.response_id = None
        self.tokens = self.token_base = 0
        self.parts = []
        self.arrivals = []
        self.first_at = None
        self.disrupted = self.rebuilt = False
        self.drop_at = None
        if cfg.chaos and self.rng.random() < cfg.chaos:
            self.drop_at = cfg.chaos_at if cfg.chaos_at is not None else self.rng.randrange(cfg.reply_tokens)
        self._done = done = loop.create_future()
        send: dict[str, Any] = {"type": "message.send", "client_msg_id": self.cid, "content": self._content()}
        if cfg.tool_calls:
            send.update(tools=[TOOL], tool_choice="required")
        message = json.dumps(send)
        self.tool_sent_at = None
        self.sent_at = time.perf_counter()
        if self.ctx.first_send is None:
            self.ctx.first_send = self.sent_at
        self.stats.counts["turns_sent"] += 1
        assert self.proto is not None
        self.proto.send_text(message)
        deadline = self.sent_at + cfg.turn_timeout_s
        while True:
            assert self._closed is not None
            closed = self._closed
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise SessionFailed("timeout")
            finished, _ = await asyncio.wait({done, closed}, timeout=remaining, return_when="FIRST_COMPLETED")
            if done in finished:
                done.result()  # raises SessionFailed for a refused turn
                self.stats.counts["turns_completed"] += 1
                self.ctx.last_done = time.perf_counter()
                return
            if closed not in finished:
                raise SessionFailed("timeout")
            code = closed.result()
            planned = self._dropping
            self._dropping = False
            if not planned:
                self.stats.counts["disconnects"] += 1
                self.disrupted = True
                if code in FATAL_CLOSE_CODES:
                    raise SessionFailed(f"closed:{code}")
            await self._resume(planned)
            if done.done():
                continue
            if not self.accepted:  # the send may have been lost with the connection: repeat it
                self.stats.counts["resends"] += 1
                self.proto.send_text(message)

    async def _open(self) -> bool:
        """The session's first connect; a failure is counted, and False returned."""
        try:
            await self.connect(resume=False)
        except (OSError, HandshakeError, TimeoutError, SessionFailed) as exc:
            self.stats.failures[_error_code(exc, "connect")] += 1
            self.stats.counts["sessions_failed"] += 1
            return False
        return True

    async def run(self, turns: int | None) -> None:
        """Connect, then take ``turns`` turns (None: until the run stops turns), then close."""
        ctx = self.ctx
        if not await self._open():
            return
        with self._accounted():
            turn = 0
            while (turns is None or turn < turns) and time.perf_counter() < ctx.stop_turns_at:
                await self.take_turn(turn)
                turn += 1
                if self.cfg.think_s:
                    await asyncio.sleep(self.cfg.think_s)

    async def run_bursts(self, turns: int) -> None:
        """Burst mode: connect, then take each turn when the gate opens for every session at once."""
        gate = self.ctx.burst
        assert gate is not None
        if not await self._open():
            gate.leave()
            return
        released = False
        with self._accounted():
            try:
                for turn in range(turns):
                    if time.perf_counter() >= self.ctx.stop_turns_at:
                        break
                    released = False
                    self.first_at = None
                    await gate.arrive()
                    released = True
                    await self.take_turn(turn)
            finally:
                if released and self.first_at is None:
                    gate.first()  # the runner must not wait for a first token that will not come
                gate.leave()

    @contextlib.contextmanager
    def _accounted(self) -> Iterator[None]:
        """Count a session however its turns end (completed, failed, cut by the deadline); then close."""
        try:
            yield
            self.stats.counts["sessions_completed"] += 1
        except SessionFailed as exc:
            self.stats.failures[exc.code] += 1
            self.stats.counts["sessions_failed"] += 1
            self.stats.counts["turns_failed"] += 1
        except asyncio.CancelledError:
            if self._done is not None and not self._done.done():
                self.stats.failures["deadline"] += 1
                self.stats.counts["turns_failed"] += 1
            raise
        finally:
            if self.missing:
                self.stats.counts["lost"] += len(self.missing)
                self.missing.clear()
            self.close()

    async def hold(self, until: asyncio.Future[None]) -> None:
        """Idle mode: connect and stay connected (answering pings, counting heartbeats) until told."""
        try:
            if not await self._open():
                return
        finally:
            self.ctx.settle()
        try:
            assert self._closed is not None
            await asyncio.wait({until, self._closed}, return_when="FIRST_COMPLETED")
            if self._closed.done():
                self.stats.failures[f"closed:{self._closed.result()}"] += 1
                self.stats.counts["sessions_failed"] += 1
            else:
                self.stats.counts["sessions_completed"] += 1
        finally:
            self.close()


def _close_code(code: str) -> int | None:
    if code.startswith("closed:"):
        try:
            return int(code.split(":", 1)[1])
        except ValueError:
            return None
    return None


def _error_code(exc: BaseException, where: str) -> str:
    if isinstance(exc, SessionFailed):
        return exc.code
    if isinstance(exc, HandshakeError):
        return f"{where}:http_{exc.status}"
    if isinstance(exc, TimeoutError):
        return f"{where}:timeout"
    return f"{where}:{type(exc).__name__}"
