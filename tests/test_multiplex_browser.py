"""The multiplexed browser client (``Realtime.multiplex``, static/realtime/realtime-multiplex.js) and the
notifications page following several channels, in Debian Chromium driven by Playwright against real servers.

The connections a page opens are counted from its own network events (every WebSocket, every
EventSource request) and, on the server's side, from ``/metrics``. The fallback to one-channel URLs is
shown against a server without the multiplexed endpoints, played by Playwright's routing: the event
stream answers 404 as the Go service does, the WebSocket closes with ``4404 not_found`` as a release of
this service before multiplexing did (transports/routing.py, ``refuse_websocket``).

The tests are synchronous on purpose: Playwright's sync API and pytest-asyncio's auto mode clash.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import websockets.sync.client
from playwright.sync_api import Page, WebSocketRoute, expect
from prometheus_client.parser import text_string_to_metric_families

from tests.support.auth import API_KEY, AUTH
from tests.support.configs import memory_config, on_redis

pytestmark = pytest.mark.browser

expect.set_options(timeout=15_000)

METRICS_TOKEN = "scrape-token-for-the-multiplexing-browser-tests"
ENV = {"REALTIME_API_KEYS": API_KEY, "METRICS_TOKEN": METRICS_TOKEN}
CONFIG = (
    memory_config(render_chat_html=True, render_notifications_html=True, sse_retry=500)
    + """
  news: {id: "news-1", type: "SSE"}
  alerts: {id: "alerts-1", type: "SSE"}
  chat: {id: "chat-1", type: "WS"}
  room: {id: "room-1", type: "WS"}
  digest: {id: "digest-1", type: "SSE"}
  billing: {id: "billing-1", type: "SSE"}
