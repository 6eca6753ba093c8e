"""The web demo and parley-client.js in real Chromium against real ``parley serve`` processes.

Synchronisation is always on observable state (Playwright's expect / wait_for_function,
or a second reader on the session log); never on sleeping.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Locator, Page, expect

from .harness import FreezingProxy, PageProbe, Parley, Redis, run_conversation, session_log, watch

pytestmark = pytest.mark.browser

LAST_REPLY = (
    "(() => { const a = document.querySelectorAll('[data-testid=message-assistant]');"
    " return a.length ? a[a.length - 1] : null; })()"
)
CONNECTED = "['connected', 'resumed'].includes(document.querySelector('[data-testid=status]').dataset.state)"


# ------------------------------------------------------------------ helpers


def open_demo(page: Page, base: str) -> None:
    page.goto(f"{base}/")
    page.wait_for_function(CONNECTED)


def say(page: Page, text: str) -> None:
    page.get_by_test_id("composer").fill(text)
    page.get_by_test_id("composer").press("Enter")


def replies(page: Page) -> Locator:
    return page.get_by_test_id("message-assistant")


def text_of(msg: Locator) -> str:
    return msg.get_by_test_id("message-text").text_content() or ""


def wait_streaming_words(page: Page, words: int) -> str:
    """Wait until the last reply is streaming and shows more than ``words`` words; its text."""
    page.wait_for_function(
        f"() => {{ const el = {LAST_REPLY}; return !!el && el.dataset.state === 'streaming' &&"
        " el.querySelector('[data-testid=message-text]').textContent.trim().split(/\\s+/).length"
        f" > {words}; }}"
    )
    return text_of(replies(page).last)


def wait_done(msg: Locator, state: str = "done", timeout: float = 30_000) -> str:
    expect(msg).to_have_attribute("data-state", state, timeout=timeout)
    return text_of(msg)


def client_state(page: Page) -> dict[str, Any]:
    return dict(
        page.evaluate(
            "({sessionId: parley.sessionId, resumeToken: parley.resumeToken, lastSeq: parley.lastSeq,"
            " stats: {...parley.stats}, status: {...parley.status}})"
        )
    )


# ------------------------------------------------------------------ tests


def test_reply_streams_in_and_completes(page: Page, parley: Parley) -> None:
    """A reply is shown growing delta by delta, then completes with its details and the model's exact text."""
    open_demo(page, parley.http)
    page.evaluate(
        """() => {
          window.__lengths = [];
          new MutationObserver(() => {
            const el = """
        + LAST_REPLY
        + """;
            if (el) window.__lengths.push(el.querySelector('[data-testid=message-text]').textContent.length);
          }).observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true});
        }"""
    )
    say(page, "Hello Parley, stream me something")
    reply = replies(page).first
    partial = wait_streaming_words(page, 3)
    final = wait_done(reply)
    lengths = [n for n in page.evaluate("window.__lengths") if n]
    assert len(set(lengths)) >= 5, f"the text did not visibly grow: {lengths}"
    assert lengths == sorted(lengths), "the streamed text only ever grows"
    assert final.startswith(partial) and len(final) > len(partial)
    assert final == run_conversation(parley.ws, ["Hello Parley, stream me something"])[0]
    expect(page.get_by_test_id("message-user")).to_have_count(1)
    expect(page.get_by_test_id("message-user").get_by_test_id("message-text")).to_have_text(
        "Hello Parley, stream me something"
    )
    details = reply.get_by_test_id("reply-details")
    details.locator("summary").click()
    for label in ("Trace id", "Tokens", "Time to first token"):
        expect(details).to_contain_text(label)
    expect(details).to_contain_text("45 out")
    expect(page.get_by_test_id("stop")).to_be_disabled()


def test_stop_mid_reply_ends_it_and_the_next_message_works(page: Page, parley: Parley) -> None:
    """Stop ends the streaming reply, marked as stopped, and the next message gets a full reply."""
    open_demo(page, parley.http)
    say(page, "Please write a long answer")
    first = replies(page).first
    wait_streaming_words(page, 2)
    expect(page.get_by_test_id("stop")).to_be_enabled()
    page.get_by_test_id("stop").click()
    stopped = wait_done(first, "stopped")
    expect(first).to_have_attribute("data-finish-reason", "cancelled")
    expect(first.get_by_test_id("message-badge")).to_have_text("Stopped")
    assert 0 < len(stopped.split()) < 45
    expect(page.get_by_test_id("stop")).to_be_disabled()

    say(page, "And now a short one")
    second = replies(page).nth(1)
    assert len(wait_done(second).split()) == 45
    assert text_of(first) == stopped, "the stopped reply did not grow afterwards"
    expect(page.get_by_test_id("message-user")).to_have_count(2)


