"""Figures a load run collects: bounded-memory histograms, samples for plots, counters.

Everything here is mergeable (``merge``) and serialisable (``to_dict``), so a run
split over several client processes reports one set of figures.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

#: Relative bucket width of ``Histogram`` (1 %): percentiles are exact to within it.
_GROWTH = 1.01
_LOG_GROWTH = math.log(_GROWTH)
#: Values below this (in ms) share the zero bucket: a 1 µs resolution is plenty for a network.
_FLOOR_MS = 0.001
PERCENTILES = (50, 90, 95, 99, 99.9)
#: Width of the throughput-over-time bins (seconds).
BIN_S = 0.1


class Histogram:
    """A log-bucketed histogram of millisecond values: O(1) record, bounded memory, mergeable."""

    __slots__ = ("buckets", "count", "max", "min", "total", "zeros")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.zeros = 0
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = -math.inf

    def record(self, value_ms: float) -> None:
        self.count += 1
        self.total += value_ms
        if value_ms < self.min:
            self.min = value_ms
        if value_ms > self.max:
            self.max = value_ms
        if value_ms < _FLOOR_MS:
            self.zeros += 1
            return
        i = int(math.log(value_ms / _FLOOR_MS) / _LOG_GROWTH)
        b = self.buckets
        b[i] = b.get(i, 0) + 1

    def merge(self, other: Histogram) -> None:
        for i, n in other.buckets.items():
            self.buckets[i] = self.buckets.get(i, 0) + n
        self.zeros += other.zeros
        self.count += other.count
        self.total += other.total
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    def percentile(self, p: float) -> float | None:
        if not self.count:
            return None
        rank = max(1, math.ceil(self.count * p / 100))
        if rank <= self.zeros:
            return 0.0
        seen = self.zeros
        for i in sorted(self.buckets):
            seen += self.buckets[i]
            if seen >= rank:
                # the bucket's geometric middle, clamped to what was actually seen
                mid = _FLOOR_MS * _GROWTH ** (i + 0.5)
                return min(max(mid, self.min), self.max)
        return self.max

    def summary(self) -> dict[str, Any]:
        if not self.count:
            return {"count": 0}
        out: dict[str, Any] = {
            "count": self.count,
            "min": round(self.min, 3),
            "mean": round(self.total / self.count, 3),
            "max": round(self.max, 3),
        }
        for p in PERCENTILES:
            out[f"p{p:g}".replace(".", "_")] = round(self.percentile(p) or 0.0, 3)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "buckets": self.buckets,
            "zeros": self.zeros,
            "count": self.count,
            "total": self.total,
            "min": self.min if self.count else None,
            "max": self.max if self.count else None,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Histogram:
        h = cls()
        h.buckets = {int(k): v for k, v in d["buckets"].items()}
        h.zeros, h.count, h.total = d["zeros"], d["count"], d["total"]
        h.min = d["min"] if d["min"] is not None else math.inf
        h.max = d["max"] if d["max"] is not None else -math.inf
        return h

    def edges_and_counts(self) -> tuple[list[float], list[int]]:
        """Bucket lower edges (ms) and counts, for plotting."""
        idx = sorted(self.buckets)
        return [_FLOOR_MS * _GROWTH**i for i in idx], [self.buckets[i] for i in idx]


class Reservoir:
    """A uniform sample of at most ``size`` (time, value) points (Vitter's algorithm R), for plots."""

    __slots__ = ("points", "rng", "seen", "size")

    def __init__(self, size: int = 20_000, seed: int = 0) -> None:
        self.size = size
        self.points: list[tuple[float, float]] = []
        self.seen = 0
        self.rng = random.Random(seed)

    def add(self, t: float, value: float) -> None:
        self.seen += 1
        if len(self.points) < self.size:
            self.points.append((t, value))
        else:
            j = self.rng.randrange(self.seen)
            if j < self.size:
                self.points[j] = (t, value)

    def merge(self, other: Reservoir) -> None:
        for t, v in other.points:
            self.add(t, v)


#: The latency figures a run records, all in milliseconds.
METRICS = (
    "ttft",  # message.send -> first token of its response
    "server_ttft",  # the server's own ttft_ms in response.completed (its share of ttft)
    "gap",  # between consecutive tokens of one response (0 for tokens that shared a frame)
    "delivery",  # server append (event "ts") -> client receive; needs server timestamps
    "schedule_lag",  # lateness of each token against a paced stream's schedule
    "resume",  # reconnect started -> caught up with the log head at session.ready
    "connect",  # TCP connect + upgrade + hello -> session.ready
    "turn",  # message.send -> response.completed
    "tool_round_trip",  # --tool-calls: tool.result sent -> the continuation's response.started
)


@dataclass
class Stats:
    """Everything one client process measured."""

    hist: dict[str, Histogram] = field(default_factory=lambda: {m: Histogram() for m in METRICS})
    samples: dict[str, Reservoir] = field(
        default_factory=lambda: {m: Reservoir(seed=i) for i, m in enumerate(METRICS)}
    )
    counts: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)  # server ``error`` events, by code
    failures: Counter[str] = field(default_factory=Counter)  # why sessions ended early (client side)
    #: tokens received per ``BIN_S`` since the run's start (throughput over time)
    tokens_per_bin: list[int] = field(default_factory=list)

    def count_tokens_at(self, t_rel: float, n: int) -> None:
        sec = int(t_rel / BIN_S)
        tps = self.tokens_per_bin
        if sec >= len(tps):
            tps.extend([0] * (sec + 1 - len(tps)))
        tps[sec] += n

    def observe(self, metric: str, t_rel: float, value_ms: float) -> None:
        self.hist[metric].record(value_ms)
        self.samples[metric].add(t_rel, value_ms)

    def merge(self, other: Stats) -> None:
        for m in METRICS:
            self.hist[m].merge(other.hist[m])
            self.samples[m].merge(other.samples[m])
        self.counts.update(other.counts)
        self.errors.update(other.errors)
        self.failures.update(other.failures)
        for i, n in enumerate(other.tokens_per_bin):
            self.count_tokens_at((i + 0.5) * BIN_S, n)

    def to_dict(self) -> dict[str, Any]:
        """Everything, losslessly (for handing over between processes)."""
        return {
            "hist": {m: h.to_dict() for m, h in self.hist.items()},
            "samples": {m: r.points for m, r in self.samples.items()},
            "counts": dict(self.counts),
            "errors": dict(self.errors),
            "failures": dict(self.failures),
            "tokens_per_bin": self.tokens_per_bin,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Stats:
        s = cls()
        s.hist = {m: Histogram.from_dict(h) for m, h in d["hist"].items()}
        for m, pts in d["samples"].items():
            for t, v in pts:
                s.samples[m].add(t, v)
        s.counts = Counter(d["counts"])
        s.errors = Counter(d["errors"])
        s.failures = Counter(d.get("failures", {}))
        s.tokens_per_bin = list(d["tokens_per_bin"])
        return s
