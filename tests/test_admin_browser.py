"""The admin in a real browser (Debian Chromium driven by Playwright) against real daphne, under the
service's own Content-Security-Policy: a new channel's proposed id, "Send a test message" with its
payload, a channel's live connections and history, the list at 1280 pixels, and "View site".

Any CSP violation, uncaught script error or console error fails the test. Synchronous, like
test_pages_browser.py.
"""

from __future__ import annotations

import json
import re
import uuid

import pytest
import websockets.sync.client
from playwright.sync_api import Page, expect

from tests.support.auth import API_KEY
from tests.support.browser import RECORD_CSP_VIOLATIONS
from tests.support.processes import ROOT, manage
from tests.test_pages_browser import save_screenshot

pytestmark = pytest.mark.browser

ADMIN_PASSWORD = "pw-123456-long-enough"


@pytest.fixture(scope="module")
def admin_server(start_module_server):
    """configs/memory.config.yaml, with a staff user."""
    server = start_module_server(
        (ROOT / "configs" / "memory.config.yaml").read_text(), env={"REALTIME_API_KEYS": API_KEY}
    )
    create_user = (
        "from django.contrib.auth.models import User; "
        f"User.objects.create_superuser('staff', 'staff@example.com', '{ADMIN_PASSWORD}')"
    )
    manage("shell", "-c", create_user, env=server.env)
    return server


def logged_in(pages, server, *, width: int = 1280, height: int = 800) -> Page:
    """A page logged in to the admin, recording CSP violations, script errors and console errors."""
    context = pages.browser.new_context(viewport={"width": width, "height": height})
    pages.contexts.append(context)
    context.add_init_script(RECORD_CSP_VIOLATIONS)
    page = context.new_page()
    page.on("pageerror", lambda error: pages.problems.append(f"uncaught error: {error}"))
    page.on("console", lambda message: message.type == "error" and pages.problems.append(message.text))
    page.goto(f"{server.http}/admin/")
    page.get_by_label("Username").fill("staff")
    page.get_by_label("Password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Channels and users")).to_be_visible()
    return page


def test_the_channel_list_fits_1280_pixels_and_view_site_is_the_landing_page(admin_server, pages, tmp_path):
    page = logged_in(pages, admin_server)
    expect(page).to_have_title("Channels and users | Realtime admin")
    expect(page.locator("#site-name")).to_have_text("Realtime administration")
    page.get_by_role("link", name="Channels").first.click()
    expect(page.locator("#result_list")).to_contain_text("my-notification-example")
    # Neither the page nor the list inside it scrolls sideways.
    assert page.evaluate("document.scrollingElement.scrollWidth") <= 1280
    # (The admin puts a wide list in a box of its own that scrolls: the page alone would not show it.)
    listed = page.evaluate("(box => [box.scrollWidth, box.clientWidth])(document.querySelector('.results'))")
    assert listed[0] <= listed[1], f"the list is {listed[0]} px wide in a {listed[1]} px box"
    save_screenshot(page, "admin-channels.png", tmp_path)
    page.get_by_role("link", name="View site").click()
    expect(page).to_have_url(f"{admin_server.http}/")
    expect(page.get_by_role("heading", name="Realtime", exact=True)).to_be_visible()
    assert page.evaluate("window.cspViolations") == []
    assert pages.problems == []


def test_add_a_channel_with_the_proposed_id_then_send_it_a_test_message(admin_server, pages, tmp_path):
    page = logged_in(pages, admin_server)
    page.goto(f"{admin_server.http}/admin/channels_app/channel/add/")
    proposed = page.get_by_label("Id:").input_value()
    assert str(uuid.UUID(proposed)) == proposed
    page.get_by_label("Name:").fill("browser-made")
    page.get_by_label("Type:").select_option("WS")
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator(".messagelist")).to_contain_text("was added successfully")

    with websockets.sync.client.connect(admin_server.channel_url(proposed, clientId="watcher")) as watcher:
        page.reload()
        row = page.locator("#result_list tr", has_text="browser-made")
        expect(row.locator(".field-connections")).to_have_text("1 / 100")
        row.get_by_role("checkbox").check()
        page.get_by_label("Action:").select_option(label="Send a test message to the selected channels…")
        page.get_by_role("button", name="Go").click()
        expect(page.get_by_role("heading", name="Send a test message")).to_be_visible()
        page.get_by_label("Payload:").fill("Typed in the admin <b>as text</b>")
        page.get_by_role("button", name="Send").click()
        expect(page.locator(".messagelist")).to_contain_text(re.compile("browser-made: test message", re.I))
        received = json.loads(watcher.recv(timeout=5))
        assert received["payload"] == "Typed in the admin <b>as text</b>"

        page.get_by_role("link", name="browser-made").click()
        expect(page.locator("#live-connections")).to_have_text("1 of 100")
        expect(page.locator("#recent-messages tbody tr")).to_have_count(1)
        expect(page.locator("#recent-messages tbody td").nth(3)).to_have_text("Typed in the admin <b>as text</b>")
        assert page.locator("#recent-messages b").count() == 0
        save_screenshot(page, "admin-channel.png", tmp_path)
    assert page.evaluate("window.cspViolations") == []
    assert pages.problems == []


def test_a_refused_payload_is_shown_on_the_form(admin_server, pages):
    page = logged_in(pages, admin_server)
    page.goto(f"{admin_server.http}/admin/channels_app/channel/")
    page.locator("#result_list tr", has_text="my-chat-example").get_by_role("checkbox").check()
    page.get_by_label("Action:").select_option(label="Send a test message to the selected channels…")
    page.get_by_role("button", name="Go").click()
    page.get_by_label("Payload:").fill("x" * 70_000)
    page.get_by_role("button", name="Send").click()
    expect(page.locator(".errorlist")).to_contain_text(re.compile(r"The payload is 70000 bytes; the limit is \d+"))
    expect(page.get_by_label("Payload:")).to_have_value("x" * 70_000)
    assert page.evaluate("window.cspViolations") == []
    assert pages.problems == []
