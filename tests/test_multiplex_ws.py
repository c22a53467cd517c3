"""The multiplexed WebSocket ``/api/v1/connect``, end to end: every control frame and its answer,
every refusal, resume of several channels across a reconnect, in MEMORY and REDIS mode."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlencode

import httpx
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from tests.support.auth import API_KEY, AUTH
from tests.support.clients import closed_with, connected, recv_json
from tests.support.configs import memory_config
from tests.support.liveserver import served_by

SECRET = "a-token-secret-for-the-multiplexing-tests-0123456789"
METRICS_TOKEN = "scrape-token-for-the-multiplexing-tests"
CONFIG = (
    memory_config(publish_rate=100000, publish_burst=100000, max_channels_per_connection=3)
    + """
  news: {id: "news-1", type: "WS"}
  sports: {id: "sports-1", type: "WS"}
  weather: {id: "weather-1", type: "WS"}
  feed: {id: "feed-1", type: "SSE"}
  vault: {id: "vault-1", type: "WS", private: true}
  small: {id: "small-1", type: "WS", max_of_channel_connections: 1}
"""
)


@pytest.fixture(scope="module", params=[("memory", "daphne"), ("redis", "uvicorn")], ids=["memory", "redis"])
def server(request, start_module_server, tmp_path_factory):
    driver, asgi = request.param
    env = {"REALTIME_API_KEYS": API_KEY, "REALTIME_TOKEN_SECRET": SECRET, "METRICS_TOKEN": METRICS_TOKEN}
    yield from served_by(driver, start_module_server, CONFIG, tmp_path_factory, env=env, server=asgi)


def connect_url(server, **query) -> str:
    url = f"{server.ws}/api/v1/connect"
    return f"{url}?{urlencode(query)}" if query else url


async def push(server, channel: str, payload) -> dict:
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.post(
            f"{server.http}/api/v1/channels/{channel}/messages", json={"payload": payload}, headers=AUTH
        )
    assert response.status_code == 201, response.text
    return response.json()


def mint(server, channels, client_id: str, **options) -> str:
    key = "channel" if isinstance(channels, str) else "channels"
    response = httpx.post(
        f"{server.http}/api/v1/tokens", json={key: channels, "clientId": client_id, **options}, headers=AUTH
    )
    assert response.status_code == 201, response.text
    return response.json()["token"]


async def opened(ws) -> dict:
    hello = await recv_json(ws)
    assert hello["control"] == "connected", hello
    return hello


async def ask(ws, frame: dict) -> dict:
    await ws.send(json.dumps(frame))
    return await recv_json(ws)


async def test_one_socket_follows_several_channels_and_names_each_message(server):
    async with websockets.connect(connect_url(server, clientId="reader")) as ws:
        hello = await opened(ws)
        assert hello == {"control": "connected", "clientId": "reader", "maxChannels": 3}
        news = await ask(ws, {"subscribe": "news", "ref": 1})
        assert news["control"] == "subscribed" and news["channel"] == "news-1" and news["name"] == "news"
        assert news["ref"] == 1 and isinstance(news["position"], str)
        sports = await ask(ws, {"subscribe": "sports-1", "ref": "b"})
        assert (sports["control"], sports["channel"], sports["ref"]) == ("subscribed", "sports-1", "b")
        await push(server, "news-1", "rain stops play")
        await push(server, "sports-1", "goal")
        received = [await recv_json(ws), await recv_json(ws)]
        assert {(m["channelId"], m["payload"]) for m in received} == {
            ("news-1", "rain stops play"),
            ("sports-1", "goal"),
        }
        # Each subscription holds a slot of its channel, as a one-channel connection would.
        assert await connected(server, "news-1") == 1
        assert await connected(server, "sports-1") == 1


async def test_unsubscribe_stops_that_channel_and_gives_its_slot_back(server):
    async with websockets.connect(connect_url(server, clientId="leaver")) as ws:
        await opened(ws)
        await ask(ws, {"subscribe": "weather"})
        await ask(ws, {"subscribe": "news"})
        answer = await ask(ws, {"unsubscribe": "weather", "ref": 7})
        assert answer == {"control": "unsubscribed", "channel": "weather-1", "ref": 7}
        assert await connected(server, "weather-1") == 0
        await push(server, "weather-1", "sunny")
        await push(server, "news-1", "after")
        message = await recv_json(ws)
        assert (message["channelId"], message["payload"]) == ("news-1", "after")
        again = await ask(ws, {"unsubscribe": "weather"})
        assert (again["control"], again["code"], again["error"]) == ("error", 4404, "not_subscribed")


async def test_publish_is_acked_with_its_position_and_reaches_other_subscribers(server):
    async with (
        websockets.connect(connect_url(server, clientId="writer")) as writer,
        websockets.connect(connect_url(server, clientId="listener")) as listener,
    ):
        await opened(writer)
        await opened(listener)
        await ask(writer, {"subscribe": "sports"})
        await ask(listener, {"subscribe": "sports"})
        ack = await ask(writer, {"publish": "sports", "payload": {"score": [1, 0]}, "ref": 3})
        assert ack["control"] == "published" and ack["channel"] == "sports-1" and ack["ref"] == 3
        delivered = await recv_json(listener)
        assert delivered["id"] == ack["id"] and delivered["channelId"] == "sports-1"
        assert ack["position"] == f"{delivered['epoch']}-{delivered['offset']}"
        assert json.loads(delivered["payload"]) == {"score": [1, 0]}
        text_ack = await ask(writer, {"publish": "sports-1", "payload": "plain"})
        assert text_ack["control"] == "published"
        assert (await recv_json(listener))["payload"] == "plain"


async def test_publishes_sent_just_before_a_close_are_all_published(server):
    async with websockets.connect(connect_url(server, clientId="last-words-reader")) as listener:
        await opened(listener)
        await ask(listener, {"subscribe": "weather"})
        async with websockets.connect(connect_url(server, clientId="last-words")) as writer:
            await opened(writer)
            await ask(writer, {"subscribe": "weather"})
            for index in range(200):
                await writer.send(json.dumps({"publish": "weather", "payload": f"{index:04d}"}))
        received = [(await recv_json(listener))["payload"] for _ in range(200)]
    assert received == [f"{index:04d}" for index in range(200)]


@pytest.mark.parametrize(
    ("frame", "code", "error"),
    [
        ({"subscribe": "nowhere"}, 4404, "channel_not_found"),
        ({"subscribe": "vault"}, 4401, "token_required"),
        ({"subscribe": "vault", "token": "garbage"}, 4401, "token_invalid"),
        ({"subscribe": "news", "since": "not a position!"}, 4400, "bad_request"),
        ({"publish": "news", "payload": "x"}, 4404, "not_subscribed"),
        ({"unsubscribe": "news"}, 4404, "not_subscribed"),
        ({"subscribe": 5}, 4400, "bad_request"),
        ({"subscribe": "news", "publish": "news"}, 4400, "bad_request"),
        ({"hello": "there"}, 4400, "bad_request"),
        (["subscribe", "news"], 4400, "bad_request"),
        ({"subscribe": "news", "ref": {"no": 1}}, 4400, "bad_request"),
    ],
)
async def test_each_refusal_is_answered_and_the_connection_stays_open(server, frame, code, error):
    async with websockets.connect(connect_url(server)) as ws:
        await opened(ws)
        answer = await ask(ws, frame)
        assert (answer["control"], answer["code"], answer["error"]) == ("error", code, error), answer
        assert answer["message"]
        # Still open and serving.
        assert (await ask(ws, {"subscribe": "weather"}))["control"] == "subscribed"


async def test_a_frame_that_is_not_json_is_answered_with_an_error(server):
    async with websockets.connect(connect_url(server)) as ws:
        await opened(ws)
        await ws.send("{not json")
        answer = await recv_json(ws)
        assert (answer["control"], answer["code"], answer["error"]) == ("error", 4400, "bad_request")
        assert (await ask(ws, {"subscribe": "news"}))["control"] == "subscribed"


async def test_refusals_of_channels_name_the_channel_and_carry_the_ref(server):
    async with (
        websockets.connect(connect_url(server, clientId="hog")) as hog,
        websockets.connect(connect_url(server, clientId="late")) as late,
    ):
        await opened(hog)
        await opened(late)
        assert (await ask(hog, {"subscribe": "small"}))["control"] == "subscribed"
        full = await ask(late, {"subscribe": "small", "ref": "s"})
        assert (full["code"], full["error"], full["channel"], full["ref"]) == (4422, "channel_full", "small", "s")
        twice = await ask(hog, {"subscribe": "small-1"})
        assert (twice["code"], twice["error"]) == (4409, "already_subscribed")


async def test_the_same_client_id_twice_on_a_channel_is_refused_on_that_channel_only(server):
    async with (
        websockets.connect(connect_url(server, clientId="dup")) as first,
        websockets.connect(connect_url(server, clientId="dup")) as second,
    ):
        await opened(first)
        await opened(second)
        await ask(first, {"subscribe": "news"})
        taken = await ask(second, {"subscribe": "news"})
        assert (taken["code"], taken["error"]) == (4409, "client_id_taken")
        assert (await ask(second, {"subscribe": "sports"}))["control"] == "subscribed"


async def test_the_cap_on_channels_per_connection_is_a_documented_error(server):
    async with websockets.connect(connect_url(server)) as ws:
        await opened(ws)
        for channel in ("news", "sports", "weather"):
            assert (await ask(ws, {"subscribe": channel}))["control"] == "subscribed"
        answer = await ask(ws, {"subscribe": "feed"})
        assert (answer["code"], answer["error"], answer["limit"]) == (4400, "too_many_channels", 3)


async def test_sse_channels_are_read_only_and_read_only_tokens_cannot_publish(server):
    token = mint(server, "vault-1", "reader-only")
    async with websockets.connect(connect_url(server, clientId="reader-only")) as ws:
        await opened(ws)
        assert (await ask(ws, {"subscribe": "feed"}))["control"] == "subscribed"
        await push(server, "feed-1", "from the backend")
        assert (await recv_json(ws))["payload"] == "from the backend"
        refused = await ask(ws, {"publish": "feed", "payload": "x", "ref": 1})
        assert (refused["code"], refused["error"], refused["ref"]) == (4403, "read_only_channel", 1)
        assert (await ask(ws, {"subscribe": "vault", "token": token}))["control"] == "subscribed"
        forbidden = await ask(ws, {"publish": "vault", "payload": "x"})
        assert (forbidden["code"], forbidden["error"]) == (4403, "token_forbidden")


async def test_one_token_covers_several_private_channels_and_names_the_client(server):
    token = mint(server, ["vault-1", "news-1"], "carol", publish=True)
    async with websockets.connect(connect_url(server)) as ws:
        hello = await opened(ws)
        assert hello["clientId"] is None
        subscribed = await ask(ws, {"subscribe": "vault", "token": token})
        assert (subscribed["control"], subscribed["clientId"]) == ("subscribed", "carol")
        ack = await ask(ws, {"publish": "vault", "payload": "secret"})
        assert ack["control"] == "published"


async def test_an_oversized_payload_is_refused_without_closing(server):
    async with websockets.connect(connect_url(server)) as ws:
        await opened(ws)
        await ask(ws, {"subscribe": "news"})
        answer = await ask(ws, {"publish": "news", "payload": "x" * 70_000, "ref": 9})
        assert (answer["error"], answer["ref"]) == ("payload_too_large", 9)
        assert (await ask(ws, {"publish": "news", "payload": "fits"}))["control"] == "published"


async def test_a_binary_frame_closes_with_1003(server):
    async with websockets.connect(connect_url(server)) as ws:
        await opened(ws)
        await ws.send(b"\x00\x01")
        body, code = await closed_with(ws)
        assert code == 1003 and body["error"] == "binary_frame"


async def test_every_channel_resumes_after_a_reconnect_with_nothing_lost_or_repeated(server):
    positions = {}
    async with websockets.connect(connect_url(server, clientId="resumer")) as ws:
        await opened(ws)
        for channel in ("news", "sports"):
            answer = await ask(ws, {"subscribe": channel})
            positions[answer["channel"]] = answer["position"]
        await push(server, "news-1", "n1")
        message = await recv_json(ws)
        positions[message["channelId"]] = f"{message['epoch']}-{message['offset']}"
    missed = [await push(server, "news-1", "n2"), await push(server, "sports-1", "s1")]
    async with websockets.connect(connect_url(server, clientId="resumer")) as ws:
        await opened(ws)
        for channel_id, position in positions.items():
            await ws.send(json.dumps({"subscribe": channel_id, "since": position}))
        frames = [await recv_json(ws) for _ in range(4)]
        messages = [frame for frame in frames if "control" not in frame]
        assert sorted(m["payload"] for m in messages) == ["n2", "s1"]
        assert {m["id"] for m in messages} == {m["id"] for m in missed}
        await push(server, "sports-1", "s2")
        assert (await recv_json(ws))["payload"] == "s2"


async def test_a_resume_from_an_unknown_position_reports_a_gap_naming_the_channel(server):
    async with websockets.connect(connect_url(server)) as ws:
        await opened(ws)
        await ask(ws, {"subscribe": "weather", "since": "zzzzzzzz-5"})
        gap = await recv_json(ws)
        assert gap["control"] == "gap" and gap["channel"] == "weather-1"


async def test_subscribing_and_unsubscribing_many_times_leaves_the_counts_where_they_were(server):
    async with websockets.connect(connect_url(server, clientId="churn")) as ws:
        await opened(ws)
        for _ in range(50):
            await ws.send(json.dumps({"subscribe": "weather"}))
            await ws.send(json.dumps({"unsubscribe": "weather"}))
        answers = [await recv_json(ws) for _ in range(100)]
        assert [a["control"] for a in answers] == ["subscribed", "unsubscribed"] * 50
        assert await connected(server, "weather-1") == 0


async def test_closing_the_socket_releases_every_channel(server):
    async with websockets.connect(connect_url(server, clientId="quitter")) as ws:
        await opened(ws)
        await ask(ws, {"subscribe": "news"})
        await ask(ws, {"subscribe": "sports"})
        assert await connected(server, "news-1") >= 1
    for _ in range(50):
        if await connected(server, "news-1") == 0 and await connected(server, "sports-1") == 0:
            break
        await asyncio.sleep(0.1)
    assert await connected(server, "news-1") == 0
    assert await connected(server, "sports-1") == 0


async def scrape(server) -> dict[tuple[str, str], float]:
    """Open subscriptions by (channel, transport) and sockets opened, from ``/metrics``."""
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(f"{server.http}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert response.status_code == 200, response.text
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == "realtime_connections":
                samples[(sample.labels["channel"], sample.labels["transport"])] = sample.value
            if sample.name == "realtime_connections_opened_total" and sample.labels["transport"] == "multiplexed":
                samples[("sockets", "multiplexed")] = sample.value
    return samples


async def test_each_subscription_is_counted_in_metrics(server):
    before = await scrape(server)
    async with websockets.connect(connect_url(server, clientId="counted")) as ws:
        await opened(ws)
        await ask(ws, {"subscribe": "news"})
        await ask(ws, {"subscribe": "feed"})
        during = await scrape(server)
        assert during.get(("news-1", "WS"), 0) == before.get(("news-1", "WS"), 0) + 1
        assert during.get(("feed-1", "WS"), 0) == before.get(("feed-1", "WS"), 0) + 1
        assert during[("sockets", "multiplexed")] == before.get(("sockets", "multiplexed"), 0) + 1
        await ask(ws, {"unsubscribe": "feed"})
        assert (await scrape(server)).get(("feed-1", "WS"), 0) == before.get(("feed-1", "WS"), 0)
