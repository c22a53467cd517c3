"""Which origins may open a WebSocket (close 4403 otherwise) and read an event stream (CORS; 403 otherwise),
from ``server.allowed_origins`` and ``REALTIME_ALLOWED_ORIGINS``."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from types import SimpleNamespace

import httpx
import pytest
import websockets

from channels_app.transports.origins import cors_headers, origin_allowed, origin_not_allowed_body
from tests.support.auth import API_KEY
from tests.support.configs import CHAT_AND_FEED, memory_config


def server_config(*allowed: str, allow_all: bool = False) -> SimpleNamespace:
    return SimpleNamespace(allowed_origins=allowed, allow_all_origins=allow_all)


@pytest.mark.parametrize(
    ("origin", "host", "allowed"),
    [
        (None, "rt.example.com", True),  # not a browser
        ("https://rt.example.com", "rt.example.com", True),  # the service's own page
        ("http://127.0.0.1:8080", "127.0.0.1:8080", True),
        ("https://RT.example.com", "rt.example.com", True),
        ("https://rt.example.com", "rt.example.com:8443", False),  # another port is another origin
        ("https://app.example.com", "rt.example.com", True),  # listed
        ("https://app.example.com/", "rt.example.com", True),
        ("https://a.b.example.org", "rt.example.com", True),  # wildcard subdomain
        ("https://example.org", "rt.example.com", False),
        ("https://example.org.evil.com", "rt.example.com", False),
        ("https://x.example.org@evil.com", "rt.example.com", False),
        ("http://app.example.com", "rt.example.com", False),  # wrong scheme
        ("https://evil.com", "rt.example.com", False),
        ("null", "rt.example.com", False),
        ("not a url", "rt.example.com", False),
    ],
)
def test_origin_allowed(origin, host, allowed):
    config = server_config("https://app.example.com", "https://*.example.org")
    assert origin_allowed(origin, host, config) is allowed


def test_allow_all_origins_allows_every_origin_even_null():
    config = server_config(allow_all=True)
    assert origin_allowed("https://anything.test", "rt.example.com", config)
    assert origin_allowed("null", "rt.example.com", config)


def test_cors_headers_echo_an_allowed_origin_and_say_nothing_otherwise():
    config = server_config("https://app.example.com")
    assert cors_headers("https://app.example.com", "rt", config) == [
        (b"access-control-allow-origin", b"https://app.example.com"),
        (b"vary", b"Origin"),
    ]
    assert cors_headers("https://evil.com", "rt", config) == []
    assert cors_headers(None, "rt", config) == []
    assert cors_headers("https://x.test", "rt", server_config(allow_all=True))[0] == (
        b"access-control-allow-origin",
        b"*",
    )


CONFIG = memory_config(allowed_origins=["https://app.example.com", "https://*.example.org"]) + CHAT_AND_FEED

OPEN_CONFIG = memory_config(allow_all_origins=True) + CHAT_AND_FEED


@pytest.fixture(scope="module")
def server(start_module_server):
    return start_module_server(CONFIG)


@pytest.fixture(scope="module")
def open_server(start_module_server):
    return start_module_server(OPEN_CONFIG)


async def exchange(server, client_id: str, origin: str | None) -> str:
    """Open a WebSocket with ``origin`` and check it works: a message from a peer arrives."""
    url = f"{server.ws}/api/v1/channels/chat-1?clientId="
    async with (
        websockets.connect(url + client_id, origin=origin) as ws,
        websockets.connect(url + client_id + "-peer") as peer,
    ):
        await peer.send(f"hello {client_id}")
        return json.loads(await asyncio.wait_for(ws.recv(), 5))["payload"]


@pytest.mark.parametrize(
    ("client_id", "origin"),
    [
        ("no-origin", None),
        ("own-page", "same-host"),
        ("listed", "https://app.example.com"),
        ("wildcard", "https://shop.example.org"),
    ],
)
async def test_allowed_origins_open_websockets(server, client_id, origin):
    if origin == "same-host":
        origin = server.http
    assert await exchange(server, client_id, origin) == f"hello {client_id}"


async def test_other_origins_are_closed_with_4403(server):
    url = f"{server.ws}/api/v1/channels/chat-1?clientId=intruder"
    async with websockets.connect(url, origin="https://evil.example.com") as ws:
        body = json.loads(await asyncio.wait_for(ws.recv(), 5))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd.code == 4403
    assert body["control"] == "close"
    assert body["code"] == 4403
    assert body["error"] == "origin_not_allowed"
    assert "server.allowed_origins" in body["message"]
    # The refused handshake never took a slot.
    url = f"{server.http}/api/v1/channels/chat-1?upgrade=0&clientId=intruder"
    preflight = await asyncio.to_thread(httpx.get, url, timeout=5)
    assert preflight.status_code == 200
    assert preflight.json()["connections"] == 0


async def test_allow_all_origins_opens_websockets_from_anywhere(open_server):
    assert await exchange(open_server, "anywhere", "https://evil.example.com") == "hello anywhere"


def stream_headers(server, origin: str, **query: str) -> httpx.Headers:
    url = f"{server.http}/api/v1/channels/feed-1"
    with httpx.stream("GET", url, params=query, headers={"Origin": origin}, timeout=5) as response:
        assert response.status_code == 200
        return response.headers


def test_event_stream_carries_cors_headers_for_allowed_origins(server):
    allowed = stream_headers(server, "https://app.example.com", clientId="cors-allowed")
    wildcard = stream_headers(server, "https://shop.example.org", clientId="cors-wildcard")
    assert allowed["access-control-allow-origin"] == "https://app.example.com"
    assert allowed["vary"] == "Origin"
    assert wildcard["access-control-allow-origin"] == "https://shop.example.org"


@pytest.mark.parametrize("origin", ["https://evil.example.com", "null", "http://app.example.com"])
@pytest.mark.parametrize("path", ["feed-1?clientId=cors-other", "feed-1?upgrade=0", "missing", "missing?upgrade=0"])
def test_other_origins_get_a_403_they_can_read_and_nothing_else(server, origin, path):
    """The refusal echoes the refused origin so its page can say why (and stop retrying), whether or not
    the channel exists: it tells that page nothing about the channels."""
    refused = httpx.get(f"{server.http}/api/v1/channels/{path}", headers={"Origin": origin}, timeout=5)
    assert refused.status_code == 403
    assert refused.headers["content-type"] == "application/json"
    assert refused.headers["cache-control"] == "no-store"
    assert refused.headers["access-control-allow-origin"] == origin
    assert refused.headers["vary"] == "Origin"
    assert "access-control-allow-credentials" not in refused.headers
    assert refused.json() == {"error": "origin_not_allowed", "message": origin_not_allowed_body(origin)["message"]}
    assert refused.json()["message"].startswith(f"Origin {origin!r} may not subscribe")
    # The refused stream never took the clientId's slot.
    described = httpx.get(f"{server.http}/api/v1/channels/feed-1?upgrade=0&clientId=cors-other", timeout=5)
    assert described.status_code == 200
    assert described.json()["connections"] == 0


def test_refusals_and_preflights_carry_cors_headers_so_pages_can_read_them(server):
    origin = {"Origin": "https://app.example.com"}
    refused = httpx.get(f"{server.http}/api/v1/channels/missing", headers=origin, timeout=5)
    described = httpx.get(f"{server.http}/api/v1/channels/feed-1?upgrade=0", headers=origin, timeout=5)
    assert refused.status_code == 404
    assert refused.headers["access-control-allow-origin"] == "https://app.example.com"
    assert described.status_code == 200
    assert described.headers["access-control-allow-origin"] == "https://app.example.com"


def test_allow_all_origins_answers_any_origin_with_a_wildcard(open_server):
    headers = stream_headers(open_server, "https://evil.example.com", clientId="cors-any")
    assert headers["access-control-allow-origin"] == "*"


# --- REALTIME_ALLOWED_ORIGINS ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env_server(start_module_server):
    """Origins from the YAML file and from the environment: the variable adds to the list."""
    return start_module_server(
        memory_config(allowed_origins=["https://yaml.example.com"]) + CHAT_AND_FEED,
        env={"REALTIME_ALLOWED_ORIGINS": " https://env.example.com, https://*.env.example.org ,"},
    )


@pytest.mark.parametrize(
    ("client_id", "origin"),
    [
        ("env", "https://env.example.com"),
        ("env-wildcard", "https://a.env.example.org"),
        ("yaml", "https://yaml.example.com"),
    ],
)
async def test_allowed_origins_from_the_environment_open_websockets(env_server, client_id, origin):
    assert await exchange(env_server, client_id, origin) == f"hello {client_id}"


async def test_the_environment_does_not_open_websockets_to_other_origins(env_server):
    url = f"{env_server.ws}/api/v1/channels/chat-1?clientId=env-intruder"
    async with websockets.connect(url, origin="https://env.example.com.evil.test") as ws:
        body = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert body["error"] == "origin_not_allowed"


def test_allowed_origins_from_the_environment_read_event_streams(env_server):
    for client_id, origin in [("env-sse", "https://env.example.com"), ("yaml-sse", "https://yaml.example.com")]:
        headers = stream_headers(env_server, origin, clientId=client_id)
        assert headers["access-control-allow-origin"] == origin
    refused = httpx.get(
        f"{env_server.http}/api/v1/channels/feed-1", headers={"Origin": "https://example.org"}, timeout=5
    )
    assert refused.status_code == 403
    assert refused.json()["error"] == "origin_not_allowed"


# --- Missing and forged origins, against the default policy (moved from test_hardening_paths.py) ------------

DEFAULT_ORIGINS_CONFIG = memory_config(allow_create_new_channels=True) + CHAT_AND_FEED


@pytest.fixture(scope="module")
def default_origins_server(start_module_server):
    """No allowed_origins: only the service's own origin (and non-browsers) may open a WebSocket."""
    return start_module_server(DEFAULT_ORIGINS_CONFIG, env={"REALTIME_API_KEYS": API_KEY})


