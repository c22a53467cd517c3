"""Presence against real daphne, MEMORY and REDIS: the list with each member's info, join and leave
over both transports, two instances on one Redis, and silence on channels without presence."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import websockets

from tests.support.auth import API_KEY, AUTH
from tests.support.clients import open_stream, opened, recv_json
from tests.support.configs import memory_config, on_redis
from tests.support.liveserver import served_by, start_pair
from tests.support.waiting import wait_until

SECRET = "a-token-secret-for-the-presence-tests-0123456789"
CONFIG = memory_config(allow_push_server_messages=True, allow_create_new_channels=True) + (
    '\n  room: {id: "room-1", type: "WS", presence: true}'
    '\n  lobby: {id: "lobby-1", type: "WS", presence: true, private: true}'
    '\n  feed: {id: "feed-1", type: "SSE", presence: true}'
    '\n  plain: {id: "plain-1", type: "WS"}\n'
)
ENV = {"REALTIME_API_KEYS": API_KEY, "REALTIME_TOKEN_SECRET": SECRET}


@pytest.fixture(scope="module", params=["memory", "redis"])
def server(request, start_module_server, tmp_path_factory):
    yield from served_by(request.param, start_module_server, CONFIG, tmp_path_factory, env=ENV)


def presence(server, channel: str, **query) -> httpx.Response:
    return httpx.get(f"{server.http}/api/v1/channels/{channel}/presence", params=query, headers=AUTH, timeout=5)


def mint(server, channel: str, client_id: str, info: dict | None = None) -> str:
    body = {"channel": channel, "clientId": client_id, **({"info": info} if info is not None else {})}
    response = httpx.post(f"{server.http}/api/v1/tokens", json=body, headers=AUTH, timeout=5)
    assert response.status_code == 201, response.text
    return response.json()["token"]


async def next_control(ws, control: str, within: float = 5) -> dict:
    """The next control frame named ``control``, skipping others (joins of earlier members, say)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        frame = await recv_json(ws, max(0.1, deadline - asyncio.get_running_loop().time()))
        if frame.get("control") == control:
            return frame


def test_the_list_shows_members_with_the_info_of_their_token(server):
    async def scenario():
        token = mint(server, "lobby-1", "alice", {"name": "Alice"})
        async with websockets.connect(server.channel_url("lobby-1", token=token)):
            await wait_until(lambda: presence(server, "lobby-1").json()["count"] == 1)
            body = presence(server, "lobby-1").json()
            [alice] = body["clients"]
            assert (alice["clientId"], alice["transport"], alice["info"]) == ("alice", "WS", {"name": "Alice"})
            assert alice["connectedAt"] and body["next"] is None
        await wait_until(lambda: presence(server, "lobby-1").json()["count"] == 0)

    asyncio.run(scenario())


def test_the_list_is_paged_by_client_id(server):
    async def scenario():
        sockets = [await websockets.connect(server.channel_url("room-1", clientId=f"p{i}")) for i in range(3)]
        try:
            await wait_until(lambda: presence(server, "room-1").json()["count"] == 3)
            first = presence(server, "room-1", limit=2).json()
            assert [c["clientId"] for c in first["clients"]] == ["p0", "p1"] and first["next"] == "p1"
            second = presence(server, "room-1", limit=2, cursor=first["next"]).json()
            assert [c["clientId"] for c in second["clients"]] == ["p2"] and second["next"] is None
        finally:
            for ws in sockets:
                await ws.close()

    asyncio.run(scenario())


def test_refusals(server):
    assert presence(server, "nowhere").status_code == 404
    assert presence(server, "plain-1").json()["error"] == "presence_disabled"
    assert presence(server, "plain-1").status_code == 409
    assert presence(server, "room-1", limit=0).status_code == 400
    assert httpx.get(f"{server.http}/api/v1/channels/room-1/presence", timeout=5).status_code == 401
    too_big = {"channel": "lobby-1", "clientId": "a", "info": {"name": "x" * 2000}}
    assert httpx.post(f"{server.http}/api/v1/tokens", json=too_big, headers=AUTH, timeout=5).status_code == 400


def test_join_and_leave_reach_a_websocket_subscriber(server):
    async def scenario():
        async with websockets.connect(server.channel_url("room-1", clientId="watcher")) as watcher:
            async with websockets.connect(server.channel_url("room-1", clientId="bob")):
                joined = await next_control(watcher, "join")
                while joined["clientId"] != "bob":
                    joined = await next_control(watcher, "join")
                assert joined == {"control": "join", "clientId": "bob", "info": None}
            left = await next_control(watcher, "leave")
            assert left == {"control": "leave", "clientId": "bob", "info": None}

    asyncio.run(scenario())


