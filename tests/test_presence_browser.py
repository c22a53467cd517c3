"""The chat page shows who is online on a presence channel, in a real browser (Debian Chromium driven
by Playwright, the strict CSP of tests/support/browser.py) against real daphne: two people, then one.

Synchronous on purpose, as tests/test_pages_browser.py: Playwright's sync API and pytest-asyncio clash.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.support.configs import memory_config

pytestmark = pytest.mark.browser

CONFIG = memory_config(render_chat_html=True) + '\n  room: {id: "room-1", type: "WS", presence: true}\n'


def join(page: Page, name: str) -> None:
    page.get_by_label("Display name").fill(name)
    page.get_by_role("button", name="Join").click()
    expect(page.get_by_role("status").first).to_have_text(f"Connected to room as {name}.")


def test_the_chat_page_shows_two_people_online_then_one(start_server, pages):
    server = start_server(CONFIG)
    alice = pages.open(f"{server.http}/web/chat/?channel=room")
    bob = pages.open(f"{server.http}/web/chat/?channel=room")
    join(alice, "Alice")
    online = alice.locator("#online li")
    expect(online).to_have_text(["Alice (you)"], timeout=10_000)
    join(bob, "Bob")
    expect(online).to_have_text(["Alice (you)", "Bob"], timeout=10_000)
    # Bob arrived after Alice: his page learns of her from the joins it is sent on arrival.
    expect(bob.locator("#online li")).to_have_text(["Alice", "Bob (you)"], timeout=10_000)
    bob.get_by_role("button", name="Leave").click()
    expect(online).to_have_text(["Alice (you)"], timeout=10_000)
    assert pages.problems == []
