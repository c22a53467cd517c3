"""What holds for multiplexed connections as for one-channel ones: a slow consumer is cut off, a
deleted channel ends for that channel only, graceful shutdown closes every socket (even one that
follows no channel), and origins are checked, under daphne and uvicorn."""

from __future__ import annotations

import asyncio
import json
import signal

import httpx
import pytest
import websockets

from tests.support.auth import API_KEY, AUTH
from tests.support.clients import closed_with, connected, connections, recv_json
from tests.support.configs import memory_config
from tests.support.waiting import wait_until
from tests.support.wire import frame, handshake, read_until_close

CONFIG = (
    memory_config(
        publish_rate=100000,
        publish_burst=100000,
        max_pending_bytes=65536,
        allowed_origins=["https://app.example.com"],
        allow_create_new_channels=True,
    )
    + """
  busy: {id: "busy-1", type: "WS"}
  quiet: {id: "quiet-1", type: "WS"}
  feed: {id: "feed-1", type: "SSE"}
"""
)


@pytest.fixture
def server(start_server, asgi_server):
    return start_server(
        CONFIG, server=asgi_server, env={"REALTIME_API_KEYS": API_KEY, "REALTIME_SHUTDOWN_GRACE_SECONDS": "3"}
    )


async def opened(server, **query) -> websockets.ClientConnection:
    suffix = "&".join(f"{key}={value}" for key, value in query.items())
    ws = await websockets.connect(f"{server.ws}/api/v1/connect?{suffix}")
    assert (await recv_json(ws))["control"] == "connected"
    return ws


async def ask(ws, body: dict) -> dict:
    await ws.send(json.dumps(body))
    return await recv_json(ws)


async def test_a_slow_multiplexed_consumer_is_cut_off_and_frees_every_channel(server):
    stalled = await asyncio.to_thread(handshake, server, "/api/v1/connect?clientId=stalled", rcvbuf=4096)
    try:
        for channel in ("busy", "quiet"):
            stalled.sendall(frame(0x1, json.dumps({"subscribe": channel}).encode()))
        await wait_until(lambda: connections(server, "quiet-1") == 1)
        # Well past what the kernel buffers on loopback (~4 MiB).
        async with websockets.connect(f"{server.ws}/api/v1/channels/busy-1?clientId=publisher") as publisher:
            for index in range(400):
                await publisher.send(f"{index:05d}" + "x" * 16 * 1024)
        # Cut off (4408) as a whole: both of its channels' slots are free again.
        await wait_until(lambda: connections(server, "busy-1") == 0 and connections(server, "quiet-1") == 0)
        assert read_until_close(stalled) in (4408, None)
    finally:
        stalled.close()


async def test_a_deleted_channel_ends_for_that_channel_only(server):
    async with httpx.AsyncClient(timeout=5) as client:
        created = await client.post(
            f"{server.http}/api/v1/channels", json={"id": "doomed-1", "type": "WS"}, headers=AUTH
        )
    assert created.status_code == 201, created.text
    ws = await opened(server, clientId="survivor")
    async with ws:
        assert (await ask(ws, {"subscribe": "doomed-1"}))["control"] == "subscribed"
        assert (await ask(ws, {"subscribe": "quiet"}))["control"] == "subscribed"
        async with httpx.AsyncClient(timeout=5) as client:
            deleted = await client.delete(f"{server.http}/api/v1/channels/doomed-1", headers=AUTH)
        assert deleted.status_code in (200, 204), deleted.text
        ended = await recv_json(ws)
        assert (ended["control"], ended["channel"], ended["code"]) == ("unsubscribed", "doomed-1", 4410)
        ack = await ask(ws, {"publish": "quiet", "payload": "still here"})
        assert ack["control"] == "published"


@pytest.mark.timeout(60)
async def test_shutdown_closes_every_multiplexed_socket_with_1001(server):
    following = await opened(server, clientId="following")
    idle = await opened(server, clientId="idle")
    await ask(following, {"subscribe": "busy"})
    async with following, idle:
        server.process.send_signal(signal.SIGTERM)
        for ws in (following, idle):
            body, code = await closed_with(ws)
            assert code == 1001 and body["error"] == "going_away"
    await asyncio.to_thread(server.process.wait, 10)


async def test_origins_are_checked_on_both_multiplexed_endpoints(server):
    allowed = {"Origin": "https://app.example.com"}
    async with websockets.connect(f"{server.ws}/api/v1/connect", additional_headers=allowed) as ws:
        assert (await recv_json(ws))["control"] == "connected"
    async with websockets.connect(
        f"{server.ws}/api/v1/connect", additional_headers={"Origin": "https://evil.example.net"}
    ) as ws:
        body, code = await closed_with(ws)
        assert (code, body["error"]) == (4403, "origin_not_allowed")
    async with httpx.AsyncClient(timeout=5) as client:
        refused = await client.get(
            f"{server.http}/api/v1/events?channel=feed", headers={"Origin": "https://evil.example.net"}
        )
        preflight = await client.get(f"{server.http}/api/v1/events?channel=feed&upgrade=0", headers=allowed)
    assert (refused.status_code, refused.json()["error"]) == (403, "origin_not_allowed")
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example.com"
    assert await connected(server, "feed-1") == 0
