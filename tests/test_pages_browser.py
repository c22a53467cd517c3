"""The chat and notifications pages, the landing page and the API docs in a real browser (Debian Chromium
driven by Playwright) against real daphne.

The demo pages are served with a strict Content-Security-Policy added on the way (no inline
script or style), the landing page and the API docs with the service's own header; any CSP
violation, uncaught script error or dialog fails the test.
Set ``REALTIME_SCREENSHOTS=1`` to refresh the screenshots in docs/screenshots/.

The tests are synchronous on purpose: Playwright's sync API and pytest-asyncio's auto mode clash.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import httpx
import pytest
import websockets.sync.client
from playwright.sync_api import Page, expect

from channels_app.http.security import CONTENT_SECURITY_POLICY
from tests.conftest import TEST_CONFIG, redis_config
from tests.support.auth import API_KEY, AUTH
from tests.support.browser import RECORD_CSP_VIOLATIONS, Pages

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
LOST = "Some messages may have been lost"
XSS_PAYLOADS = ['<img src=x onerror="alert(1)">', "<script>alert(2)</script>"]

expect.set_options(timeout=15_000)


def pages_config(config_text: str = TEST_CONFIG) -> str:
    """Both pages on, a quick SSE retry, and a channel that holds a single connection."""
    return (
        config_text.replace(
            "allow_push_server_messages: true",
            "allow_push_server_messages: true\n  render_chat_html: true\n  render_notifications_html: true\n"
            "  sse_retry: 500",
        )
        + '  tiny:\n    id: "tiny-1"\n    type: "WS"\n    max_of_channel_connections: 1\n'
    )


@pytest.fixture(scope="module")
def keyed_server(start_module_server):
    """Pages on; the server API needs a key (REALTIME_API_KEYS), as in production."""
    return start_module_server(pages_config(), env={"REALTIME_API_KEYS": API_KEY})


def save_screenshot(page: Page, name: str, tmp_path: Path) -> None:
    """Into docs/screenshots/ when REALTIME_SCREENSHOTS=1, else into the test's temporary folder."""
    folder = ROOT / "docs" / "screenshots" if os.environ.get("REALTIME_SCREENSHOTS") == "1" else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / name), full_page=True, animations="disabled", caret="hide")


def join_chat(page: Page, name: str, *, channel_label: str = "chat") -> None:
    """Join with the keyboard only: type the name, press Enter."""
    name_field = page.get_by_label("Display name")
    name_field.focus()
    page.keyboard.type(name)
    page.keyboard.press("Enter")
    expect(page.get_by_role("status").first).to_have_text(f"Connected to {channel_label} as {name}.")
    # The keyboard focus moves on to the message box, ready to type.
    expect(page.get_by_label("Message", exact=True)).to_be_focused()


def say(page: Page, text: str) -> None:
    """Type a message and send it with Enter."""
    box = page.get_by_label("Message", exact=True)
    box.fill(text)
    box.press("Enter")
    expect(box).to_have_value("")


def push(server, channel: str, payload: str) -> dict:
    """Publish through the HTTP API, as a backend would; return the receipt."""
    response = httpx.post(f"{server.http}/api/v1/channels/{channel}/messages", json={"payload": payload}, headers=AUTH)
    assert response.status_code == 201, response.text
    return response.json()


def test_two_people_chat_and_markup_is_shown_as_text(keyed_server, pages, tmp_path):
    alice = pages.open(f"{keyed_server.http}/web/chat/")
    bob = pages.open(f"{keyed_server.http}/web/chat/?channel=chat")
    join_chat(alice, "Alice")
    join_chat(bob, "Bob")

    say(alice, "Hello Bob!")
    bob_messages = bob.locator("#messages .message")
    expect(bob_messages).to_have_count(1)
    expect(bob_messages.locator(".sender")).to_have_text(["Alice"])
    expect(bob_messages.locator(".text")).to_have_text(["Hello Bob!"])
    expect(bob_messages.locator("time")).to_have_attribute("datetime", re.compile(r"^\d{4}-\d\d-\d\dT"))
    # Alice's own message comes back (echo) marked as hers.
    expect(alice.locator("#messages .message.mine .text")).to_have_text(["Hello Bob!"])
    expect(alice.locator("#messages .message.mine .sender")).to_have_text(["You"])

    for payload in XSS_PAYLOADS:
        say(bob, payload)
    say(bob, "line one\nline two")
    expect(alice.locator("#messages .message:not(.mine) .text")).to_have_text([*XSS_PAYLOADS, "line one\nline two"])
    expect(alice.locator("#messages .message.mine")).to_have_count(1)
    assert alice.locator("#messages img").count() == 0
    assert alice.locator("#messages script").count() == 0
    expect(bob.locator("#messages .message.mine")).to_have_count(3)

    # Leaving and joining again shows the recent history, each message once.
    bob.get_by_role("button", name="Leave").click()
    expect(bob.get_by_role("status").first).to_have_text("Disconnected: closed by the page")
    expect(bob.get_by_label("Message", exact=True)).to_be_disabled()
    bob.get_by_role("button", name="Join").click()
    expect(bob.get_by_role("status").first).to_have_text("Connected to chat as Bob.")
    expect(bob.locator("#messages .message .text")).to_have_text(["Hello Bob!", *XSS_PAYLOADS, "line one\nline two"])
    expect(bob.locator("#messages .message.mine")).to_have_count(3)

    save_screenshot(alice, "chat.png", tmp_path)
    assert pages.problems == []