"""
)

# Records what a multiplexed client does, and mirrors it into the page's <body> data attributes, which
# the test waits on (the pages' strict CSP forbids the string evaluation wait_for_function would need).
HARNESS = """([options, channels]) => {
    const got = (window.got = { messages: [], gaps: [], errors: [], states: [], fallback: null });
    const mux = (window.mux = Realtime.multiplex(options));
    const body = document.body;
    const show = () => {
        body.dataset.messages = got.messages.map((m) => `${m.channelId}:${m.payload}`).join(" ");
        body.dataset.gaps = got.gaps.map((gap) => `${gap.channel}:${gap.reason}`).join(" ");
        body.dataset.errors = got.errors.map((e) => `${e.channel || "-"}:${e.code}:${e.error}`).join(" ");
        body.dataset.subscribed = mux.channels.filter((c) => mux.get(c).state === "subscribed").join(" ");
        body.dataset.state = mux.state;
        body.dataset.mode = String(mux.mode);
    };
    window.follow = (channel, subscribeOptions) => {
        const onMessage = (message) => { got.messages.push(message); show(); };
        const sub = mux.subscribe(channel, onMessage, subscribeOptions || {});
        sub.on("subscribed", show);
        sub.on("gap", (gap) => { got.gaps.push(gap); show(); });
        sub.on("error", (error) => { got.errors.push(error); show(); });
        return sub;
    };
    window.leave = (channel) => { const left = mux.unsubscribe(channel); show(); return left; };
    mux.on("status", (status) => { got.states.push(status.state); show(); });
    mux.on("fallback", (fallback) => { got.fallback = fallback.reason; show(); });
    mux.on("error", (error) => { got.errors.push(error); show(); });
    for (const channel of channels) follow(channel);
    show();
}"""

FAST = {"minDelay": 200, "maxDelay": 1000}


@pytest.fixture(scope="module")
def server(start_module_server):
    """Both pages on, MEMORY; the server API and /metrics need their keys."""
    return start_module_server(CONFIG, env=ENV, server="uvicorn")


@dataclass
class Traffic:
    """The connections a page opened: its WebSockets and event streams, by URL."""

    sockets: list[str] = field(default_factory=list)
    streams: list[str] = field(default_factory=list)
    # The status each event-stream request was answered with, in the order the answers came.
    answers: list[int] = field(default_factory=list)

    def watch(self, page: Page) -> Traffic:
        page.on("websocket", lambda socket: self.sockets.append(socket.url))
        page.on("request", lambda request: request.resource_type == "eventsource" and self.streams.append(request.url))
        page.on(
            "response",
            lambda response: response.request.resource_type == "eventsource" and self.answers.append(response.status),
        )
        return self

    def wait_for_answers(self, page: Page, within: float = 5) -> None:
        """Until every event-stream request seen has been answered (Playwright delivers events while it waits)."""
        deadline = time.monotonic() + within
        while len(self.answers) < len(self.streams):
            assert time.monotonic() < deadline, (self.streams, self.answers)
            page.wait_for_timeout(20)

    def paths(self) -> list[str]:
        return [urlsplit(url).path for url in self.sockets + self.streams]


def open_client(pages, server, options: dict, channels: list[str]) -> tuple[Page, Traffic]:
    """A page with realtime.js and realtime-multiplex.js loaded (the chat page, which connects only on Join),
    running a multiplexed client that follows ``channels``."""
    page = pages.open(f"{server.http}/web/chat/")
    traffic = Traffic().watch(page)
    page.evaluate(HARNESS, [{**FAST, **options}, channels])
    return page, traffic


def push(server, channel: str, payload: str) -> dict:
    """Publish through the HTTP API, as a backend would."""
    response = httpx.post(f"{server.http}/api/v1/channels/{channel}/messages", json={"payload": payload}, headers=AUTH)
    assert response.status_code == 201, response.text
    return response.json()


def subscriptions(server) -> dict[tuple[str, str], float]:
    """Open subscriptions by (channel, transport), and multiplexed sockets opened, from ``/metrics``."""
    response = httpx.get(f"{server.http}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=5)
    assert response.status_code == 200, response.text
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == "realtime_connections":
                samples[(sample.labels["channel"], sample.labels["transport"])] = sample.value
            if sample.name == "realtime_connections_opened_total" and sample.labels["transport"] == "multiplexed":
                samples[("sockets", "multiplexed")] = sample.value
    return samples


def test_one_websocket_carries_several_channels_and_subscribes_and_unsubscribes_on_it(server, pages):
    before = subscriptions(server)
    page, traffic = open_client(pages, server, {"transport": "ws", "clientId": "mux-reader"}, ["chat", "room", "news"])
    body = page.locator("body")
    expect(body).to_have_attribute("data-subscribed", "chat room news")
    push(server, "chat-1", "c1")
    push(server, "room-1", "r1")
    push(server, "news-1", "n1")
    expect(body).to_have_attribute("data-messages", "chat-1:c1 room-1:r1 news-1:n1")
    # One connection for the three channels, as the page and the server see it.
    assert traffic.paths() == ["/api/v1/connect"]
    during = subscriptions(server)
    assert during[("sockets", "multiplexed")] == before.get(("sockets", "multiplexed"), 0) + 1
    for channel in ("chat-1", "room-1", "news-1"):
        assert during[(channel, "WS")] == before.get((channel, "WS"), 0) + 1, channel

    # Publishing on the same connection: acked with a position, delivered to a one-channel subscriber.
    with websockets.sync.client.connect(f"{server.ws}/api/v1/channels/chat-1?clientId=listener") as listener:
        ack = page.evaluate("mux.publish('chat', 'from the page')")
        assert ack["control"] == "published" and ack["channel"] == "chat-1"
        received = json.loads(listener.recv(timeout=5))
        assert (received["payload"], received["clientId"]) == ("from the page", "mux-reader")
        assert f"{received['epoch']}-{received['offset']}" == ack["position"]
    refused = page.evaluate("mux.publish('news', 'x').then(() => null, (error) => [error.code, error.error])")
    assert refused == [4403, "read_only_channel"]

    # Unsubscribing stops that channel only; its slot is given back.
    room_position = page.evaluate("mux.get('room').position")
    assert page.evaluate("leave('room')") is True
    expect(body).to_have_attribute("data-subscribed", "chat news")
    push(server, "room-1", "r2 while away")
    push(server, "chat-1", "c2")
    expect(body).to_have_attribute("data-messages", "chat-1:c1 room-1:r1 news-1:n1 chat-1:c2")
    assert subscriptions(server).get(("room-1", "WS"), 0) == before.get(("room-1", "WS"), 0)
    # Subscribing again from the kept position catches up with what was missed, on the same socket.
    page.evaluate("([position]) => { follow('room', { since: position }); }", [room_position])
    expect(body).to_have_attribute("data-messages", "chat-1:c1 room-1:r1 news-1:n1 chat-1:c2 room-1:r2 while away")
    expect(body).to_have_attribute("data-subscribed", "chat news room")
    assert traffic.paths() == ["/api/v1/connect"]
    page.evaluate("mux.close()")
    assert pages.problems == []


def test_one_event_stream_carries_several_channels_and_follows_subscribe_and_unsubscribe(server, pages):
    page, traffic = open_client(pages, server, {"transport": "sse", "clientId": "stream-reader"}, ["news", "alerts"])
    body = page.locator("body")
    expect(body).to_have_attribute("data-subscribed", "news alerts")
    push(server, "news-1", "n1")
    push(server, "alerts-1", "a1")
    expect(body).to_have_attribute("data-messages", "news-1:n1 alerts-1:a1")
    assert len(traffic.streams) == 1 and traffic.sockets == []
    query = parse_qs(urlsplit(traffic.streams[0]).query)
    assert urlsplit(traffic.streams[0]).path == "/api/v1/events"
    assert query["channel"] == ["news", "alerts"]
    counts = subscriptions(server)
    assert counts[("news-1", "SSE")] == 1 and counts[("alerts-1", "SSE")] == 1

    # A WS channel joins read-only; the stream is reopened once for both changes, resuming every channel.
    # An event stream has no closing handshake: the new stream may reach the server before it has seen
    # the old one go, and find the clientId still connected to news (409, docs/protocol.md), which the
    # client retries. So every request after the first asks for the new set, and only the last is let in.
    page.evaluate("leave('alerts'); follow('chat');")
    expect(body).to_have_attribute("data-subscribed", "news chat")
    traffic.wait_for_answers(page)
    assert len(traffic.streams) >= 2
    assert traffic.answers[0] == 200 and traffic.answers[-1] == 200, traffic.answers
    assert set(traffic.answers[1:-1]) <= {409}, traffic.answers
    for url in traffic.streams[1:]:
        reopened = parse_qs(urlsplit(url).query)
        assert reopened["channel"] == ["news", "chat"]
        assert reopened["lastEventId"][0].startswith("news-1:")
    push(server, "alerts-1", "a2 not followed")
    push(server, "chat-1", "c1")
    push(server, "news-1", "n2")
    expect(body).to_have_attribute("data-messages", "news-1:n1 alerts-1:a1 chat-1:c1 news-1:n2")
    counts = subscriptions(server)
    assert counts.get(("alerts-1", "SSE"), 0) == 0 and counts[("chat-1", "SSE")] == 1
    page.evaluate("mux.close()")
    assert pages.problems == []


@pytest.mark.parametrize(("transport", "followed"), [("ws", "chat"), ("sse", "news")])
def test_a_channel_that_may_not_be_read_is_refused_alone_and_the_others_go_on(transport, followed, server, pages):
    page, traffic = open_client(pages, server, {"transport": transport}, [followed, "nowhere"])
    body = page.locator("body")
    expect(body).to_have_attribute("data-errors", "nowhere:4404:channel_not_found")
    expect(body).to_have_attribute("data-subscribed", followed)
    assert page.evaluate("mux.channels") == [followed]
    assert page.evaluate("got.errors[0].permanent") is True
    push(server, f"{followed}-1", "still here")
    expect(body).to_have_attribute("data-messages", f"{followed}-1:still here")
    assert set(traffic.paths()) == {"/api/v1/connect" if transport == "ws" else "/api/v1/events"}
    page.evaluate("mux.close()")
    assert pages.problems == []


@pytest.mark.parametrize(("transport", "channels"), [("ws", ["chat", "room"]), ("sse", ["news", "alerts"])])
def test_every_channel_resumes_after_its_server_restarts_with_nothing_lost(
    transport, channels, start_server, redis_server, pages
):
    """REDIS: what two channels received while the page's instance was down reaches it, once each, in order."""
    config = on_redis(CONFIG, redis_server.url)
    # A short lease frees a slot the stopped instance could not give back (the page keeps its clientId).
    env = {**ENV, "REALTIME_PRESENCE_LEASE_SECONDS": "3"}
    first = start_server(config, env=env)
    second = start_server(config, env=env, database_path=first.database_path, sync=False)
    ids = [f"{channel}-1" for channel in channels]
    page, traffic = open_client(pages, first, {"transport": transport, "clientId": f"resumer-{transport}"}, channels)
    body = page.locator("body")
    expect(body).to_have_attribute("data-subscribed", " ".join(channels))
    for channel_id in ids:
        push(first, channel_id, "before")
    expect(body).to_have_attribute("data-messages", " ".join(f"{c}:before" for c in ids))

    first.stop()
    expect(body).to_have_attribute("data-state", "reconnecting")
    for text in ("away-1", "away-2"):
        for channel_id in ids:
            push(second, channel_id, text)
    first.run()

    expected = [f"{c}:before" for c in ids] + [f"{c}:{text}" for c in ids for text in ("away-1", "away-2")]
    expect(body).to_have_attribute("data-state", "open")
    expect(body).to_have_attribute("data-subscribed", " ".join(channels))
    messages = page.evaluate("got.messages.map((m) => `${m.channelId}:${m.payload}`)")
    assert sorted(messages) == sorted(expected) and len(messages) == len(set(messages))
    for channel_id in ids:
        in_order = [f"{channel_id}:{text}" for text in ("before", "away-1", "away-2")]
        assert [m for m in messages if m.startswith(channel_id)] == in_order
    assert page.evaluate("got.gaps") == []
    # Still one connection at a time: the first, then the reconnects, all multiplexed.
    assert set(traffic.paths()) == {"/api/v1/connect" if transport == "ws" else "/api/v1/events"}
    page.evaluate("mux.close()")
    assert pages.problems == []