def test_feedback_is_recorded_on_the_server(page: Page, parley: Parley) -> None:
    """Thumbs up, then thumbs down with a comment, land in the session log; the last rating wins."""
    open_demo(page, parley.http)
    say(page, "Rate me")
    reply = replies(page).first
    wait_done(reply)
    response_id = reply.get_attribute("data-response-id")

    reply.get_by_test_id("feedback-up").click()
    expect(reply).to_have_attribute("data-feedback-recorded", "up")
    expect(reply.get_by_test_id("feedback-up")).to_have_attribute("aria-pressed", "true")

    reply.get_by_test_id("feedback-down").click()
    reply.get_by_test_id("feedback-comment").fill("too many NATO words")
    reply.get_by_test_id("feedback-comment-send").click()
    expect(reply.get_by_test_id("feedback-status")).to_have_text("Thanks for the comment.")
    expect(reply.get_by_test_id("feedback-down")).to_have_attribute("aria-pressed", "true")
    expect(reply.get_by_test_id("feedback-up")).to_have_attribute("aria-pressed", "false")

    st = client_state(page)
    events = session_log(
        parley.ws,
        st["sessionId"],
        st["resumeToken"],
        until=lambda evs: bool(evs) and evs[-1]["seq"] >= st["lastSeq"],
    )
    ratings = [
        e["rating"] for e in events if e["type"] == "feedback.recorded" and e["response_id"] == response_id
    ]
    assert ratings[0] == "up"
    assert ratings[-1] == "down"


def test_offline_mid_reply_then_online_gives_the_uninterrupted_text(
    page: Page, context: Any, parley: Parley
) -> None:
    """Offline mid-reply, then online: the text equals an uninterrupted reply, gap resumed, none doubled."""
    message = "Survive a network drop please"
    open_demo(page, parley.http)
    say(page, message)
    reply = replies(page).first
    wait_streaming_words(page, 3)

    context.set_offline(True)
    expect(page.get_by_test_id("status")).to_have_attribute("data-state", "reconnecting")
    frozen = client_state(page)
    frozen_text = text_of(reply)
    # While the page is offline the server keeps generating: a second reader sees the log move on.
    session_log(
        parley.ws,
        frozen["sessionId"],
        frozen["resumeToken"],
        after=frozen["lastSeq"],
        until=lambda evs: len(evs) >= 5,
    )
    assert text_of(reply) == frozen_text, "the offline page received nothing"

    context.set_offline(False)
    final = wait_done(reply)
    assert final == run_conversation(parley.ws, [message])[0]
    after = client_state(page)
    assert after["stats"]["connects"] >= 2 and after["stats"]["resumes"] >= 1
    assert after["sessionId"] == frozen["sessionId"]
    expect(replies(page)).to_have_count(1)
    expect(page.get_by_test_id("message-user")).to_have_count(1)
    expect(page.get_by_test_id("status")).to_have_attribute("data-state", "resumed")


def test_silent_dead_connection_is_detected_by_the_heartbeat_watchdog(
    page: Page, parley_factory: Callable[..., Parley], freezing_proxy: Callable[[int], FreezingProxy]
) -> None:
    """A connection that silently stops carrying bytes (no close, no offline event) is replaced, resumed."""
    server = parley_factory(heartbeat_interval_ms=1000)
    proxy = freezing_proxy(server.port)
    message = "Keep going through a dead path"
    open_demo(page, proxy.http)
    say(page, message)
    reply = replies(page).first
    wait_streaming_words(page, 3)
    assert proxy.freeze_open_connections() >= 1
    expect(page.get_by_test_id("status")).to_have_attribute("data-state", "reconnecting", timeout=10_000)
    assert page.evaluate("parley.status.reason") == "heartbeat timeout"
    final = wait_done(reply)
    assert final == run_conversation(server.ws, [message])[0]
    expect(replies(page)).to_have_count(1)


def test_page_reload_mid_reply_resumes_the_same_reply(page: Page, parley: Parley) -> None:
    """Reloading mid-reply shows the text so far at once and finishes that same reply, without duplicates."""
    message = "Reload in the middle of this"
    open_demo(page, parley.http)
    say(page, message)
    reply = replies(page).first
    partial = wait_streaming_words(page, 3)
    response_id = reply.get_attribute("data-response-id")
    session_id = client_state(page)["sessionId"]

    page.reload()
    restored = page.locator(f'[data-testid=message-assistant][data-response-id="{response_id}"]')
    expect(restored).to_have_count(1)
    assert text_of(restored).startswith(partial)
    page.wait_for_function(CONNECTED)
    final = wait_done(restored)
    assert final == run_conversation(parley.ws, [message])[0]
    st = client_state(page)
    assert st["sessionId"] == session_id
    assert st["status"]["resumed"] is True
    expect(replies(page)).to_have_count(1)
    expect(page.get_by_test_id("message-user")).to_have_count(1)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["crash", "graceful"])
