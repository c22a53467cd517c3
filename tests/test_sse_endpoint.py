"""The event stream of SSE channels and the ``?upgrade=0`` preflight, with httpx, under daphne and under uvicorn.

Messages reach SSE channels through the server API (``POST /api/v1/channels/<channel>/messages``),
which publishes with ``services.message_publish`` like every other path.
"""

from __future__ import annotations

import asyncio
import json
import socket
from urllib.parse import urlencode

import httpx
import pytest

from tests.support.auth import API_KEY
from tests.support.clients import connected, connections, open_stream, opened
from tests.support.configs import memory_config
from tests.support.waiting import wait_until
from tests.support.wire import open_raw

CONFIG = (
    memory_config(sse_keepalive=0.3, sse_retry=2500)
    + """
  opening: {id: "opening-1", type: "SSE"}
  envelope: {id: "envelope-1", type: "SSE"}
  keepalive: {id: "keepalive-1", type: "SSE"}
  resume: {id: "resume-1", type: "SSE"}
  resume-query: {id: "resume-query-1", type: "SSE"}
  header-wins: {id: "header-wins-1", type: "SSE"}
  short: {id: "short-1", type: "SSE", history_size: 2}
  refusals: {id: "refusals-1", type: "SSE", max_of_channel_connections: 1}
  chat: {id: "chat-1", type: "WS", max_of_channel_connections: 7}
  described: {id: "described-1", type: "SSE", max_of_channel_connections: 2}
  freed: {id: "freed-1", type: "SSE", max_of_channel_connections: 1}
  isolated-a: {id: "isolated-a-1", type: "SSE"}
  isolated-b: {id: "isolated-b-1", type: "SSE"}
  order: {id: "order-1", type: "SSE"}
"""
)

SLOW_CONFIG = (
    memory_config(max_pending_bytes=65536)
    + """
  slow: {id: "slow-1", type: "SSE"}
"""
)


@pytest.fixture(scope="module")
def server(start_module_server, asgi_server):
    return start_module_server(CONFIG, env={"REALTIME_API_KEYS": API_KEY}, server=asgi_server)