@pytest.mark.parametrize(("transport", "channels"), [("ws", ["chat", "room"]), ("sse", ["news", "alerts"])])
def test_a_memory_restart_is_reported_as_a_gap_on_each_channel(transport, channels, start_server, pages):
    server = start_server(CONFIG, env=ENV)
    page, _ = open_client(pages, server, {"transport": transport}, channels)
    body = page.locator("body")
    expect(body).to_have_attribute("data-subscribed", " ".join(channels))
    for channel in channels:
        push(server, f"{channel}-1", "before")
    expect(body).to_have_attribute("data-messages", " ".join(f"{c}-1:before" for c in channels))
    server.stop()
    expect(body).to_have_attribute("data-state", "reconnecting")
    server.run()
    expect(body).to_have_attribute("data-gaps", " ".join(f"{c}:epoch_changed" for c in channels))
    expect(body).to_have_attribute("data-state", "open")
    push(server, f"{channels[1]}-1", "after")
    expect(body).to_have_attribute(
        "data-messages", " ".join([*(f"{c}-1:before" for c in channels), f"{channels[1]}-1:after"])
    )
    page.evaluate("mux.close()")
    assert pages.problems == []


def refuse_like_an_older_release(socket: WebSocketRoute) -> None:
    """What this service answered at /api/v1/connect before multiplexing: a close frame, then 4404."""
    REFUSED_SOCKETS.append(socket.url)
    socket.send(json.dumps({"control": "close", "code": 4404, "error": "not_found", "message": "No WebSocket here."}))
    socket.close(code=4404, reason="")


