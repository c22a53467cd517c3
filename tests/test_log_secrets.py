"""No token and no API key reaches the log of a real server, daphne or uvicorn, at LOG_LEVEL=DEBUG.

Each credential travels in every spelling a client might use, on SSE, WebSocket and HTTP URLs,
to connections that are accepted and to ones that are refused; then the whole server log is
searched for the credentials.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
import websockets

from tests.support.auth import API_KEY, AUTH
from tests.support.waiting import wait_until_sync
from tests.test_private_channels import PRIVATE_CONFIG, SECRET


@pytest.fixture
def server(start_server, asgi_server):
    return start_server(
        PRIVATE_CONFIG,
        env={"REALTIME_API_KEYS": API_KEY, "REALTIME_TOKEN_SECRET": SECRET, "LOG_LEVEL": "DEBUG"},
        server=asgi_server,
    )


def mint(server, channel: str, client_id: str) -> str:
    response = httpx.post(
        f"{server.http}/api/v1/tokens", json={"channel": channel, "clientId": client_id, "publish": True}, headers=AUTH
    )
    assert response.status_code == 201, response.text
    return response.json()["token"]


def spellings(token: str) -> dict[str, str]:
    """Query strings carrying ``token``: the ones the service reads as the token, and others."""
    dotted = token.replace(".", "%2E")
    return {
        "plain": f"token={token}",
        "percent-encoded name": f"%74oken={token}",
        "name encoded in the middle": f"tok%65n={token}",
        "upper-case hex": f"%54%4F%4B%45%4E={token}",
        "repeated, last wins": f"token=garbage&token={token}",
        "repeated, first one": f"token={token}&token=garbage",
        "encoded value": f"token={dotted}",
        "after a semicolon": f"clientId=a;token={token}",
        "upper-case name": f"TOKEN={token}",
        "under another name": f"x={token}",
        "encoded under another name": f"x={dotted}",
        "api key as a parameter": f"api_key={API_KEY}",
        "api key under another name": f"x={API_KEY}",
    }


async def open_stream(url: str) -> int:
    """Open an event stream, read its first line when it is accepted, and leave; the status."""
    async with httpx.AsyncClient(timeout=5) as client, client.stream("GET", url) as response:
        if response.status_code == 200:
            await anext(response.aiter_lines())
        else:
            await response.aread()
        return response.status_code


async def open_websocket(url: str) -> str:
    """Open a WebSocket and read what it is sent first (a refusal frame, or nothing when accepted)."""
    try:
        async with websockets.connect(url, open_timeout=5) as ws:
            try:
                return str(await asyncio.wait_for(ws.recv(), 0.3))
            except TimeoutError:
                return "accepted"
    except websockets.InvalidStatus as refused:
        return f"refused with HTTP {refused.response.status_code}"


def test_no_token_or_api_key_in_the_log_whatever_the_spelling(server):
    sse_token = mint(server, "alerts-1", "watcher")
    ws_token = mint(server, "vault-1", "writer")
    outcomes = {}

    async def scenario():
        async with httpx.AsyncClient(timeout=5) as client:
            for case, query in spellings(sse_token).items():
                outcomes["SSE", case] = await open_stream(f"{server.http}/api/v1/channels/alerts-1?{query}")
                for path in ("/api/v1/channels/alerts-1/messages", "/api/v1/channels/alerts-1", "/no/such/page"):
                    response = await client.get(f"{server.http}{path}?upgrade=0&{query}", headers=AUTH)
                    outcomes["HTTP", path, case] = response.status_code
            for case, query in spellings(ws_token).items():
                outcomes["WS", case] = await open_websocket(
                    f"{server.ws}/api/v1/channels/vault-1?clientId=writer&{query}"
                )
            # The token as a channel id, and a wrong key next to the right one.
            outcomes["token as a channel"] = await open_stream(f"{server.http}/api/v1/channels/{sse_token}")
            outcomes["token as a WS channel"] = await open_websocket(f"{server.ws}/api/v1/channels/{ws_token}")
            response = await client.get(f"{server.http}/api/v1/channels?x={API_KEY}", headers={"Authorization": "x"})
            outcomes["refused API call"] = response.status_code

    asyncio.run(scenario())
    # Both kinds of outcome happened: the test covers accepted and refused connections.
    assert outcomes["SSE", "plain"] == 200 and outcomes["SSE", "percent-encoded name"] == 200
    assert outcomes["SSE", "upper-case name"] == 401
    assert outcomes["WS", "plain"] == "accepted" and outcomes["WS", "percent-encoded name"] == "accepted"
    assert "4401" in outcomes["WS", "upper-case name"]
    assert outcomes["refused API call"] == 401

    # The server stops once it has logged the last request (the refused API call), so no line is lost.
    wait_until_sync(lambda: "/api/v1/channels?x=" in server.log(), message="the last request was never logged")
    server.stop()
    log = server.log()
    for secret in (sse_token, ws_token, API_KEY):
        signature = secret.rsplit(".", 1)[-1]
        leaks = [line for line in log.splitlines() if signature in line]
        assert not leaks, f"{len(leaks)} lines of the {server.server} log carry a credential:\n" + "\n".join(leaks)
    # The requests were logged (the test would prove nothing otherwise), with the values hidden.
    assert log.count("[redacted]") >= 3 * len(spellings(sse_token)), log[-3000:]
