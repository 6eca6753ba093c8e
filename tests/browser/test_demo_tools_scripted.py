"""The demo's tool UI in real Chromium against a scripted WebSocket peer (Playwright's route_web_socket):
the page's own rendering of calls, the approval card across a reload, reasoning, the continuation.

The real server's side of the same flow is tests/browser/test_demo_tools.py; this one pins the
page against the protocol as documented, with a peer that says exactly what the wire says.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from playwright.sync_api import Page, WebSocketRoute, expect

from .harness import Parley
from .test_demo import replies, say

pytestmark = pytest.mark.browser


class ScriptedSession:
    """One session's log, served to every socket the page opens (a resume replays from its last_seq)."""

    def __init__(self) -> None:
        self.log: list[dict[str, Any]] = []
        self.hellos: list[dict[str, Any]] = []
        self.results: list[dict[str, Any]] = []

    def __call__(self, ws: WebSocketRoute) -> None:
        def emit(**event: Any) -> None:
            logged = {"seq": len(self.log) + 1, **event}
            self.log.append(logged)
            ws.send(json.dumps(logged))

        def on_message(raw: str | bytes) -> None:
            frame = json.loads(raw)
            if frame["type"] == "hello":
                self.hellos.append(frame)
                ready = {"type": "session.ready", "session_id": "s1", "resume_token": "r1"}
                resumed = "session_id" in frame
                ready.update(protocol="parley.v1", heartbeat_interval_ms=15000, resumed=resumed)
                ready.update(recovered=True, last_seq=len(self.log))
                ws.send(json.dumps(ready))
                for event in self.log[frame.get("last_seq", 0) :]:
                    ws.send(json.dumps(event))
            elif frame["type"] == "message.send":
                cid = frame["client_msg_id"]
                emit(type="message.accepted", client_msg_id=cid, message_id="m1", content="x")
                emit(type="response.started", response_id="r1", in_reply_to="m1", profile="p@1", trace_id="t")
                emit(type="response.reasoning.delta", response_id="r1", text="The user wants it dark.")
                call = {"response_id": "r1", "call_id": "c1", "name": "set_theme"}
                emit(type="response.tool_call.delta", **call, arguments_delta='{"theme":')
                emit(type="response.tool_call.delta", **call, arguments_delta='"dark"}')
                emit(type="response.tool_call", **call, arguments={"theme": "dark"}, server=False)
                emit(type="response.completed", response_id="r1", finish_reason="tool_calls", usage={})
            elif frame["type"] == "tool.result":
                self.results.append(frame)
                result = {"output": frame["output"], "is_error": frame.get("is_error", False)}
                emit(type="tool.result.accepted", response_id="r1", call_id=frame["call_id"], **result)
                started = {"in_reply_to": "m1", "profile": "p@1", "trace_id": "t2", "continues": "r1"}
                emit(type="response.started", response_id="r2", **started)
                emit(type="response.delta", response_id="r2", text="Switched to dark.")
                emit(type="response.completed", response_id="r2", finish_reason="stop", usage={})

        ws.on_message(on_message)


def test_the_card_survives_a_reload_and_allow_switches_the_theme(page: Page, parley: Parley) -> None:
    """hello declares set_theme; the card shows with collapsed reasoning, comes back after a reload, and
    Allow runs the tool once: the page turns dark, the result is shown, the continuation follows."""
    session = ScriptedSession()
    page.route_web_socket("**/v1/ws", session)
    page.goto(f"{parley.http}/")
    say(page, '/tool set_theme {"theme": "dark"}')
    card = page.get_by_test_id("tool-call").last
    expect(card).to_have_attribute("data-state", "approval")
    expect(card.get_by_test_id("tool-allow")).to_be_enabled()
    (declared,) = session.hellos[0]["tools"]
    assert declared["name"] == "set_theme" and declared["parameters"]["required"] == ["theme"]
    reasoning = replies(page).first.get_by_test_id("reasoning")
    expect(reasoning).to_be_visible()
    assert reasoning.get_attribute("open") is None, "collapsed"

    page.reload()
    card = page.get_by_test_id("tool-call").last
    expect(card).to_have_attribute("data-state", "approval")
    expect(card.get_by_test_id("tool-allow")).to_be_enabled()
    assert page.get_by_test_id("tool-call").count() == 1
    assert session.hellos[-1]["last_seq"] == len(session.log), "resumed from the stored seq"
    assert page.evaluate("document.documentElement.dataset.theme ?? null") is None

    card.get_by_test_id("tool-allow").click()
    expect(card).to_have_attribute("data-state", "done")
    expect(card.get_by_test_id("tool-result")).to_have_text('{"theme":"dark"}')
    expect(replies(page).last).to_have_attribute("data-state", "done")
    expect(replies(page).last.get_by_test_id("message-text")).to_have_text("Switched to dark.")
    assert page.evaluate("document.documentElement.dataset.theme") == "dark"
    assert session.results == [{"type": "tool.result", "call_id": "c1", "output": {"theme": "dark"}}]


def test_deny_answers_with_the_refusal_and_keeps_the_theme(page: Page, parley: Parley) -> None:
    """Deny sends is_error 'denied by the user', the card says Denied, and the page keeps its theme."""
    session = ScriptedSession()
    page.route_web_socket("**/v1/ws", session)
    page.goto(f"{parley.http}/")
    say(page, '/tool set_theme {"theme": "dark"}')
    card = page.get_by_test_id("tool-call").last
    expect(card.get_by_test_id("tool-deny")).to_be_enabled()
    card.get_by_test_id("tool-deny").click()
    expect(card.get_by_test_id("tool-status")).to_have_text("Denied")
    expect(replies(page).last).to_have_attribute("data-state", "done")
    assert session.results == [
        {"type": "tool.result", "call_id": "c1", "output": "denied by the user", "is_error": True}
    ]
    assert page.evaluate("document.documentElement.dataset.theme ?? null") is None