REFUSED_SOCKETS: list[str] = []


@pytest.mark.parametrize(("transport", "channels"), [("ws", ["chat", "room"]), ("sse", ["news", "alerts"])])
def test_against_a_server_without_multiplexing_it_falls_back_to_one_channel_urls(transport, channels, server, pages):
    page = pages.open(f"{server.http}/web/chat/")
    if transport == "ws":
        page.route_web_socket(re.compile(r"/api/v1/connect"), refuse_like_an_older_release)
    else:
        page.route(re.compile(r"/api/v1/events"), lambda route: route.fulfill(status=404, body="404 page not found\n"))
    traffic = Traffic().watch(page)
    page.evaluate(HARNESS, [{**FAST, "transport": transport, "clientId": f"old-{transport}"}, channels])
    body = page.locator("body")
    expect(body).to_have_attribute("data-mode", "channels")
    expect(body).to_have_attribute("data-subscribed", " ".join(channels))
    expect(body).to_have_attribute("data-state", "open")
    assert page.evaluate("got.fallback")
    one_channel = [f"/api/v1/channels/{channel}" for channel in channels]
    if transport == "ws":
        # A routed WebSocket never reaches the page's network events.
        assert [urlsplit(url).path for url in REFUSED_SOCKETS] == ["/api/v1/connect"]
        assert sorted(traffic.paths()) == one_channel
    else:
        assert sorted(traffic.paths()) == sorted(["/api/v1/events", *one_channel])
    for channel in channels:
        push(server, f"{channel}-1", "hello")
    expect(body).to_have_attribute("data-messages", " ".join(f"{c}-1:hello" for c in channels))

    page.evaluate("([channel]) => leave(channel)", [channels[0]])
    expect(body).to_have_attribute("data-subscribed", channels[1])
    push(server, f"{channels[0]}-1", "not followed")
    push(server, f"{channels[1]}-1", "still followed")
    expect(body).to_have_attribute(
        "data-messages", " ".join([*(f"{c}-1:hello" for c in channels), f"{channels[1]}-1:still followed"])
    )
    if transport == "ws":
        with websockets.sync.client.connect(f"{server.ws}/api/v1/channels/room-1?clientId=old-listener") as listener:
            assert page.evaluate("mux.publish('room', 'through the fallback')")["fallback"] is True
            assert json.loads(listener.recv(timeout=5))["payload"] == "through the fallback"
    page.evaluate("mux.close()")
    assert pages.problems == []


