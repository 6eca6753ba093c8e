"""The settings of one load run (what the CLI parses, what the JSON report repeats)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

#: The client tool a ``--tool-calls`` turn declares (the echo model calls it with a minimal instance).
TOOL: dict[str, Any] = {
    "name": "lookup",
    "description": "Look something up (the load client answers at once).",
    "parameters": {
        "type": "object",
        "properties": {"q": {"type": "string", "maxLength": 40}},
        "required": ["q"],
    },
}
#: What the load client answers each call with.
TOOL_OUTPUT = "ok"


@dataclass
class LoadConfig:
    url: str = "ws://127.0.0.1:8000/v1/ws"
    #: more instances of the same deployment: sessions are spread over ``url`` and these
    also_urls: list[str] = field(default_factory=list)
    transport: str = "ws"  # "ws", or "sse": POST .../messages answered as SSE (loadtest/sse.py)
    resume_elsewhere: bool = False  # reconnect to the next instance after a drop (cross-instance resume)
    sessions: int = 10  # concurrent sessions (the final count in step mode)
    turns: int = 3  # turns per session; 0 = idle connections held for ``hold_s``
    ramp_s: float = 0.0  # spread session starts evenly over this many seconds
    duration_s: float = 300.0  # no new turn starts after this; everything stops by duration + grace
    grace_s: float = 30.0  # how long running turns may finish after ``duration_s``
    turn_timeout_s: float = 60.0  # a turn not completed by then is an error ("timeout")
    think_s: float = 0.0  # pause between a response's end and the next turn
    hold_s: float = 0.0  # idle mode: keep every connection open this long once all are connected
    #: every session's turn k leaves at the same moment, once all sessions finished turn k-1
    burst: bool = False
    connect_concurrency: int = 200  # handshakes in flight at once
    connect_timeout_s: float = 10.0
    content: str = "Tell me about turn {turn}: the quick brown fox jumps over the lazy dog."
    token: str | None = None  # JWT for servers with auth on
    tenant: str | None = None  # hello.metadata.tenant_id (auth off)
    tool_calls: bool = False  # each turn declares TOOL with tool_choice "required" and answers its call
    # chaos
    chaos: float = 0.0  # probability that a response is dropped at some point
    chaos_at: int | None = None  # drop after this many tokens (None: a random point)
    reply_tokens: int = 60  # expected reply length (server echo setting): spreads random drop points
    reconnect_delay_s: float = 0.5
    max_resumes: int = 20  # per session, before it is given up as failed
    # expectations and checks
    server_tokens_per_second: float = 0.0  # the server's echo pace, if known: enables schedule lag
    text_check: bool = True  # compare replies of identical conversations (echo is deterministic)
    # step mode (capacity search): add sessions until a latency p99 passes a threshold
    step_sessions: int = 0  # sessions added per step (0: no step mode)
    step_s: float = 5.0
    until_p99_ms: float = 50.0
    step_metric: str = "auto"  # "delivery", "schedule_lag", "gap" or "auto"
    # measurement of the target (same host only)
    server_pids: list[int] = field(default_factory=list)
    redis_url: str | None = None  # read INFO commandstats before and after
    # presentation
    progress: bool = True
    seed: int = 1

    @property
    def urls(self) -> list[str]:
        return [self.url, *self.also_urls]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["token"]:
            d["token"] = "***"
        return d