def test_refusals_are_explained_in_words(keyed_server, pages):
    unknown = pages.open(f"{keyed_server.http}/web/chat/?channel=no-such-channel")
    unknown.get_by_label("Display name").fill("Carol")
    unknown.get_by_role("button", name="Join").click()
    expect(unknown.get_by_role("alert")).to_contain_text("There is no channel with this id or name")
    expect(unknown.get_by_role("alert")).to_contain_text("4404")
    expect(unknown.get_by_role("status").first).to_contain_text("Disconnected")
    # The form is back, to pick another channel.
    expect(unknown.get_by_role("button", name="Join")).to_be_visible()

    first = pages.open(f"{keyed_server.http}/web/chat/?channel=tiny")
    join_chat(first, "Dave", channel_label="tiny")
    second = pages.open(f"{keyed_server.http}/web/chat/?channel=tiny-1")
    second.get_by_label("Display name").fill("Erin")
    second.get_by_role("button", name="Join").click()
    expect(second.get_by_role("alert")).to_contain_text("The channel is full")
    # A full channel may free up: the page keeps trying, with backoff, and says so.
    expect(second.get_by_role("status").first).to_contain_text("Reconnecting")
    first.get_by_role("button", name="Leave").click()
    expect(second.get_by_role("status").first).to_have_text("Connected to tiny as Erin.", timeout=20_000)

    # Another connection already uses the clientId this tab would use (a duplicated tab copies it).
    henry = pages.open(f"{keyed_server.http}/web/chat/")
    henry.evaluate("sessionStorage.setItem('realtime.chat.tag', 'abc123')")
    with websockets.sync.client.connect(keyed_server.channel_url("chat-2", clientId="Henry-abc123")):
        henry.get_by_label("Channel", exact=True).select_option(label="other-chat")
        henry.get_by_label("Display name").fill("Henry")
        henry.get_by_role("button", name="Join").click()
        expect(henry.get_by_role("alert")).to_contain_text("already connected")
        expect(henry.get_by_role("alert")).to_contain_text("4409")
        # Joining again draws a new tag for this tab, so it gets in.
        henry.get_by_role("button", name="Join").click()
        expect(henry.get_by_role("status").first).to_have_text("Connected to other-chat as Henry.")

    feed = pages.open(f"{keyed_server.http}/web/notifications/?channel=no-such-feed")
    expect(feed.get_by_role("alert")).to_contain_text("There is no channel with this id or name")
    expect(feed.get_by_role("status").first).to_contain_text("Disconnected")
    # A WS channel opened as a stream: the EventSource cannot say why, the page still does.
    wrong = pages.open(f"{keyed_server.http}/web/notifications/?channel=chat")
    expect(wrong.get_by_role("alert")).to_contain_text("uses the other transport")
    expect(wrong.get_by_role("status").first).to_contain_text("Disconnected")
    assert pages.problems == []


