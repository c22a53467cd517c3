"""Hostile channel ids, raw paths and query strings, and every method on every route, against a real daphne
(channels_app/transports/routing.py and channels_app/http/urls.py).

Requests are written on raw sockets, byte for byte, so nothing is normalised on the way (``..``
segments, ``%00``, invalid UTF-8). Whatever arrives, the service answers with a 4xx (never a 5xx,
never a traceback in its log), refuses what it must, and keeps serving. Moved from
test_hardening_paths.py; its hostile headers and hosts are in test_security.py, its origins in
test_origins.py.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import websockets

from tests.support.auth import API_KEY
from tests.support.configs import CHAT_AND_FEED, memory_config
from tests.support.hostile import assert_no_server_error, assert_still_serving, raw_request

CONFIG = memory_config(allow_create_new_channels=True) + CHAT_AND_FEED

HOSTILE_CHANNELS = [
    "..",
    ".",
    "%2e%2e",
    "%2E%2E%2F",
    "%252e%252e",
    "chat-1%2F..%2Ffeed-1",
    "..%2Fadmin",
    "%00",
    "chat-1%00",
    "chat-1%0d%0aSet-Cookie:%20x=1",
    "%FF%FE",
    "%C3%A9",
    "%E2%98%83",
    "%F0%9F%8E%89",
    "%ED%A0%80",  # an encoded lone surrogate (invalid UTF-8)
    "%",
    "%zz",
    "chat-1%3Fupgrade=0",
    "a" * 10_240,
    "%61" * 3_000,
    "<script>alert(1)</script>",
    "'%20OR%201=1--",
    "chat-1;jsessionid=1",
]
HOSTILE_RAW_PATHS = [
    b"/api/v1/channels/\xc3\xa9",  # raw UTF-8 bytes in the request line
    b"/api/v1/channels/\xff",
    b"/api/v1/channels/chat-1/../feed-1",
    b"/api/v1/channels/../../../../etc/passwd",
    b"/api/v1/channels//chat-1",
    b"/api/v1/channels/chat-1/messages/../../feed-1",
    b"//api/v1/channels/chat-1",
    b"/api/v1/channels/chat-1?" + b"x" * 12_000,
    b"/api/v1/channels/chat-1?" + b"&".join(b"clientId=%d" % index for index in range(2_000)),
    b"/api/v1/channels/chat-1?upgrade=0&clientId=%FF",
    b"/api/v1/channels/chat-1?upgrade=0&clientId=" + b"a" * 5_000,
    b"/api/v1/channels/feed-1?since=" + b"9" * 5_000,
    b"/api/v1/channels/chat-1/messages?limit=%C2%B2",
    b"/api/v1/channels/chat-1/messages?limit=99999999999999999999999",
    b"/api/v1/channels/chat-1/messages?since=%00",
    b"/static/../../channels_app/settings.py",
    b"/static/%2e%2e/%2e%2e/manage.py",
    b"/web/chat/?channel=%00%FF<b>",
    b"/admin/%2e%2e/%2e%2e/",
]
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "PROPFIND", "CONNECT"]
ROUTES = [
    "/api/v1/channels",
    "/api/v1/channels/chat-1",
    "/api/v1/channels/feed-1",
    "/api/v1/channels/chat-1/messages",
    "/api/v1/messages",
    "/api/v1/tokens",
    "/api/v1/openapi.json",
    "/healthz",
    "/readyz",
    "/metrics",
    "/web/chat/",
    "/admin/login/",
    "/static/realtime/realtime.js",
]


@pytest.fixture(scope="module")
def server(start_module_server):
    return start_module_server(CONFIG, env={"REALTIME_API_KEYS": API_KEY})


@pytest.mark.parametrize("channel", HOSTILE_CHANNELS)
def test_hostile_channel_ids_are_refused_on_every_route(server, channel):
    path = f"/api/v1/channels/{channel}".encode()
    key = f"Authorization: Bearer {API_KEY}".encode()
    attempts = [
        (b"GET", path + b"?upgrade=0", []),
        (b"GET", path + b"?clientId=hostile", []),
        (b"POST", path + b"/messages", [key, b"Content-Type: application/json"], b'{"payload": "x"}'),
        (b"GET", path + b"/messages", [key]),
        (b"DELETE", path, [key]),
        (b"POST", b"/api/v1/tokens", [key], json.dumps({"channel": channel}).encode()),
        (
            b"POST",
            b"/api/v1/messages",
            [key],
            json.dumps({"messages": [{"channel": channel, "payload": "x"}]}).encode(),
        ),
    ]
    for method, target, headers, *body in attempts:
        status, response = raw_request(server, method, target, headers, *body)
        assert_no_server_error(status, response, (method, target[:80]))
        # A 10 KB id is not echoed back whole.
        assert len(response) < 4096 or status == 200, (method, len(response))
        if method == b"GET" and status == 200:
            # Only a real channel can answer 200: traversal never reaches another resource.
            assert b'"id": "chat-1"' in response or b'"id": "feed-1"' in response or b"channelId" in response
    assert_still_serving(server)


def test_hostile_ids_over_websocket_are_refused_with_a_close_code(server):
    async def attempt(channel: str) -> int | None:
        try:
            async with websockets.connect(f"{server.ws}/api/v1/channels/{channel}?clientId=h") as ws:
                await asyncio.wait_for(ws.recv(), 5)
                await asyncio.wait_for(ws.recv(), 5)
        except websockets.ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None
        except websockets.InvalidStatus as refused:
            return refused.response.status_code
        except TimeoutError:
            return "open"
        return None

    async def scenario():
        return {channel: await attempt(channel) for channel in HOSTILE_CHANNELS if len(channel) < 8_000}

    codes = asyncio.run(scenario())
    # Twisted drops ";params" from a path segment, as URLs allow: this is channel chat-1.
    assert codes.pop("chat-1;jsessionid=1") == "open"
    assert {c: code for c, code in codes.items() if code not in (4404, 4400, 404, 400)} == {}
    assert_still_serving(server)


@pytest.mark.parametrize("path", HOSTILE_RAW_PATHS, ids=lambda path: repr(path[:40]))
def test_hostile_raw_paths_and_query_strings(server, path):
    status, response = raw_request(server, b"GET", path, [f"Authorization: Bearer {API_KEY}".encode()])
    assert_no_server_error(status, response, path[:80])
    if path.startswith(b"/static/"):
        assert b"SECRET" not in response and b"import" not in response
    assert_still_serving(server)


@pytest.mark.parametrize("route", ROUTES)
def test_every_method_on_every_route(server, route):
    for method in METHODS:
        status, response = raw_request(
            server, method.encode(), route.encode(), [f"Authorization: Bearer {API_KEY}".encode()]
        )
        assert_no_server_error(status, response, (method, route))
        head, _, body = response.partition(b"\r\n\r\n")
        if status == 405 and route.startswith("/api/"):
            assert b"\r\nallow: " in head.lower(), (method, route)
            assert method == "HEAD" or json.loads(body)["error"] == "method_not_allowed"
        if method == "GET" and route in ("/api/v1/channels/feed-1",):
            assert status == 200
    # HEAD on an event stream took no slot for long: the connection was closed.
    preflight = httpx.get(f"{server.http}/api/v1/channels/feed-1?upgrade=0", timeout=5).json()
    assert preflight["connections"] == 0
    assert_still_serving(server)
