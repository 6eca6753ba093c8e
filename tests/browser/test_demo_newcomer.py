"""The web demo's rough edges a newcomer met (issue 15), in real Chromium against real ``parley serve``.

Offline sends in log order, no thumbs on failed replies, "too long" that keeps the text
and says the limit, the offline status readable at 360 px, and signing in with a token
from ``parley token``. Synchronisation is on observable state, never on sleeping.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from playwright.sync_api import Page, expect

from .harness import PageProbe, Parley, Redis, run_conversation, watch
from .test_demo import CONNECTED, open_demo, replies, say, wait_done, wait_streaming_words

pytestmark = pytest.mark.browser

SECRET = "a-demo-secret-for-browser-tests-0123456789"

#: Every message in the log, in DOM order: ("user" | "assistant", text).
CONVERSATION = (
    "[...document.querySelectorAll('#log article')].map(e => "
    "[e.classList.contains('user') ? 'user' : 'assistant', "
    "e.querySelector('[data-testid=message-text]').textContent])"
)


def parley_token(*args: str) -> str:
    """A token from the real ``parley token`` command with the servers' secret."""
    exe = shutil.which("parley", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "parley.server.cli"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    env["PARLEY_AUTH_JWT_SECRET"] = SECRET
    out = subprocess.run(
        [*cmd, "token", *args], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    return out.stdout.strip()


def test_messages_sent_offline_show_in_log_order(page: Page, context: Any, parley: Parley) -> None:
    """Two messages sent offline read You1, Reply1, You2, Reply2 once online, exactly as after a reload."""
    open_demo(page, parley.http)
    context.set_offline(True)
    expect(page.get_by_test_id("status")).to_have_attribute("data-state", "reconnecting")
    say(page, "first while offline")
    say(page, "second while offline")
    expect(page.locator('[data-testid=message-user][data-state="pending"]')).to_have_count(2)
    context.set_offline(False)
    expect(replies(page)).to_have_count(2, timeout=30_000)
    wait_done(replies(page).nth(0))
    wait_done(replies(page).nth(1))
    live = page.evaluate(CONVERSATION)
    expected = run_conversation(parley.ws, ["first while offline", "second while offline"])
    assert live == [
        ["user", "first while offline"],
        ["assistant", expected[0]],
        ["user", "second while offline"],
        ["assistant", expected[1]],
    ]
    page.reload()
    page.wait_for_function(CONNECTED)
    expect(replies(page)).to_have_count(2)
    assert page.evaluate(CONVERSATION) == live


def test_a_failed_reply_offers_retry_but_no_thumbs(
    page: Page, parley_factory: Callable[..., Parley], redis: Redis
) -> None:
    """A reply interrupted by a crashed server shows Retry and no rating buttons; a good reply shows both."""
    server = parley_factory(
        redis.url, lease_ms=1000, lease_renew_ms=300, reaper_interval_ms=200, drain_timeout_ms=0
    )
    open_demo(page, server.http)
    say(page, "Crash under me")
    reply = replies(page).first
    wait_streaming_words(page, 3)
    server.stop(signal.SIGKILL)
    server.start()
    wait_done(reply, "interrupted")
    expect(reply.get_by_test_id("retry")).to_be_visible()
    expect(reply.get_by_test_id("feedback-up")).to_be_hidden()
    expect(reply.get_by_test_id("feedback-down")).to_be_hidden()
    reply.get_by_test_id("retry").click()
    good = replies(page).nth(1)
    wait_done(good)
    expect(good.get_by_test_id("feedback-up")).to_be_visible()
    expect(good.get_by_test_id("retry")).to_be_hidden()


@pytest.mark.parametrize(
    ("size", "limit"), [(120, "the limit is 100 characters, this one has 120"), (70_000, "65,536 bytes")]
)
def test_too_long_keeps_the_text_and_says_the_limit(
    page: Page, parley_factory: Callable[..., Parley], size: int, limit: str
) -> None:
    """A message over the server's (or the frame's) limit stays in the composer; the notice says the limit."""
    server = parley_factory(max_message_chars=100)
    open_demo(page, server.http)
    text = "x" * size
    say(page, text)
    expect(page.get_by_test_id("notice")).to_contain_text("too long")
    expect(page.get_by_test_id("notice")).to_contain_text(limit)
    expect(page.get_by_test_id("composer")).to_have_value(text)
    expect(page.get_by_test_id("message-user")).to_have_count(0)
    say(page, "short enough")  # and the conversation goes on
    wait_done(replies(page).first)


def test_offline_status_is_readable_at_360px(browser: Any, parley: Parley, probe: PageProbe) -> None:
    """At 360 px the whole "Offline. Reconnecting in N s…" status is on screen, not cut off."""
    ctx = browser.new_context(viewport={"width": 360, "height": 740})
    try:
        page = ctx.new_page()
        watch(page, probe)
        open_demo(page, parley.http)
        ctx.set_offline(True)
        status = page.get_by_test_id("status")
        expect(status).to_have_attribute("data-state", "reconnecting")
        expect(status).to_contain_text("Offline. Reconnecting")
        fits = page.evaluate(
            """() => {
              const el = document.querySelector('[data-testid=status] .status-text');
              const range = document.createRange();
              range.selectNodeContents(el);
              const text = range.getBoundingClientRect(), box = el.getBoundingClientRect();
              const bar = document.querySelector('.topbar').getBoundingClientRect();
              return {text: [text.left, text.right, text.bottom], box: [box.left, box.right],
                      bar: bar.bottom, width: innerWidth, scroll: document.documentElement.scrollWidth};
            }"""
        )
        left, right, bottom = fits["text"]
        assert left >= 0 and right <= fits["width"], fits
        assert right <= fits["box"][1] + 1, f"the status text overflows its box (cut off): {fits}"
        assert bottom <= fits["bar"], fits
        assert fits["scroll"] <= 360
    finally:
        ctx.close()


def test_signing_in_with_a_pasted_token(page: Page, parley_factory: Callable[..., Parley]) -> None:
    """With auth on, the demo asks for a token; one from ``parley token`` signs in and chat works."""
    server = parley_factory(auth_jwt_secret=SECRET)
    page.goto(f"{server.http}/")
    expect(page.get_by_test_id("signin")).to_be_visible()
    expect(page.get_by_test_id("status")).to_have_attribute("data-state", "signin")
    expect(page.get_by_test_id("notice")).not_to_contain_text("Reload")
    page.get_by_test_id("signin-token").fill(parley_token("--sub", "ada", "--tenant", "demo"))
    page.get_by_test_id("signin-submit").click()
    page.wait_for_function(CONNECTED)
    expect(page.get_by_test_id("signin")).to_be_hidden()
    say(page, "signed in now")
    assert wait_done(replies(page).first).startswith("Echo turn-1: signed in now")


def test_a_token_in_the_url_signs_in_and_leaves_the_address_bar(
    page: Page, parley_factory: Callable[..., Parley]
) -> None:
    """``/#token=...`` connects at once and the token is removed from the address bar."""
    server = parley_factory(auth_jwt_secret=SECRET)
    token = parley_token("--sub", "grace", "--tenant", "demo", "--ttl", "10m")
    page.goto(f"{server.http}/#token={token}")
    page.wait_for_function(CONNECTED)
    expect(page.get_by_test_id("signin")).to_be_hidden()
    assert token not in page.url
    say(page, "hello with a link")
    wait_done(replies(page).first)


def test_a_refused_token_asks_again(page: Page, parley_factory: Callable[..., Parley]) -> None:
    """A token signed with another secret is refused: the sign-in field comes back, a good one then works."""
    server = parley_factory(auth_jwt_secret=SECRET)
    forged = jwt.encode(
        {"sub": "x", "tenant": "t", "exp": 4_000_000_000}, "another-secret-of-32-bytes-000000", "HS256"
    )
    page.goto(f"{server.http}/#token={forged}")
    expect(page.get_by_test_id("signin")).to_be_visible()
    expect(page.get_by_test_id("status")).to_contain_text("Not signed in")
    page.get_by_test_id("signin-token").fill(parley_token("--sub", "ada", "--tenant", "demo"))
    page.get_by_test_id("signin-token").press("Enter")
    page.wait_for_function(CONNECTED)