def test_notifications_arrive_newest_first_with_an_unread_count(keyed_server, pages, tmp_path):
    page = pages.open(f"{keyed_server.http}/web/notifications/")
    expect(page.get_by_role("status").first).to_have_text("Listening to feed.")
    unread = page.locator("#unread-count")
    expect(unread).to_have_text("0")

    push(keyed_server, "feed-1", "Build 41 passed")
    expect(page.locator(".notification .text")).to_have_text(["Build 41 passed"])
    expect(unread).to_have_text("1")
    expect(page).to_have_title("(1) Notifications · Realtime")
    for payload in XSS_PAYLOADS:
        push(keyed_server, "feed", payload)
    expect(page.locator(".notification .text")).to_have_text([*reversed(XSS_PAYLOADS), "Build 41 passed"])
    expect(unread).to_have_text("3")
    assert page.locator("#notifications img").count() == 0

    # The form needs the key: a wrong one is refused in words, the right one works.
    page.get_by_label("Text").fill("Deploy finished")
    page.get_by_label("API key").fill("wrong-key")
    page.get_by_role("button", name="Send notification").click()
    expect(page.locator("#push-result")).to_contain_text("Not sent (HTTP 401)")
    page.get_by_label("API key").fill(API_KEY)
    page.get_by_role("button", name="Send notification").click()
    expect(page.locator("#push-result")).to_contain_text("Sent")
    expect(page.locator(".notification .text").first).to_have_text("Deploy finished")
    expect(unread).to_have_text("4")
    # The key stays in this tab's sessionStorage: not in a cookie, not in the address.
    assert page.evaluate("sessionStorage.getItem('realtime.apiKey')") == API_KEY
    assert page.context.cookies() == []
    assert API_KEY not in page.url
    save_screenshot(page, "notifications.png", tmp_path)

    page.get_by_role("button", name="Mark all as read").click()
    expect(unread).to_have_text("0")
    expect(page).to_have_title("Notifications · Realtime")
    # After a reload the recent notifications are back from history, already read.
    page.reload()
    expect(page.locator(".notification .text")).to_have_count(4)
    expect(unread).to_have_text("0")
    push(keyed_server, "feed-1", "One more")
    expect(unread).to_have_text("1")
    expect(page.locator(".notification.unread .text")).to_have_text(["One more"])
    assert pages.problems == []


def test_memory_restart_says_plainly_that_messages_may_be_lost(start_server, pages):
    """The MEMORY driver loses history on restart: the pages come back by themselves and say so."""
    server = start_server(pages_config(), env={"APP_DEBUG": "1"})
    chat = pages.open(f"{server.http}/web/chat/")
    join_chat(chat, "Frank")
    say(chat, "before the restart")
    expect(chat.locator("#messages .message.mine .text")).to_have_text(["before the restart"])
    feed = pages.open(f"{server.http}/web/notifications/")
    expect(feed.get_by_role("status").first).to_have_text("Listening to feed.")
    # APP_DEBUG=1 and no key: the form sends without one.
    feed.get_by_label("Text").fill("before the restart")
    feed.get_by_role("button", name="Send notification").click()
    expect(feed.locator(".notification .text")).to_have_text(["before the restart"])

    server.stop()
    expect(chat.get_by_role("status").first).to_contain_text("Connection lost")
    expect(chat.get_by_label("Message", exact=True)).to_be_disabled()
    server.run()

    expect(chat.get_by_role("alert")).to_contain_text(LOST)
    expect(feed.get_by_role("alert")).to_contain_text(LOST)
    expect(chat.get_by_role("status").first).to_have_text("Connected to chat as Frank.")
    expect(feed.get_by_role("status").first).to_have_text("Listening to feed.")
    say(chat, "after the restart")
    expect(chat.locator("#messages .message.mine .text")).to_have_text(["before the restart", "after the restart"])
    httpx.post(f"{server.http}/api/v1/channels/feed-1/messages", json={"payload": "after the restart"})
    expect(feed.locator(".notification .text")).to_have_text(["after the restart", "before the restart"])
    assert pages.problems == []


def test_redis_history_survives_a_restart_and_the_pages_catch_up(start_server, redis_server, pages):
    """With REDIS, what was published while a page's instance was down reaches it on reconnect, nothing lost."""
    config = pages_config(redis_config(redis_server.url))
    # A graceful stop gives the connection slots back; the short lease covers one that does not
    # (a kill), which would otherwise hold the page's clientId for 30 s.
    env = {"REALTIME_API_KEYS": API_KEY, "REALTIME_PRESENCE_LEASE_SECONDS": "3"}
    first = start_server(config, env=env)
    second = start_server(config, env=env, database_path=first.database_path, sync=False)

    chat = pages.open(f"{first.http}/web/chat/")
    join_chat(chat, "Grace")
    push(first, "chat-1", "before")
    expect(chat.locator("#messages .message .text")).to_have_text(["before"])
    feed = pages.open(f"{first.http}/web/notifications/")
    expect(feed.get_by_role("status").first).to_have_text("Listening to feed.")
    push(first, "feed-1", "before")
    expect(feed.locator(".notification .text")).to_have_text(["before"])

    first.stop()
    expect(chat.get_by_role("status").first).to_contain_text("Connection lost")
    for text in ("while away 1", "while away 2"):
        push(second, "chat-1", text)
        push(second, "feed-1", text)
    first.run()

    expect(chat.locator("#messages .message .text")).to_have_text(["before", "while away 1", "while away 2"])
    expect(feed.locator(".notification .text")).to_have_text(["while away 2", "while away 1", "before"])
    expect(chat.get_by_role("status").first).to_have_text("Connected to chat as Grace.")
    expect(feed.locator("#unread-count")).to_have_text("3")
    assert chat.locator("#notices").inner_text() == ""
    assert feed.locator("#notices").inner_text() == ""
    assert pages.problems == []


