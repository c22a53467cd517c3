"""The service answers over HTTP, WebSocket and SSE on a real daphne."""

import asyncio
import json

import httpx
import websockets


async def test_websocket_message_reaches_another_subscriber(daphne_server):
    async with (
        websockets.connect(daphne_server.channel_url("chat-1", clientId="a")) as alice,
        websockets.connect(daphne_server.channel_url("chat-1", clientId="b")) as bob,
    ):
        await alice.send("hello")
        received = json.loads(await asyncio.wait_for(bob.recv(), 5))
    assert received["payload"] == "hello"
    assert received["clientId"] == "a"
    assert received["channelId"] == "chat-1"


def test_preflight_describes_channel(daphne_server):
    response = httpx.get(daphne_server.channel_url("feed", scheme="http", upgrade="0"))
    assert response.status_code == 200
    assert response.json()["id"] == "feed-1"
    assert response.json()["type"] == "SSE"
