"""Feedback export for evaluation pipelines: ``GET /v1/feedback`` and ``parley feedback export``.

One record per rated response (the last rating wins), from every session the
store lists as active since ``since``. Conversation text is left out unless
asked for (``include_text``): feedback rows are often copied far and wide.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from parley.sessions import SessionStore

PAGE = 500  # session ids read from the index per store call
MAX_LIMIT = 100_000

_RELATIVE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def parse_since(value: str | None, now_ms: int | None = None) -> int:
    """Epoch ms from ``1700000000000`` (ms), ``24h`` / ``7d`` (ago), or ISO 8601 (``2025-01-31T12:00Z``)."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if value is None or value == "":
        return 0
    value = value.strip()
    if value.isdigit():
        return int(value)
    rel = _RELATIVE.match(value)
    if rel:
        return now - int(rel.group(1)) * _UNIT_MS[rel.group(2)]
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"cannot read {value!r} as a time: use epoch ms, 24h/7d, or ISO 8601") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def export_feedback(
    store: SessionStore,
    since_ms: int,
    *,
    until_ms: int | None = None,
    include_text: bool = False,
    limit: int = MAX_LIMIT,
) -> AsyncIterator[dict[str, Any]]:
    """Feedback records rated in ``[since_ms, until_ms)``, session by session."""
    emitted = 0
    offset = 0
    while emitted < limit:
        ids = await store.list_sessions(since_ms, offset=offset, limit=PAGE)
        offset += len(ids)
        for sid in ids:
            rec = await store.get_session(sid)
            if rec is None:
                continue
            rated = await store.feedback(sid)
            rows = sorted(
                (
                    (rid, fb)
                    for rid, fb in rated.items()
                    if since_ms <= int(fb.get("ts", 0))
                    and (until_ms is None or int(fb.get("ts", 0)) < until_ms)
                ),
                key=lambda item: int(item[1].get("ts", 0)),
            )
            if not rows:
                continue
            turns = await store.history(sid) if include_text else []
            for rid, fb in rows:
                ts = int(fb.get("ts", 0))
                row: dict[str, Any] = {
                    "session_id": sid,
                    "tenant": rec.tenant,
                    "user": rec.user,
                    "response_id": rid,
                    "rating": fb.get("rating"),
                    "comment": fb.get("comment"),
                    "tags": fb.get("tags") or [],
                    "ts": ts,
                    "time": iso(ts),
                }
                if include_text:
                    row.update(_texts(turns, rid))
                yield row
                emitted += 1
                if emitted >= limit:
                    return
        if len(ids) < PAGE:
            return


def _texts(turns: list[dict[str, Any]], response_id: str) -> dict[str, Any]:
    """The rated reply and the user turn it answered, if the history still holds them."""
    for i, turn in enumerate(turns):
        if turn.get("role") == "assistant" and turn.get("id") == response_id:
            prompt = next((t["content"] for t in reversed(turns[:i]) if t.get("role") == "user"), None)
            return {
                "prompt": prompt,
                "response": turn.get("content"),
                "finish_reason": turn.get("finish_reason"),
            }
    return {"prompt": None, "response": None, "finish_reason": None}
