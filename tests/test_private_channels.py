"""Private channels against a real daphne: every credential case, on both transports."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import jwt
import pytest
import websockets

from tests.conftest import TEST_CONFIG
from tests.support.auth import API_KEY, AUTH
from tests.support.clients import lines_after_opening

SECRET = "a-token-secret-for-these-tests-only-0123456789"
PRIVATE_CONFIG = TEST_CONFIG + (
    "  vault:\n"
    '    id: "vault-1"\n'
    '    type: "WS"\n'
    "    private: true\n"
    "  alerts:\n"
    '    id: "alerts-1"\n'
    '    type: "SSE"\n'
    "    private: true\n"
)


@pytest.fixture(scope="module")
def server(start_module_server):
    return start_module_server(PRIVATE_CONFIG, env={"REALTIME_API_KEYS": API_KEY, "REALTIME_TOKEN_SECRET": SECRET})


def mint(server, channel: str, client_id: str | None = None, **options) -> str:
    body = {"channel": channel, **({"clientId": client_id} if client_id else {}), **options}
    response = httpx.post(f"{server.http}/api/v1/tokens", json=body, headers=AUTH)
    assert response.status_code == 201, response.text
    return response.json()["token"]


async def refusal(url: str) -> dict:
    """The close frame of a refused WebSocket handshake, with the close code."""
    async with websockets.connect(url) as ws:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    return {**frame, "closed_with": closed.value.rcvd.code}


def forged(channel: str, client_id: str, *, secret: str = SECRET, expires_in: int = 60) -> str:
    claims = {"channel": channel, "sub": client_id, "exp": int(time.time()) + expires_in, "pub": True}
    return jwt.encode(claims, secret, algorithm="HS256")


def test_websocket_refusals(server):
    cases = {
        "none": (server.channel_url("vault-1", clientId="a"), 4401, "token_required"),
        "wrong": (server.channel_url("vault-1", token="garbage"), 4401, "token_invalid"),
        "forged": (
            server.channel_url(
                "vault-1", token=forged("vault-1", "a", secret="not-the-secret-of-this-service-at-all-0123")
            ),
            4401,
            "token_invalid",
        ),
        "expired": (server.channel_url("vault-1", token=forged("vault-1", "a", expires_in=-10)), 4401, "token_invalid"),
        "other channel": (server.channel_url("vault-1", token=mint(server, "chat-1", "a")), 4403, "token_forbidden"),
        "other client": (
            server.channel_url("vault-1", clientId="mallory", token=mint(server, "vault-1", "alice")),
            4403,
            "token_forbidden",
        ),
    }
    for case, (url, code, error) in cases.items():
        frame = asyncio.run(refusal(url))
        assert (frame["closed_with"], frame["error"]) == (code, error), case


def test_sse_refusals(server):
    def get(**query):
        return httpx.get(server.channel_url("alerts-1", scheme="http", **query), timeout=5)

    assert get(clientId="a").status_code == 401
    assert get(token=forged("alerts-1", "a", expires_in=-5)).json()["error"] == "token_invalid"
    assert get(token=mint(server, "vault-1", "a")).status_code == 403


def test_right_token_subscribes_and_publish_permission_is_enforced(server):
    writer_token = mint(server, "vault-1", "writer", publish=True)
    reader_token = mint(server, "vault-1", "reader")

    async def scenario():
        async with (
            websockets.connect(server.channel_url("vault-1", token=writer_token)) as writer,
            websockets.connect(server.channel_url("vault-1", token=reader_token)) as reader,
        ):
            await reader.send("reader tries to publish")
            refused = json.loads(await asyncio.wait_for(reader.recv(), 5))
            await writer.send("writer publishes")
            delivered = json.loads(await asyncio.wait_for(reader.recv(), 5))
        return refused, delivered

    refused, delivered = asyncio.run(scenario())
    assert refused["control"] == "error"
    assert refused["code"] == 4403
    assert delivered["payload"] == "writer publishes"
    # The token's subject is the clientId when none is given.
    assert delivered["clientId"] == "writer"


def test_right_token_opens_a_private_event_stream_and_the_token_stays_out_of_the_log(server):
    token = mint(server, "alerts-1", "watcher")

    async def scenario():
        async with (
            httpx.AsyncClient(timeout=10) as client,
            client.stream("GET", server.channel_url("alerts-1", scheme="http", token=token)) as stream,
        ):
            lines = await lines_after_opening(stream)
            await client.post(f"{server.http}/api/v1/channels/alerts-1/messages", json={"payload": "p"}, headers=AUTH)
            while True:
                line = await asyncio.wait_for(anext(lines), 5)
                if line.startswith("data: ") and '"payload"' in line:
                    return stream.status_code, json.loads(line[len("data: ") :])

    status, message = asyncio.run(scenario())
    assert status == 200
    assert message["payload"] == "p"
    deadline = time.monotonic() + 5
    while "alerts-1?token=" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "token=[redacted]" in server.log()
    assert token not in server.log()


def test_minting_needs_an_api_key_and_a_known_channel(server):
    assert httpx.post(f"{server.http}/api/v1/tokens", json={"channel": "vault-1"}).status_code == 401
    assert httpx.post(f"{server.http}/api/v1/tokens", json={"channel": "nope"}, headers=AUTH).status_code == 404
    bad_ttl = httpx.post(f"{server.http}/api/v1/tokens", json={"channel": "vault-1", "ttl": 0}, headers=AUTH)
    assert bad_ttl.status_code == 400