def test_the_javascript_client_as_documented(keyed_server, pages):
    """docs/javascript-client.md: connect, events, position, send, close."""
    page = pages.open(f"{keyed_server.http}/web/chat/")
    page.evaluate(
        """() => {
            window.seen = { states: [], messages: [] };
            const sub = Realtime.connect({ channel: "other-chat", transport: "ws", clientId: "doc-reader" });
            sub.on("status", (status) => {
                window.seen.states.push(status.state);
                document.body.dataset.states = window.seen.states.join(" ");
            });
            sub.on("message", (message) => {
                window.seen.messages.push(message);
                document.body.dataset.messages = String(window.seen.messages.length);
            });
            window.sub = sub;
        }"""
    )
    # Waiting through the DOM: wait_for_function would evaluate strings, which the strict CSP forbids.
    body = page.locator("body")
    expect(body).to_have_attribute("data-states", "connecting open")
    receipt = push(keyed_server, "chat-2", "for the reader")
    expect(body).to_have_attribute("data-messages", "1")
    message = page.evaluate("window.seen.messages[0]")
    assert message["payload"] == "for the reader"
    assert message["clientId"] == "server-message"
    assert page.evaluate("window.sub.position") == receipt["position"]
    assert page.evaluate("window.sub.send('from the reader')") is True
    page.evaluate("window.sub.close()")
    assert page.evaluate("window.seen.states") == ["connecting", "open", "closed"]
    assert page.evaluate("window.sub.send('too late')") is False
    error = page.evaluate(
        """() => {
            const feed = Realtime.connect({ channel: "feed", transport: "sse" });
            try { feed.send("x"); } catch (exc) { return exc.message; } finally { feed.close(); }
        }"""
    )
    assert "POST /api/v1/channels/<id>/messages" in error
    assert pages.problems == []


def test_the_javascript_client_receives_and_sends_json_values_with_payload_json(keyed_server, pages):
    """docs/javascript-client.md, ``payload: "json"``: over both transports, a pushed JSON value arrives as that
    value, and ``send()`` publishes a JSON value; a text subscriber gets the JSON text."""
    page = pages.open(f"{keyed_server.http}/web/chat/")
    page.evaluate(
        """() => {
            window.got = { json: [], text: [], feed: [] };
            const count = () => {
                document.body.dataset.got = [got.json.length, got.text.length, got.feed.length].join(" ");
            };
            const options = { channel: "other-chat", transport: "ws", echo: true };
            window.jsonSub = Realtime.connect({ ...options, clientId: "json-page", payload: "json" });
            window.textSub = Realtime.connect({ ...options, clientId: "text-page" });
            const feed = Realtime.connect({ channel: "feed", transport: "sse", payload: "json" });
            jsonSub.on("message", (message) => { got.json.push(message.payload); count(); });
            textSub.on("message", (message) => { got.text.push(message.payload); count(); });
            feed.on("message", (message) => { got.feed.push(message.payload); count(); });
            let open = 0;
            for (const sub of [jsonSub, textSub, feed]) {
                sub.on("status", ({ state }) => {
                    if (state === "open") document.body.dataset.open = String(++open);
                });
            }
        }"""
    )
    body = page.locator("body")
    expect(body).to_have_attribute("data-open", "3")
    for channel in ("chat-2", "feed-1"):
        response = httpx.post(
            f"{keyed_server.http}/api/v1/channels/{channel}/messages", json={"payload": {"order": 42}}, headers=AUTH
        )
        assert response.status_code == 201, response.text
    expect(body).to_have_attribute("data-got", "1 1 1")
    assert page.evaluate("window.jsonSub.send({ order: 43, items: [1, 'two'] })") is True
    expect(body).to_have_attribute("data-got", "2 2 1")
    got = page.evaluate("window.got")
    assert got["json"] == [{"order": 42}, {"order": 43, "items": [1, "two"]}]
    assert got["text"] == ['{"order":42}', '{"order":43,"items":[1,"two"]}']
    assert got["feed"] == [{"order": 42}]
    page.evaluate("window.jsonSub.close(); window.textSub.close()")
    assert pages.problems == []