def test_server_restart_mid_reply_recovers_by_itself(
    page: Page, parley_factory: Callable[..., Parley], redis: Redis, sig: int
) -> None:
    """The server dies (or restarts) mid-reply; the page reconnects by itself, ends the reply, chats on."""
    server = parley_factory(
        redis.url, lease_ms=1000, lease_renew_ms=300, reaper_interval_ms=200, drain_timeout_ms=0
    )
    open_demo(page, server.http)
    say(page, "Restart under me")
    reply = replies(page).first
    wait_streaming_words(page, 3)
    session_id = client_state(page)["sessionId"]

    server.stop(sig)
    expect(page.get_by_test_id("status")).to_have_attribute("data-state", "reconnecting")
    server.start()  # same port, same Redis: the session lives there

    expect(page.get_by_test_id("status")).to_have_attribute("data-state", "resumed", timeout=30_000)
    # The reply's generation died with its process: it ends as interrupted (retryable), never hangs.
    wait_done(reply, "interrupted")
    expect(reply.get_by_test_id("message-badge")).to_contain_text("Interrupted")
    assert client_state(page)["sessionId"] == session_id

    reply.get_by_test_id("retry").click()  # sends the same question again, as a new turn
    second = replies(page).nth(1)
    assert wait_done(second).startswith("Echo turn-2: Restart under me")
    expect(page.get_by_test_id("message-user")).to_have_count(2)


def test_markup_in_a_message_is_shown_as_text(page: Page, parley: Parley, probe: PageProbe) -> None:
    """A message that is HTML is displayed literally, in both turns, and creates no element or dialog."""
    payload = "<img src=x onerror=alert(1)>"
    open_demo(page, parley.http)
    say(page, payload)
    reply = replies(page).first
    wait_done(reply)
    expect(page.get_by_test_id("message-user").get_by_test_id("message-text")).to_have_text(payload)
    assert "<img" in text_of(reply)  # the echo model repeats it
    assert page.locator("img").count() == 0
    # the text containers hold text nodes only: nothing from a message ever became an element
    assert page.evaluate("document.querySelectorAll('[data-testid=message-text] *').length") == 0
    assert probe.dialogs == []


def test_keyboard_and_labels(page: Page, parley: Parley) -> None:
    """Shift+Enter adds a line, Enter sends; every control has an accessible name."""
    open_demo(page, parley.http)
    composer = page.get_by_label("Message", exact=True)
    expect(composer).to_have_attribute("data-testid", "composer")
    composer.type("first line")
    composer.press("Shift+Enter")
    composer.type("second line")
    expect(composer).to_have_value("first line\nsecond line")
    expect(page.get_by_test_id("message-user")).to_have_count(0)
    composer.press("Enter")
    expect(page.get_by_test_id("message-user").get_by_test_id("message-text")).to_have_text(
        "first line\nsecond line"
    )
    expect(composer).to_have_value("")
    wait_done(replies(page).first)
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    expect(page.get_by_role("button", name="Stop")).to_be_visible()
    expect(page.get_by_role("button", name="Good reply")).to_be_visible()
    expect(page.get_by_role("button", name="Bad reply")).to_be_visible()
    expect(page.get_by_role("status")).to_contain_text("Connected")


def test_screenshot_of_a_finished_conversation_at_360px(
    browser: Any, parley: Parley, artifacts: Path, probe: PageProbe
) -> None:
    """A two-turn conversation fits a 360 px wide screen without sideways scrolling; screenshots are saved."""
    ctx = browser.new_context(viewport={"width": 360, "height": 740}, device_scale_factor=2)
    try:
        page = ctx.new_page()
        watch(page, probe)
        open_demo(page, parley.http)
        say(page, "Hello from a small phone")
        wait_done(replies(page).first)
        replies(page).first.get_by_test_id("feedback-up").click()
        expect(replies(page).first).to_have_attribute("data-feedback-recorded", "up")
        say(page, "And a second question with a rather long unbroken word: " + "x" * 80)
        wait_done(replies(page).nth(1))
        assert page.evaluate("document.documentElement.scrollWidth") <= 360
        log = page.get_by_test_id("log")
        assert log.evaluate("el => el.scrollWidth <= el.clientWidth"), "no sideways scrolling in the log"
        rights = page.evaluate(
            "[...document.querySelectorAll('#log article')].map(e => e.getBoundingClientRect().right)"
        )
        assert rights and max(rights) <= 360
        for testid in ("composer", "send", "stop", "status"):
            box = page.get_by_test_id(testid).bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 360, testid
        phone = artifacts / "conversation-360px.png"
        page.screenshot(path=str(phone))
        page.set_viewport_size({"width": 1024, "height": 800})
        desktop = artifacts / "conversation.png"
        page.screenshot(path=str(desktop))
        for shot in (phone, desktop):
            assert shot.stat().st_size > 10_000
        assert not probe.errors
    finally:
        ctx.close()