@pytest.fixture(scope="module")
def api():
    """One keep-alive client for the server API (a new connection per push costs ~25 ms)."""
    with httpx.Client(timeout=5, headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        yield client


def channel_url(server, channel: str, **query: str) -> str:
    url = f"{server.http}/api/v1/channels/{channel}"
    return f"{url}?{urlencode(query)}" if query else url


def publish(api, server, channel: str, payload: str) -> dict:
    response = api.post(f"{server.http}/api/v1/channels/{channel}/messages", json={"payload": payload})
    assert response.status_code == 201, response.text
    return response.json()


async def test_stream_opens_with_headers_retry_hint_and_stream_open(server):
    async with open_stream(channel_url(server, "opening-1", clientId="watcher")) as (response, events):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        first = await events.block()
        assert first["retry"] == "2500"
        assert await opened(events) == {"channelId": "opening-1", "clientId": "watcher"}


async def test_message_is_a_message_event_with_the_envelope_and_a_resumable_id(server, api):
    async with open_stream(channel_url(server, "envelope", clientId="reader")) as (_, events):
        await opened(events)
        receipt = await asyncio.to_thread(publish, api, server, "envelope-1", "hello, stream")
        block = await events.event("message")
    message = json.loads(block["data"])
    assert set(message) == {"id", "channelId", "clientId", "payload", "createdAt", "offset", "epoch"}
    assert message["payload"] == "hello, stream"
    assert message["channelId"] == "envelope-1"
    assert message["clientId"] == "server-message"
    assert message["id"] == receipt["id"]
    assert message["createdAt"].endswith("Z")
    assert block["id"] == f"{message['epoch']}-{message['offset']}" == receipt["position"]


async def test_keepalive_comments_arrive_while_the_channel_is_quiet(server):
    async with open_stream(channel_url(server, "keepalive-1")) as (_, events):
        await opened(events)
        quiet = await events.block(within=3)
    assert quiet == {"comments": ["keep-alive"]}


async def test_messages_arrive_in_publish_order_exactly_once(server, api):
    count = 50
    async with (
        open_stream(channel_url(server, "order-1", clientId="first")) as (_, first),
        open_stream(channel_url(server, "order-1", clientId="second")) as (_, second),
    ):
        await opened(first)
        await opened(second)

        def publish_all():
            for index in range(count):
                publish(api, server, "order-1", f"m{index}")

        await asyncio.to_thread(publish_all)
        got_first = [(await first.message())[1] for _ in range(count)]
        got_second = [(await second.message())[1] for _ in range(count)]
    for got in (got_first, got_second):
        assert [m["payload"] for m in got] == [f"m{i}" for i in range(count)]
        assert len({m["id"] for m in got}) == count


async def test_messages_never_leak_to_another_channel(server, api):
    async with open_stream(channel_url(server, "isolated-b-1")) as (_, events):
        await opened(events)
        for index in range(3):
            await asyncio.to_thread(publish, api, server, "isolated-a-1", f"for a {index}")
        await asyncio.to_thread(publish, api, server, "isolated-b-1", "for b")
        _, message = await events.message()
    assert message["payload"] == "for b"
    assert message["channelId"] == "isolated-b-1"


async def test_last_event_id_resumes_exactly_the_missed_messages_in_order(server, api):
    async with open_stream(channel_url(server, "resume-1", clientId="resumer")) as (_, events):
        await opened(events)
        for index in range(2):
            await asyncio.to_thread(publish, api, server, "resume-1", f"m{index}")
        last_id, _ = await events.message()
        last_id, _ = await events.message()
    await wait_until(lambda: connections(server, "resume-1") == 0)
    for index in range(2, 5):
        await asyncio.to_thread(publish, api, server, "resume-1", f"m{index}")

    headers = {"Last-Event-ID": last_id}
    async with open_stream(channel_url(server, "resume-1", clientId="resumer"), headers) as (_, events):
        await opened(events)
        missed = [(await events.message())[1]["payload"] for _ in range(3)]
        await asyncio.to_thread(publish, api, server, "resume-1", "live")
        _, live = await events.message()
    assert missed == ["m2", "m3", "m4"]
    assert live["payload"] == "live"


@pytest.mark.parametrize("parameter", ["since", "lastEventId"])
async def test_query_position_resumes_like_last_event_id(server, parameter, api):
    receipts = [await asyncio.to_thread(publish, api, server, "resume-query-1", f"{parameter}-{i}") for i in range(3)]
    url = channel_url(server, "resume-query-1", **{parameter: receipts[0]["position"]})
    async with open_stream(url) as (_, events):
        await opened(events)
        missed = [(await events.message())[1]["payload"] for _ in range(2)]
        await asyncio.to_thread(publish, api, server, "resume-query-1", f"{parameter}-live")
        _, live = await events.message()
    assert missed == [f"{parameter}-1", f"{parameter}-2"]
    assert live["payload"] == f"{parameter}-live"


async def test_last_event_id_header_wins_over_the_since_in_the_url(server, api):
    """An EventSource reconnects to the same URL (with its ?since=) and sends its newer Last-Event-ID."""
    receipts = [await asyncio.to_thread(publish, api, server, "header-wins-1", f"m{i}") for i in range(4)]
    url = channel_url(server, "header-wins-1", since=receipts[0]["position"])
    async with open_stream(url, {"Last-Event-ID": receipts[2]["position"]}) as (_, events):
        await opened(events)
        _, first = await events.message()
    assert first["payload"] == "m3"


async def test_gap_event_when_history_no_longer_covers_the_position(server, api):
    receipts = [await asyncio.to_thread(publish, api, server, "short-1", f"m{i}") for i in range(5)]
    headers = {"Last-Event-ID": receipts[0]["position"]}
    async with open_stream(channel_url(server, "short-1"), headers) as (_, events):
        await opened(events)
        gap = json.loads((await events.event("gap"))["data"])
        after_gap = [(await events.message())[1]["payload"] for _ in range(2)]
    assert gap["control"] == "gap"
    assert gap["reason"] == "expired"
    assert gap["requested"] == receipts[0]["position"]
    assert gap["earliest"] == receipts[3]["position"]
    assert after_gap == ["m3", "m4"]


def refusal(server, channel: str, **query: str) -> httpx.Response:
    response = httpx.get(channel_url(server, channel, **query), timeout=5)
    assert response.headers["content-type"] == "application/json"
    assert {"error", "message"} <= set(response.json())
    return response


@pytest.mark.parametrize("client_id", ["", "x" * 129, "has space", "é"])
def test_malformed_client_id_is_refused_with_400(server, client_id):
    response = refusal(server, "refusals-1", clientId=client_id)
    assert response.status_code == 400
    assert response.json()["error"] == "bad_request"
    assert response.json()["field"] == "clientId"


def test_malformed_since_is_refused_with_400(server):
    response = refusal(server, "refusals-1", since="yesterday")
    assert response.status_code == 400
    assert response.json()["field"] == "since"


def test_unknown_channel_is_refused_with_404(server):
    response = refusal(server, "no-such-channel")
    assert response.status_code == 404
    assert response.json()["error"] == "channel_not_found"


def test_websocket_channel_as_a_stream_is_refused_with_400(server):
    response = refusal(server, "chat-1")
    assert response.status_code == 400
    assert response.json()["error"] == "wrong_transport"
    assert "WebSocket" in response.json()["message"]


async def test_connected_client_id_is_refused_with_409_and_full_channel_with_422(server):
    async with open_stream(channel_url(server, "refusals-1", clientId="holder")) as (_, events):
        await opened(events)
        taken = await asyncio.to_thread(refusal, server, "refusals-1", clientId="holder")
        full = await asyncio.to_thread(refusal, server, "refusals-1", clientId="newcomer")
    assert taken.status_code == 409
    assert taken.json()["error"] == "client_id_taken"
    assert full.status_code == 422
    assert full.json()["error"] == "channel_full"


async def test_closed_stream_frees_its_slot(server):
    for attempt in range(3):
        async with open_stream(channel_url(server, "freed-1", clientId=f"visitor-{attempt}")) as (response, events):
            assert response.status_code == 200
            await opened(events)
        await wait_until(lambda: connections(server, "freed-1") == 0)


def preflight(server, channel: str, **query: str) -> httpx.Response:
    return httpx.get(channel_url(server, channel, upgrade="0", **query), timeout=5)


async def test_preflight_describes_the_channel_without_registering_a_client(server):
    described = await asyncio.to_thread(preflight, server, "described", clientId="visitor")
    assert described.status_code == 200
    assert described.headers["content-type"] == "application/json"
    body = described.json()
    assert {"id", "name", "type", "connections", "max"} <= set(body)
    assert (body["id"], body["name"], body["type"], body["connections"], body["max"]) == (
        "described-1",
        "described",
        "SSE",
        0,
        2,
    )
    # The preflight took no slot: the same clientId opens the stream, then the count shows it.
    async with open_stream(channel_url(server, "described-1", clientId="visitor")) as (_, events):
        await opened(events)
        assert await connected(server, "described-1") == 1
        again = await asyncio.to_thread(preflight, server, "described-1", clientId="visitor")
        async with open_stream(channel_url(server, "described-1", clientId="second")) as (_, second):
            await opened(second)
            full = await asyncio.to_thread(preflight, server, "described-1")
    assert again.status_code == 409
    assert again.json()["error"] == "client_id_taken"
    assert full.status_code == 422
    assert full.json()["error"] == "channel_full"
    assert full.json()["channel"]["connections"] == 2


def test_preflight_of_a_websocket_channel_and_of_unknown_ones(server):
    chat = preflight(server, "chat")
    unknown = preflight(server, "missing")
    malformed = preflight(server, "chat", clientId="no spaces")
    assert chat.status_code == 200
    assert chat.json()["type"] == "WS"
    assert chat.json()["max"] == 7
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "channel_not_found"
    assert malformed.status_code == 400


def _raw_stream(server, path: str) -> socket.socket:
    """An SSE client that sends its request, reads the response head and then never reads again."""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nAccept: text/event-stream\r\n\r\n"
    return open_raw(server, request, status=b"HTTP/1.1 200", rcvbuf=4096)


async def test_slow_consumer_stream_ends_without_slowing_others(start_module_server, asgi_server, api):
    server = start_module_server(SLOW_CONFIG, env={"REALTIME_API_KEYS": API_KEY}, server=asgi_server)
    count, size = 400, 16 * 1024  # well past what the kernel buffers on loopback (~4 MiB)
    stalled = await asyncio.to_thread(_raw_stream, server, "/api/v1/channels/slow-1?clientId=stalled")
    try:
        async with open_stream(channel_url(server, "slow-1", clientId="reader")) as (_, events):
            await opened(events)
            assert await connected(server, "slow-1") == 2

            def publish_all():
                for index in range(count):
                    publish(api, server, "slow-1", f"{index:05d}" + "x" * size)

            async def read():
                return [(await events.message(within=10))[1] for _ in range(count)]

            _, received = await asyncio.wait_for(asyncio.gather(asyncio.to_thread(publish_all), read()), 60)
            assert [m["payload"][:5] for m in received] == [f"{i:05d}" for i in range(count)]
            await wait_until(lambda: connections(server, "slow-1") == 1)
        # The stalled client was disconnected: reading now drains what was buffered, then the end.
        stalled.settimeout(10)
        drained = 0
        while chunk := await asyncio.to_thread(_recv_or_empty, stalled):
            drained += len(chunk)
        assert drained < count * size
    finally:
        stalled.close()


def _recv_or_empty(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except ConnectionResetError:
        return b""