def test_join_and_leave_reach_an_sse_subscriber(server):
    async def scenario():
        async with open_stream(server.channel_url("feed-1", scheme="http", clientId="reader")) as (_, events):
            await opened(events)
            async with open_stream(server.channel_url("feed-1", scheme="http", clientId="carol")) as (_, other):
                await opened(other)
                joined = json.loads((await events.event("join"))["data"])
                while joined["clientId"] != "carol":
                    joined = json.loads((await events.event("join"))["data"])
            left = json.loads((await events.event("leave"))["data"])
            assert left == {"control": "leave", "clientId": "carol", "info": None}

    asyncio.run(scenario())


def test_a_channel_without_presence_sends_no_join_or_leave(server):
    async def scenario():
        plain_url, room_url = (
            server.channel_url("plain-1", clientId="quiet"),
            server.channel_url("room-1", clientId="w"),
        )
        async with websockets.connect(plain_url) as quiet, websockets.connect(room_url) as witness:
            async with (
                websockets.connect(server.channel_url("plain-1", clientId="dave")),
                websockets.connect(server.channel_url("room-1", clientId="dave")),
            ):
                while (await next_control(witness, "join"))["clientId"] != "dave":
                    pass
            # The presence channel's notices of the same moment have been sent: the plain one's would have been too.
            while (await next_control(witness, "leave"))["clientId"] != "dave":
                pass
            async with httpx.AsyncClient() as client:
                response = await client.post(
                    f"{server.http}/api/v1/channels/plain-1/messages", json={"payload": "after"}, headers=AUTH
                )
            assert response.status_code == 201, response.text
            assert (await recv_json(quiet))["payload"] == "after"

    asyncio.run(scenario())


def test_presence_across_two_instances_on_one_redis(start_server, redis_server):
    first, second = start_pair(start_server, on_redis(CONFIG, redis_server.url), env=ENV)

    async def scenario():
        async with websockets.connect(first.channel_url("room-1", clientId="on-first")) as watcher:
            token = mint(second, "lobby-1", "erin", {"name": "Erin"})
            async with websockets.connect(second.channel_url("room-1", clientId="on-second")):
                joined = await next_control(watcher, "join")
                while joined["clientId"] != "on-second":
                    joined = await next_control(watcher, "join")
                listed = {c["clientId"] for c in presence(first, "room-1").json()["clients"]}
                assert listed == {"on-first", "on-second"}
                async with websockets.connect(second.channel_url("lobby-1", token=token)):
                    await wait_until(lambda: presence(first, "lobby-1").json()["count"] == 1)
                    assert presence(first, "lobby-1").json()["clients"][0]["info"] == {"name": "Erin"}
            assert (await next_control(watcher, "leave"))["clientId"] == "on-second"

    asyncio.run(scenario())


def test_a_new_subscriber_is_told_who_is_already_there(server):
    async def scenario():
        token = mint(server, "lobby-1", "early", {"name": "Early"})
        async with websockets.connect(server.channel_url("lobby-1", token=token)):
            await wait_until(lambda: presence(server, "lobby-1").json()["count"] == 1)
            async with websockets.connect(server.channel_url("lobby-1", token=mint(server, "lobby-1", "late"))) as ws:
                assert await next_control(ws, "join") == {
                    "control": "join",
                    "clientId": "early",
                    "info": {"name": "Early"},
                }

    asyncio.run(scenario())


def test_a_channel_created_through_the_api_may_track_presence(server):
    async def scenario():
        async with httpx.AsyncClient(headers=AUTH, timeout=5) as client:
            body = {"id": "made-1", "type": "WS", "presence": True}
            created = await client.post(f"{server.http}/api/v1/channels", json=body)
            assert created.status_code == 201, created.text
            assert created.json()["presence"] is True
            plain = await client.post(f"{server.http}/api/v1/channels", json={"id": "made-2", "type": "WS"})
            assert plain.json()["presence"] is False
            async with websockets.connect(server.channel_url("made-1", clientId="maker")):
                await wait_until(lambda: presence(server, "made-1").json()["count"] == 1)
            assert (await client.get(f"{server.http}/api/v1/channels/made-2/presence")).status_code == 409
            for channel in ("made-1", "made-2"):
                await client.delete(f"{server.http}/api/v1/channels/{channel}")

    asyncio.run(scenario())