def test_the_notifications_page_follows_several_channels_on_one_stream(server, pages):
    page = pages.open(f"{server.http}/web/chat/")
    traffic = Traffic().watch(page)
    page.goto(f"{server.http}/web/notifications/?channel=digest&channel=billing-1")
    expect(page.locator("#following")).to_have_text(
        "Following 2 channels on one stream: digest, billing. Pick one below to follow it alone."
    )
    expect(page.get_by_role("status").first).to_have_text("Listening to digest, billing.")
    push(server, "digest-1", "Build 41 passed")
    push(server, "billing-1", "Disk almost full")
    expect(page.locator(".notification .text")).to_have_text(["Disk almost full", "Build 41 passed"])
    expect(page.locator(".notification .channel")).to_have_text(["billing", "digest"])
    expect(page.locator("#unread-count")).to_have_text("2")
    # One event stream for both channels, and no one-channel stream.
    assert len(traffic.streams) == 1, traffic.streams
    stream = urlsplit(traffic.streams[0])
    assert stream.path == "/api/v1/events"
    assert parse_qs(stream.query)["channel"] == ["digest-1", "billing-1"]
    counts = subscriptions(server)
    assert counts[("digest-1", "SSE")] == 1 and counts[("billing-1", "SSE")] == 1

    # Read marks are kept per channel: after a reload the history is back, read.
    page.get_by_role("button", name="Mark all as read").click()
    expect(page.locator("#unread-count")).to_have_text("0")
    page.reload()
    expect(page.get_by_role("status").first).to_have_text("Listening to digest, billing.")
    expect(page.locator(".notification .text")).to_have_text(["Disk almost full", "Build 41 passed"])
    expect(page.locator("#unread-count")).to_have_text("0")
    push(server, "digest-1", "Build 42 passed")
    expect(page.locator(".notification.unread .text")).to_have_text(["Build 42 passed"])
    assert all(urlsplit(url).path == "/api/v1/events" for url in traffic.streams)

    # Picking one channel follows it alone, on the one-channel URL, as before.
    page.get_by_label("Listen to").select_option(label="digest")
    page.get_by_role("button", name="Listen").click()
    expect(page.get_by_role("status").first).to_have_text("Listening to digest.")
    expect(page.locator("#following")).to_have_count(0)
    assert urlsplit(traffic.streams[-1]).path == "/api/v1/channels/digest-1"
    assert parse_qs(urlsplit(page.url).query)["channel"] == ["digest-1"]
    assert pages.problems == []
