"""Jobs: any turn of a session as the HTTP patterns see it (queued, running, finished, with its result),
read from the session's log, and the webhooks armed when one ends.

A job is not stored anywhere of its own: it is ``TurnFold`` (``protocol/http.py``) over the log from the
turn's ``message.accepted``, so every instance answers a poll the same way. Where a turn starts is
remembered per process (``remember``) to skip the scan of older events; without a hint (another
instance, a restart) the log is read from its first retained event. A turn whose events were
trimmed from the log is rebuilt from the session's history (text and finish reason only).

Webhooks (``server/webhooks.py``) are armed here when a job ends: by the generation's
``on_finish`` on the instance that ran it, by the reaper's ``on_reaped`` for one whose process
died, and, for a delivery registered after its turn already ended, at registration.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import OrderedDict

from parley.protocol.http import Job, JobStatus, ResponseResult, TurnFold
from parley.protocol.messages import Usage
from parley.sessions import SessionStore
from parley.sessions.keys import REPLAY_CHUNK

from .generation import Generation
from .webhooks import Webhooks

log = logging.getLogger("parley.jobs")

#: Turn starts remembered per process (response id -> the seq of its message.accepted).
REMEMBERED_STARTS = 10_000


class Jobs:
    """One per process: finds a turn in its session's log, folds it into a ``Job``, arms webhooks."""

    def __init__(self, store: SessionStore, webhooks: Webhooks | None = None) -> None:
        self.store = store
        self.webhooks = webhooks
        self._starts: OrderedDict[str, int] = OrderedDict()
        self._hooked: set[tuple[str, str]] = set()  # jobs of this process with a webhook to arm
        self._tasks: set[asyncio.Task[None]] = set()

    def remember(self, response_id: str, first_seq: int) -> None:
        self._starts[response_id] = first_seq
        self._starts.move_to_end(response_id)
        while len(self._starts) > REMEMBERED_STARTS:
            self._starts.popitem(last=False)

    # ------------------------------------------------------------ reading

    async def locate(self, session_id: str, after: int, client_msg_id: str) -> tuple[str, int] | None:
        """The turn ``client_msg_id`` opened after seq ``after``: (response_id, seq of its
        message.accepted), or None when the log holds no such turn."""
        accepted: int | None = None
        while True:
            chunk = await self.store.read(session_id, after, REPLAY_CHUNK)
            for entry in chunk:
                if accepted is not None and entry.seq == accepted + 1:
                    started = json.loads(entry.data)
                    if started.get("type") == "response.started":
                        self.remember(started["response_id"], accepted)
                        return str(started["response_id"]), accepted
                    accepted = None
                if '"message.accepted"' in entry.data:
                    event = json.loads(entry.data)
                    if (
                        event.get("type") == "message.accepted"
                        and event.get("client_msg_id") == client_msg_id
                    ):
                        accepted = entry.seq
            if len(chunk) < REPLAY_CHUNK:
                return None
            after = chunk[-1].seq

    async def _scan(self, session_id: str, response_id: str, after: int) -> TurnFold:
        """``TurnFold`` over the log after ``after``, up to the turn's terminal event or the log's end."""
        fold = TurnFold(response_id)
        while True:
            chunk = await self.store.read(session_id, after, REPLAY_CHUNK)
            for entry in chunk:
                if fold.feed(entry.data):
                    return fold
            if len(chunk) < REPLAY_CHUNK:
                return fold
            after = chunk[-1].seq

    async def fold(self, session_id: str, response_id: str) -> Job | None:
        """The job of ``response_id`` as the log tells it; None when the session has no such turn."""
        start = self._starts.get(response_id)
        fold = await self._scan(session_id, response_id, start - 1) if start else None
        if fold is None or fold.first_seq is None:  # no hint, or a wrong one: from the first event kept
            fold = await self._scan(session_id, response_id, 0)
        if fold.first_seq is not None:
            self.remember(response_id, fold.first_seq)
            return fold.job(session_id)
        # the turn's start was trimmed from the log (or it never was): the history keeps its text
        return await self._from_history(session_id, response_id) or (
            fold.job(session_id) if fold.status is not JobStatus.QUEUED else None
        )

    async def _from_history(self, session_id: str, response_id: str) -> Job | None:
        """A turn trimmed from the log: what the snapshot keeps of it (text, finish reason)."""
        snap = await self.store.snapshot(session_id)
        if snap.in_flight is not None and snap.in_flight.get("id") == response_id:
            return Job(session_id=session_id, response_id=response_id, status=JobStatus.RUNNING)
        for turn in snap.turns:
            if turn.get("role") == "assistant" and turn.get("id") == response_id:
                reason = str(turn.get("finish_reason") or "stop")
                result = ResponseResult(
                    response_id=response_id,
                    text=str(turn.get("content", "")),
                    finish_reason=reason,  # type: ignore[arg-type]
                    usage=Usage(input_tokens=0, output_tokens=0),
                    trace_id="",
                    first_seq=0,
                    last_seq=0,
                )
                return Job(
                    session_id=session_id,
                    response_id=response_id,
                    status=JobStatus.of_finish(reason),
                    result=result,
                )
        return None

    async def lookup(self, session_id: str, response_id: str) -> Job | None:
        """The webhook worker's view: the job, or None once the session (or the turn) is gone."""
        if await self.store.get_session(session_id) is None:
            return None
        return await self.fold(session_id, response_id)

    async def poll(self, session_id: str, response_id: str) -> Job | None:
        """``GET .../responses/{rid}``: the job with its webhook's delivery state."""
        job = await self.fold(session_id, response_id)
        if job is not None and self.webhooks is not None and self.webhooks.signer is not None:
            job.webhook = await self.webhooks.status(response_id)
        return job

    # ------------------------------------------------------------ webhooks

    async def hook(self, session_id: str, response_id: str, url: str) -> None:
        """Register the job's webhook; a job that ended already is armed at once."""
        assert self.webhooks is not None
        await self.webhooks.register(session_id, response_id, url)
        self._hooked.add((session_id, response_id))  # before the look: a later finish arms it
        job = await self.fold(session_id, response_id)
        if job is not None and job.status.terminal:
            self._hooked.discard((session_id, response_id))
            await self.webhooks.job_finished(job)

    def on_finish(self, gen: Generation, finish_reason: str) -> None:
        """``Generations.on_finish``: a job of this process with a webhook ended; arm its delivery."""
        key = (gen.session_id, gen.response_id)
        if key in self._hooked:
            self._hooked.discard(key)
            self._later(*key)

    def on_reaped(self, session_id: str, response_id: str) -> None:
        """``Generations.on_reaped``: a dead process's job ended as interrupted; arm its delivery if any."""
        if self.webhooks is not None and self.webhooks.enabled:
            self._later(session_id, response_id)

    def _later(self, session_id: str, response_id: str) -> None:
        task = asyncio.get_running_loop().create_task(self._arm(session_id, response_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _arm(self, session_id: str, response_id: str) -> None:
        """Arm from the log (the worker's re-check arms it later if this fails: nothing is lost)."""
        assert self.webhooks is not None
        try:
            job = await self.fold(session_id, response_id)
            if job is not None and job.status.terminal:
                await self.webhooks.job_finished(job)
        except Exception as exc:
            log.warning("could not arm the webhook of %s now (%s); the re-check will", response_id, exc)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
