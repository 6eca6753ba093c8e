"""The demo's page tool (set_theme) in real Chromium against a real ``parley serve`` (issue 17):
the approval card, Allow and Deny, a reload while the card is shown, and reasoning, collapsed.

The echo model makes the calls (``/tool set_theme {...}``; ``/think N`` for reasoning). Each
test checks the page and, as a second reader, the session's log: one result, one continuation.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Locator, Page, expect

from .harness import Parley, session_log
from .test_demo import client_state, open_demo, replies, say

pytestmark = pytest.mark.browser

DARK = '/tool set_theme {"theme": "dark"}'


def card(page: Page) -> Locator:
    return page.get_by_test_id("tool-call").last


def wait_for_card(page: Page) -> Locator:
    """The approval card of the newest call, once its Allow button can be used."""
    c = card(page)
    expect(c).to_have_attribute("data-state", "approval", timeout=15_000)
    expect(c.get_by_test_id("tool-allow")).to_be_enabled()
    return c


def theme(page: Page) -> str | None:
    value = page.evaluate("document.documentElement.dataset.theme ?? null")
    return str(value) if value is not None else None


def finished_log(page: Page, parley: Parley, continuations: int = 1) -> list[dict[str, Any]]:
    """The session's log, read by a second client, once ``continuations`` continuations completed."""
    st = client_state(page)

    def done(events: list[dict[str, Any]]) -> bool:
        ends = {e["response_id"] for e in events if e["type"] == "response.completed"}
        conts = [e["response_id"] for e in events if e["type"] == "response.started" and e.get("continues")]
        return len(conts) >= continuations and all(r in ends for r in conts)

    return session_log(parley.ws, st["sessionId"], st["resumeToken"], until=done)


def count(log: list[dict[str, Any]], kind: str, **match: Any) -> int:
    return sum(1 for e in log if e["type"] == kind and all(e.get(k) == v for k, v in match.items()))


def test_allow_runs_the_page_tool_and_the_reply_continues(page: Page, parley: Parley) -> None:
    """Allow on the approval card switches the page to dark; the card shows the result; the reply follows."""
    open_demo(page, parley.http)
    assert theme(page) is None
    say(page, DARK)
    c = wait_for_card(page)
    expect(c.get_by_test_id("tool-args")).to_have_text('{"theme":"dark"}')
    assert theme(page) is None, "nothing runs before the person allows it"
    c.get_by_test_id("tool-allow").click()
    expect(card(page)).to_have_attribute("data-state", "done")
    expect(card(page)).to_have_attribute("data-outcome", "ok")
    expect(card(page).get_by_test_id("tool-result")).to_have_text('{"theme":"dark"}')
    assert theme(page) == "dark"
    expect(replies(page).last).to_have_attribute("data-state", "done", timeout=30_000)
    expect(replies(page).last.get_by_test_id("message-text")).to_contain_text("dark")
    log = finished_log(page, parley)
    assert count(log, "response.tool_call", name="set_theme") == 1
    assert count(log, "tool.result.accepted", is_error=False) == 1
    assert sum(1 for e in log if e["type"] == "response.started" and e.get("continues")) == 1
    # a reload keeps the theme and shows the finished call with its result
    page.reload()
    expect(card(page)).to_have_attribute("data-state", "done")
    assert theme(page) == "dark"


def test_deny_sends_the_refusal_and_leaves_the_page_alone(page: Page, parley: Parley) -> None:
    """Deny on the card leaves the theme as it was; the call shows Denied; the reply still continues."""
    open_demo(page, parley.http)
    say(page, DARK)
    wait_for_card(page).get_by_test_id("tool-deny").click()
    expect(card(page)).to_have_attribute("data-outcome", "error")
    expect(card(page).get_by_test_id("tool-status")).to_have_text("Denied")
    expect(replies(page).last).to_have_attribute("data-state", "done", timeout=30_000)
    assert theme(page) is None
    log = finished_log(page, parley)
    denial = [e for e in log if e["type"] == "tool.result.accepted"]
    assert len(denial) == 1 and denial[0]["is_error"] is True and denial[0]["output"] == "denied by the user"


def test_a_reload_while_the_card_is_shown_shows_it_again_and_allow_continues_once(
    page: Page, parley: Parley
) -> None:
    """A reload with the card on screen re-renders it; Allow then runs the tool once, one continuation."""
    open_demo(page, parley.http)
    say(page, DARK)
    wait_for_card(page)
    page.reload()
    c = wait_for_card(page)
    assert page.get_by_test_id("tool-call").count() == 1
    c.get_by_test_id("tool-allow").click()
    expect(card(page)).to_have_attribute("data-state", "done")
    assert theme(page) == "dark"
    expect(replies(page).last).to_have_attribute("data-state", "done", timeout=30_000)
    log = finished_log(page, parley)
    assert count(log, "tool.result.accepted") == 1
    assert sum(1 for e in log if e["type"] == "response.started" and e.get("continues")) == 1


def test_reasoning_is_shown_collapsed_in_the_reply(
    page: Page, parley_factory: Callable[..., Parley], tmp_path: Path
) -> None:
    """With a profile that streams reasoning, /think shows it in the reply behind a closed toggle."""
    profiles = tmp_path / "profiles.toml"
    profiles.write_text('[profiles.thinker]\nprovider = "echo"\nmodel = "echo"\nreasoning = "stream"\n')
    parley = parley_factory(profiles=str(profiles))
    open_demo(page, parley.http)
    say(page, "/think 5 then answer")
    last = replies(page).last
    expect(last).to_have_attribute("data-state", "done", timeout=30_000)
    reasoning = last.get_by_test_id("reasoning")
    expect(reasoning).to_be_visible()
    assert reasoning.get_attribute("open") is None, "collapsed"
    words = (last.get_by_test_id("reasoning-text").text_content() or "").split()
    assert len(words) == 5