@pytest.mark.parametrize(
    ("origin", "admitted"),
    [
        (None, True),  # not a browser
        ("same", True),
        ("null", False),
        ("http://evil.example.com", False),
        ("http://127.0.0.1", False),  # another port is another origin
        ("https://127.0.0.1:{port}", False),  # another scheme... but same host:port is the own origin
        ("http://127.0.0.1:{port}.evil.com", False),
        ("http://[::1", False),
        ("file://", False),
        ("javascript:alert(1)", False),
        ("x" * 4_000, False),
    ],
)
def test_missing_and_forged_origins_on_websockets(default_origins_server, origin, admitted):
    if origin == "same":
        origin = default_origins_server.http
    elif origin is not None:
        origin = origin.replace("{port}", str(default_origins_server.port))

    async def scenario():
        key = base64.b64encode(os.urandom(8)).decode()
        client_id = "origin-" + key[:6].replace("/", "x").replace("+", "y")
        try:
            async with websockets.connect(
                f"{default_origins_server.ws}/api/v1/channels/chat-1?clientId={client_id}", origin=origin
            ) as ws:
                try:
                    frame = json.loads(await asyncio.wait_for(ws.recv(), 1))
                except TimeoutError:
                    return True, None
                return False, frame
        except websockets.InvalidStatus as refused:
            # daphne's WebSocket layer (autobahn) answers 400 to an Origin it cannot parse.
            return False, {"error": f"handshake {refused.response.status_code}"}

    if origin is not None and not origin.isascii():
        pytest.skip("websockets sends ASCII headers only")
    opened, frame = asyncio.run(scenario())
    if origin is not None and origin.startswith("https://127.0.0.1"):
        # Same host and port as the Host header: transports/origins.py compares host:port only (scheme aside).
        admitted = True
    assert opened is admitted, frame
    if not admitted:
        assert frame["error"] in ("origin_not_allowed", "handshake 400")
