"""``server.duplicate_client_id``: ``refuse`` (the default, 4409 / 409) or ``replace`` (the newest
connection takes the slot; the old one is closed with 4001 ``replaced``), on both transports, under
both servers, and across two REDIS instances."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlencode

import httpx
import pytest
import websockets

from tests.support.auth import API_KEY, AUTH
from tests.support.clients import closed_with, open_stream, opened


def config(mode: str | None, redis_url: str | None = None) -> str:
    """Two channels (WS and SSE, three slots each) with ``duplicate_client_id: mode`` (None: unset)."""
    setting = f'  duplicate_client_id: "{mode}"\n' if mode else ""
    driver = f'driver: "REDIS"\n  redis: {{url: "{redis_url}"}}' if redis_url else 'driver: "MEMORY"'
    return (
        f'server:\n  api_keys: ["{API_KEY}"]\n{setting}pubsub:\n  {driver}\nchannels:\n'
        '  room: {id: "room-1", type: "WS", max_of_channel_connections: 3}\n'
        '  feed: {id: "feed-1", type: "SSE", max_of_channel_connections: 3}\n'
    )


def url(server, channel: str, scheme: str = "ws", **query: str) -> str:
    base = server.ws if scheme == "ws" else server.http
    return f"{base}/api/v1/channels/{channel}?{urlencode(query)}"


async def preflight(server, channel: str, **query: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=5) as client:
        return await client.get(url(server, channel, "http", upgrade="0", **query))


async def push(server, channel: str, payload: str) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.post(
            f"{server.http}/api/v1/channels/{channel}/messages", json={"payload": payload}, headers=AUTH
        )
    assert response.status_code == 201, response.text


REPLACED = {"control": "close", "code": 4001, "error": "replaced"}


def replaced_frame(body: dict, client_id: str = "laptop") -> dict:
    """The close frame's code and error, once its message is checked to name the clientId."""
    assert f"clientId {client_id!r}" in body["message"] and "do not reconnect" in body["message"], body
    return {key: body[key] for key in REPLACED}


@pytest.fixture(scope="module")
def replacing(start_module_server, asgi_server):
    return start_module_server(config("replace"), server=asgi_server)


async def test_replace_closes_the_old_websocket_with_4001_and_the_new_one_takes_its_slot(replacing):
    async with websockets.connect(url(replacing, "room-1", clientId="laptop")) as asleep:
        assert (await preflight(replacing, "room-1", clientId="laptop")).json()["connections"] == 1
        async with websockets.connect(url(replacing, "room-1", clientId="laptop")) as awake:
            body, code = await closed_with(asleep)
            assert (code, replaced_frame(body)) == (4001, REPLACED)
            # The old connection's release came after the replace: the new one keeps the slot.
            described = await preflight(replacing, "room-1", clientId="laptop")
            assert described.status_code == 200 and described.json()["connections"] == 1
            await push(replacing, "room-1", "after waking")
            assert json.loads(await asyncio.wait_for(awake.recv(), 5))["payload"] == "after waking"
    described = await preflight(replacing, "room-1")
    assert described.json()["connections"] == 0
    async with httpx.AsyncClient(timeout=5) as client:
        metrics = (await client.get(f"{replacing.http}/metrics")).text
    assert "realtime_connections_replaced_total 1.0" in metrics


async def test_replace_ends_the_old_event_stream_with_a_stream_error(replacing):
    async with open_stream(url(replacing, "feed-1", "http", clientId="laptop")) as (_, old):
        await opened(old)
        async with open_stream(url(replacing, "feed-1", "http", clientId="laptop")) as (_, new):
            await opened(new)
            ended = await old.event("stream-error")
            assert replaced_frame(json.loads(ended["data"])) == REPLACED
            with pytest.raises(StopAsyncIteration):
                await old.block()
            assert (await preflight(replacing, "feed-1")).json()["connections"] == 1
            await push(replacing, "feed-1", "to the new stream")
            _, message = await new.message()
            assert message["payload"] == "to the new stream"


async def test_replace_mode_admits_a_connected_client_id_into_a_full_channel(replacing):
    others = [await websockets.connect(url(replacing, "room-1", clientId=f"other-{index}")) for index in range(2)]
    try:
        async with websockets.connect(url(replacing, "room-1", clientId="laptop")) as asleep:
            assert (await preflight(replacing, "room-1", clientId="laptop")).status_code == 200
            assert (await preflight(replacing, "room-1", clientId="stranger")).status_code == 422
            async with websockets.connect(url(replacing, "room-1", clientId="laptop")) as awake:
                _, code = await closed_with(asleep)
                assert code == 4001
                await awake.send("in")
    finally:
        for ws in others:
            await ws.close()


async def test_refuse_stays_the_default_and_refuses_a_second_live_connection(start_server):
    for mode in ("refuse", None):
        server = start_server(config(mode))
        async with websockets.connect(url(server, "room-1", clientId="laptop")) as first:
            async with websockets.connect(url(server, "room-1", clientId="laptop")) as second:
                body, code = await closed_with(second)
            assert (code, body["error"]) == (4409, "client_id_taken")
            assert (await preflight(server, "room-1", clientId="laptop")).status_code == 409
            await push(server, "room-1", "still here")
            assert json.loads(await asyncio.wait_for(first.recv(), 5))["payload"] == "still here"
        server.stop()


async def test_replace_across_two_redis_instances(start_server, redis_server):
    shared = config("replace", redis_server.url)
    env = {"REALTIME_PRESENCE_LEASE_SECONDS": "1.5"}
    first = start_server(shared, env=env)
    second = start_server(shared, env=env, database_path=first.database_path, sync=False)
    async with websockets.connect(url(first, "room-1", clientId="laptop")) as asleep:
        async with websockets.connect(url(second, "room-1", clientId="laptop")) as awake:
            body, code = await closed_with(asleep)
            assert (code, replaced_frame(body)) == (4001, REPLACED)
            # Two lease renewals later, on both instances, the slot is still counted once.
            await asyncio.sleep(1.2)
            for server in (first, second):
                described = await preflight(server, "room-1", clientId="laptop")
                assert described.json()["connections"] == 1
            await push(first, "room-1", "from the first instance")
            assert json.loads(await asyncio.wait_for(awake.recv(), 5))["payload"] == "from the first instance"
        async with open_stream(url(first, "feed-1", "http", clientId="tablet")) as (_, old):
            await opened(old)
            async with open_stream(url(second, "feed-1", "http", clientId="tablet")) as (_, new):
                await opened(new)
                ended = await old.event("stream-error")
                assert replaced_frame(json.loads(ended["data"]), "tablet") == REPLACED