def test_a_replaced_page_says_so_and_does_not_take_the_slot_back(start_server, pages):
    """``duplicate_client_id: replace``: a page whose clientId joined elsewhere stops (4001); were it
    to reconnect, it would replace the newer connection, and the two would alternate for ever."""
    server = start_server(pages_config().replace("pubsub:", '  duplicate_client_id: "replace"\npubsub:'))
    page = pages.open(f"{server.http}/web/chat/")
    page.evaluate("sessionStorage.setItem('realtime.chat.tag', 'abc123')")
    join_chat(page, "Ivy")
    with websockets.sync.client.connect(server.channel_url("chat-1", clientId="Ivy-abc123")) as newer:
        expect(page.get_by_role("alert")).to_contain_text("replaced this one")
        expect(page.get_by_role("alert")).to_contain_text("4001")
        expect(page.get_by_role("status").first).to_contain_text("Disconnected")
        newer.send("still mine")  # the newer connection keeps its slot: the page did not come back
        assert httpx.get(server.channel_url("chat-1", scheme="http", upgrade="0"), timeout=5).json()["connections"] == 1
    assert pages.problems == []


# --- The landing page and the API docs, under the service's own Content-Security-Policy ------------


def open_with_service_csp(pages: Pages, url: str) -> Page:
    """Like ``pages.open``, but the page keeps the header the service sent, and every
    ``securitypolicyviolation`` event is recorded in ``window.cspViolations``."""
    context = pages.browser.new_context(viewport={"width": 1280, "height": 800})
    pages.contexts.append(context)
    context.add_init_script(RECORD_CSP_VIOLATIONS)
    page = context.new_page()
    page.on("dialog", pages._dialog)
    page.on("pageerror", lambda error: pages.problems.append(f"uncaught error: {error}"))
    page.on("console", lambda message: message.type == "error" and pages.problems.append(message.text))
    response = page.goto(url)
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    return page


def test_the_landing_page_leads_to_the_api_docs_which_publish_a_message(keyed_server, pages, tmp_path):
    """/ links the API docs; Swagger UI, served from this service's files, renders the document with its
    examples and publishes with the API key typed into it, with no CSP violation or script error."""
    page = open_with_service_csp(pages, f"{keyed_server.http}/")
    expect(page).to_have_title("Realtime")
    for name in ("Chat", "Notifications", "Admin", "OpenAPI document", "/healthz", "/readyz", "/metrics"):
        expect(page.get_by_role("main").get_by_role("link", name=name, exact=True)).to_be_visible()
    save_screenshot(page, "landing.png", tmp_path)
    page.get_by_role("main").get_by_role("link", name="API docs").click()
    expect(page).to_have_url(f"{keyed_server.http}/api/docs/")
    expect(page.get_by_role("heading", name=re.compile("Realtime API"))).to_be_visible()
    push = page.locator("#operations-Messages-post_api_v1_channels__channel__messages")
    expect(push).to_be_visible()
    save_screenshot(page, "api-docs.png", tmp_path)
    assert page.evaluate("window.cspViolations") == []

    page.get_by_role("button", name="Authorize").first.click()
    page.get_by_label("auth-bearer-value").fill(API_KEY)
    page.get_by_role("button", name="Apply credentials").click()
    page.locator(".modal-ux .btn-done").click()

    push.locator(".opblock-summary-control").click()
    expect(push.locator(".body-param__example, .highlight-code").first).to_contain_text('"payload": "hello"')
    push.get_by_role("button", name="Try it out").click()
    push.locator('input[placeholder="channel"]').fill("chat")
    with websockets.sync.client.connect(keyed_server.channel_url("chat-1", clientId="docs-reader")) as reader:
        push.get_by_role("button", name="Execute").click()
        expect(push.locator(".live-responses-table tbody .response-col_status").first).to_contain_text("201")
        received = json.loads(reader.recv(timeout=5))
    assert received["payload"] == "hello"
    assert page.evaluate("window.cspViolations") == []
    assert pages.problems == []
