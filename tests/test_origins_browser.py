"""realtime.js on a page of another origin, in a real browser (Debian Chromium driven by Playwright) against
real daphne: an origin the service refuses gets an ``error`` event with the reason and the status ``closed``
(``refused``), and no further request; an origin allowed by ``REALTIME_ALLOWED_ORIGINS`` is served.

The pages are fulfilled by Playwright at made-up origins (``http://allowed.test``, ``http://refused.test``) and load
realtime.js from the service. Synchronous, like test_pages_browser.py.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import Page

from tests.support.auth import API_KEY
from tests.support.configs import CHAT_AND_FEED, memory_config
from tests.test_pages_browser import push

pytestmark = pytest.mark.browser

ALLOWED = "http://allowed.test"
REFUSED = "http://refused.test"

# An init script: every EventSource and fetch the page starts is listed in ``window.started``, as it starts.
COUNT_REQUESTS = """
window.started = [];
const NativeEventSource = window.EventSource;
window.EventSource = class extends NativeEventSource {
    constructor(url, init) {
        super(url, init);
        window.started.push("stream " + url);
    }
};
const nativeFetch = window.fetch.bind(window);
window.fetch = (input, init) => {
    window.started.push("fetch " + String(input));
    return nativeFetch(input, init);
};
"""

# Subscribes as docs/javascript-client.md shows, recording what each subscription reports in ``window.seen``.
SUBSCRIBE = """([name, options]) => {
    const seen = (window.seen = window.seen || {})[name] = { states: [], statuses: [], errors: [], messages: [] };
    const sub = Realtime.connect(options);
    sub.on("status", (status) => { seen.states.push(status.state); seen.statuses.push(status); });
    sub.on("error", (error) => seen.errors.push(error));
    sub.on("message", (message) => seen.messages.push(message.payload));
}"""


@pytest.fixture(scope="module")
def server(start_module_server):
    """No allowed origin in the YAML file; one from the environment."""
    return start_module_server(
        memory_config() + CHAT_AND_FEED, env={"REALTIME_ALLOWED_ORIGINS": ALLOWED, "REALTIME_API_KEYS": API_KEY}
    )


@pytest.fixture
def open_page(chromium, server):
    """Opens a page at ``origin`` that loads the service's realtime.js, with the browser's clock under the test's
    control; yields it with the channel URLs it requests (``page.requested``) and its WebSockets."""
    contexts = []

    def open_at(origin: str) -> Page:
        context = chromium.new_context()
        contexts.append(context)
        html = (
            f'<!doctype html><title>{origin}</title><script src="{server.http}/static/realtime/realtime.js"></script>'
        )
        context.route(f"{origin}/", lambda route: route.fulfill(content_type="text/html", body=html))
        context.add_init_script(COUNT_REQUESTS)
        page = context.new_page()
        page.requested = []
        page.sockets = []
        page.on("request", lambda request: "/api/v1/channels/" in request.url and page.requested.append(request.url))
        page.on("websocket", lambda socket: page.sockets.append(socket.url))
        page.clock.install()
        page.goto(f"{origin}/")
        return page

    yield open_at
    for context in contexts:
        context.close()


def options(server, channel: str, transport: str) -> dict:
    # Short backoff: a retry, if any were scheduled, would come within the minute the test lets pass.
    return {
        "channel": channel,
        "transport": transport,
        "baseUrl": f"{server.http}/api/v1/channels/",
        "minDelay": 100,
        "maxDelay": 1000,
    }


def test_a_refused_origin_is_told_why_and_no_retry_follows(server, open_page):
    page = open_page(REFUSED)
    page.evaluate(SUBSCRIBE, ["feed", {**options(server, "feed-1", "sse"), "clientId": "refused-reader"}])
    page.evaluate(SUBSCRIBE, ["chat", {**options(server, "chat-1", "ws"), "clientId": "refused-talker"}])
    page.wait_for_function("() => ['feed', 'chat'].every((name) => window.seen[name].states.includes('closed'))")

    for name in ("feed", "chat"):
        seen = page.evaluate(f"window.seen.{name}")
        [error] = seen["errors"]
        assert error["code"] == 4403
        assert error["error"] == "origin_not_allowed"
        assert error["permanent"] is True
        assert f"Origin '{REFUSED}' may not subscribe" in error["message"]
        assert "server.allowed_origins" in error["description"]
        # A refused WebSocket is accepted, then closed with its reason (transports/routing.py refuse_websocket).
        assert seen["states"] == {"feed": ["connecting", "closed"], "chat": ["connecting", "open", "closed"]}[name]
        closed = seen["statuses"][-1]
        assert closed["refused"] is True
        assert closed["code"] == 4403
    assert page.evaluate("window.seen.feed.errors[0].status") == 403

    # Let a minute pass in the page: any retry the client had scheduled would run now.
    page.clock.run_for(60_000)
    started = page.evaluate("window.started")
    assert [entry.split("?")[0] for entry in started] == [
        f"stream {server.http}/api/v1/channels/feed-1",
        f"fetch {server.http}/api/v1/channels/feed-1",
    ]
    assert "upgrade=0" in started[1]
    assert len(page.requested) == 2, page.requested
    assert len(page.sockets) == 1, page.sockets
    assert page.evaluate("[window.seen.feed.states.length, window.seen.chat.states.length]") == [2, 3]


def test_an_origin_allowed_by_the_environment_is_served(server, open_page):
    page = open_page(ALLOWED)
    page.evaluate(SUBSCRIBE, ["feed", {**options(server, "feed-1", "sse"), "clientId": "allowed-reader"}])
    page.evaluate(SUBSCRIBE, ["chat", {**options(server, "chat-1", "ws"), "clientId": "allowed-talker"}])
    page.wait_for_function("() => ['feed', 'chat'].every((name) => window.seen[name].states.includes('open'))")

    push(server, "feed-1", "to the allowed page")
    push(server, "chat-1", "to the allowed talker")
    page.wait_for_function("() => window.seen.feed.messages.length && window.seen.chat.messages.length")
    assert page.evaluate("[window.seen.feed.messages, window.seen.chat.messages]") == [
        ["to the allowed page"],
        ["to the allowed talker"],
    ]
    assert page.evaluate("[window.seen.feed.errors, window.seen.chat.errors]") == [[], []]
