"""The multiplexed event stream ``GET /api/v1/events?channel=a&channel=b``, end to end: one stream
of several channels, ids that resume every channel exactly, refusals naming the channel, the cap,
in MEMORY and REDIS mode."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import httpx
import pytest

from tests.support.auth import API_KEY, AUTH
from tests.support.clients import connected, open_stream
from tests.support.configs import memory_config
from tests.support.liveserver import served_by

SECRET = "a-token-secret-for-the-multiplexing-tests-0123456789"
CONFIG = (
    memory_config(max_channels_per_connection=3)
    + """
  alerts: {id: "alerts-1", type: "SSE"}
  updates: {id: "updates-1", type: "SSE"}
  chat: {id: "chat-1", type: "WS"}
  vault: {id: "vault-1", type: "SSE", private: true}
  safe: {id: "safe-1", type: "SSE", private: true}
  solo: {id: "solo-1", type: "SSE", max_of_channel_connections: 1}
  room: {id: "room-1", type: "SSE", presence: true}
"""
)


@pytest.fixture(scope="module", params=[("memory", "uvicorn"), ("redis", "daphne")], ids=["memory", "redis"])
def server(request, start_module_server, tmp_path_factory):
    driver, asgi = request.param
    env = {"REALTIME_API_KEYS": API_KEY, "REALTIME_TOKEN_SECRET": SECRET}
    yield from served_by(driver, start_module_server, CONFIG, tmp_path_factory, env=env, server=asgi)


def events_url(server, *channels: str, **query) -> str:
    return f"{server.http}/api/v1/events?" + urlencode([*(("channel", c) for c in channels), *query.items()])


async def push(server, channel: str, payload: str) -> dict:
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.post(
            f"{server.http}/api/v1/channels/{channel}/messages", json={"payload": payload}, headers=AUTH
        )
    assert response.status_code == 201, response.text
    return response.json()


def mint(server, channels, client_id: str) -> str:
    key = "channel" if isinstance(channels, str) else "channels"
    response = httpx.post(f"{server.http}/api/v1/tokens", json={key: channels, "clientId": client_id}, headers=AUTH)
    assert response.status_code == 201, response.text
    return response.json()["token"]


def ids_of(stream_id: str) -> dict[str, str]:
    return dict(part.rsplit(":", 1) for part in stream_id.split(","))


async def test_one_stream_carries_every_listed_channel(server):
    async with open_stream(events_url(server, "alerts", "updates-1", "chat", clientId="viewer")) as (response, events):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        opening = await events.event("stream-open")
        body = json.loads(opening["data"])
        assert body["clientId"] == "viewer"
        assert [c["channelId"] for c in body["channels"]] == ["alerts-1", "updates-1", "chat-1"]
        assert set(ids_of(opening["id"])) == {"alerts-1", "updates-1", "chat-1"}
        await push(server, "alerts-1", "fire drill")
        await push(server, "chat-1", "hello")
        first_id, first = await events.message()
        second_id, second = await events.message()
        assert [(first["channelId"], first["payload"]), (second["channelId"], second["payload"])] == [
            ("alerts-1", "fire drill"),
            ("chat-1", "hello"),
        ]
        # Every id holds every channel's position; each message moves its own channel's.
        assert ids_of(first_id)["alerts-1"] == f"{first['epoch']}-{first['offset']}"
        assert ids_of(second_id)["alerts-1"] == ids_of(first_id)["alerts-1"]
        assert ids_of(second_id)["chat-1"] == f"{second['epoch']}-{second['offset']}"
        assert await connected(server, "alerts-1") == 1


async def test_last_event_id_resumes_every_channel_exactly(server):
    async with open_stream(events_url(server, "alerts", "updates")) as (_, events):
        opening = await events.event("stream-open")
        await push(server, "alerts-1", "a1")
        last_id, _ = await events.message()
    assert opening["id"]
    missed = [await push(server, "updates-1", "u1"), await push(server, "alerts-1", "a2")]
    async with open_stream(events_url(server, "alerts", "updates"), {"Last-Event-ID": last_id}) as (_, events):
        await events.event("stream-open")
        resumed = [(await events.message())[1] for _ in missed]
        assert sorted(m["id"] for m in resumed) == sorted(m["id"] for m in missed)
        await push(server, "updates-1", "u2")
        assert (await events.message())[1]["payload"] == "u2"


async def test_a_stream_resumed_before_any_message_still_catches_up_from_its_opening_id(server):
    async with open_stream(events_url(server, "updates", "alerts")) as (_, events):
        opening = await events.event("stream-open")
    missed = await push(server, "updates-1", "while away")
    async with open_stream(events_url(server, "updates", "alerts", lastEventId=opening["id"])) as (_, events):
        await events.event("stream-open")
        assert (await events.message())[1]["id"] == missed["id"]


async def test_a_gap_is_reported_per_channel(server):
    stream_id = "alerts-1:zzzzzzzz-3,updates-1:0"
    async with open_stream(events_url(server, "alerts", "updates"), {"Last-Event-ID": stream_id}) as (_, events):
        await events.event("stream-open")
        gap = await events.event("gap")
        body = json.loads(gap["data"])
        assert body["channelId"] == "alerts-1" and body["reason"] == "epoch_changed"


@pytest.mark.parametrize(
    ("channels", "query", "status", "error", "named"),
    [
        (["alerts", "nowhere"], {}, 404, "channel_not_found", "nowhere"),
        (["alerts", "vault"], {}, 401, "token_required", "vault"),
        (["vault"], {"token": "garbage"}, 401, "token_invalid", "vault"),
        (["alerts", "updates", "chat", "room"], {}, 400, "too_many_channels", None),
        ([], {}, 400, "bad_request", None),
        (["alerts"], {"lastEventId": "no-colon-here"}, 400, "bad_request", None),
        (["alerts"], {"clientId": "bad id!"}, 400, "bad_request", "alerts"),
    ],
)
async def test_a_stream_that_may_not_read_a_channel_is_refused_as_a_whole(
    server, channels, query, status, error, named
):
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(events_url(server, *channels, **query))
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error and body["message"]
    assert body.get("channel") == named
    # Nothing was kept: the channels admitted before the refusal gave their slots back.
    assert await connected(server, "alerts-1") == 0


async def test_tokens_cover_their_channels_one_token_or_several(server):
    both = mint(server, ["vault-1", "safe-1"], "dana")
    async with open_stream(events_url(server, "vault", "safe", token=both)) as (response, events):
        assert response.status_code == 200
        assert json.loads((await events.event("stream-open"))["data"])["clientId"] == "dana"
    separate = [("token", mint(server, "vault-1", "erin")), ("token", mint(server, "safe-1", "erin"))]
    url = f"{server.http}/api/v1/events?" + urlencode([("channel", "vault"), ("channel", "safe"), *separate])
    async with open_stream(url) as (response, events):
        assert response.status_code == 200
        await events.event("stream-open")
    async with httpx.AsyncClient(timeout=5) as client:
        only_one = await client.get(events_url(server, "vault", "safe", token=mint(server, "vault-1", "fay")))
    assert (only_one.status_code, only_one.json()["error"], only_one.json()["channel"]) == (
        403,
        "token_forbidden",
        "safe",
    )


async def test_slots_are_counted_per_channel_and_a_full_channel_refuses_the_stream(server):
    async with open_stream(events_url(server, "solo", "alerts", clientId="first")) as (_, events):
        await events.event("stream-open")
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(events_url(server, "alerts", "solo", clientId="second"))
        assert (response.status_code, response.json()["error"], response.json()["channel"]) == (
            422,
            "channel_full",
            "solo",
        )
        assert await connected(server, "alerts-1") == 1


async def test_the_same_client_id_on_a_channel_is_refused(server):
    async with open_stream(events_url(server, "updates", clientId="twin")) as (_, events):
        await events.event("stream-open")
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(events_url(server, "alerts", "updates", clientId="twin"))
        assert (response.status_code, response.json()["error"]) == (409, "client_id_taken")


async def test_the_preflight_describes_every_channel_or_names_the_refused_one(server):
    async with httpx.AsyncClient(timeout=5) as client:
        good = await client.get(events_url(server, "alerts", "chat", upgrade="0"))
        bad = await client.get(events_url(server, "alerts", "nowhere", upgrade="0"))
    assert good.status_code == 200
    assert [c["id"] for c in good.json()["channels"]] == ["alerts-1", "chat-1"]
    assert (bad.status_code, bad.json()["channel"]) == (404, "nowhere")


async def test_presence_joins_on_the_stream_name_their_channel(server):
    async with open_stream(events_url(server, "room", clientId="watcher")) as (_, events):
        await events.event("stream-open")
        join = json.loads((await events.event("join"))["data"])
        assert join["clientId"] == "watcher" and join["channelId"] == "room-1"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"channels": []}, 400),
        ({"channels": ["vault-1", 5]}, 400),
        ({"channels": [f"c{index}" for index in range(33)]}, 400),
        ({"channels": ["vault-1", "nowhere"]}, 404),
    ],
)
def test_a_token_for_several_channels_is_refused_when_its_list_is_not_one(server, body, status):
    response = httpx.post(f"{server.http}/api/v1/tokens", json={**body, "clientId": "gil"}, headers=AUTH)
    assert response.status_code == status, response.text
    assert response.json()["error"]


def test_a_token_for_several_channels_answers_their_ids(server):
    response = httpx.post(
        f"{server.http}/api/v1/tokens",
        json={"channels": ["vault", "safe-1", "vault-1"], "clientId": "hal"},
        headers=AUTH,
    )
    assert response.status_code == 201, response.text
    assert response.json()["channelIds"] == ["vault-1", "safe-1"]
    assert "channelId" not in response.json()
