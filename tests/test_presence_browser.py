"""The chat page shows who is online on a presence channel, in a real browser (Debian Chromium driven
by Playwright) against real daphne: two people, then one.

Synchronous on purpose, as tests/test_pages_browser.py: Playwright's sync API and pytest-asyncio clash.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.support.browser import launch_chromium
from tests.support.configs import memory_config

pytestmark = pytest.mark.browser

CONFIG = memory_config(render_chat_html=True) + '\n  room: {id: "room-1", type: "WS", presence: true}\n'


@pytest.fixture(scope="module")
def chromium() -> Browser:
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        yield browser
        browser.close()


def open_chat(browser: Browser, url: str, problems: list[str]) -> Page:
    page = browser.new_context().new_page()
    page.on("pageerror", lambda error: problems.append(f"uncaught error: {error}"))
    page.goto(url)
    return page


def join(page: Page, name: str) -> None:
    page.get_by_label("Display name").fill(name)
    page.get_by_role("button", name="Join").click()
    expect(page.get_by_role("status").first).to_have_text(f"Connected to room as {name}.")


def test_the_chat_page_shows_two_people_online_then_one(start_server, chromium):
    server = start_server(CONFIG)
    problems: list[str] = []
    alice = open_chat(chromium, f"{server.http}/web/chat/?channel=room", problems)
    bob = open_chat(chromium, f"{server.http}/web/chat/?channel=room", problems)
    join(alice, "Alice")
    online = alice.locator("#online li")
    expect(online).to_have_text(["Alice (you)"], timeout=10_000)
    join(bob, "Bob")
    expect(online).to_have_text(["Alice (you)", "Bob"], timeout=10_000)
    # Bob arrived after Alice: his page learns of her from the list it is sent on joining.
    expect(bob.locator("#online li")).to_have_text(["Alice", "Bob (you)"], timeout=10_000)
    bob.get_by_role("button", name="Leave").click()
    expect(online).to_have_text(["Alice (you)"], timeout=10_000)
    assert problems == []
