"""Payloads a client can use: the ``json`` payload format delivers payloads published as JSON values as
JSON values, per channel (``payload_format``) or per connection (``?payload=``), over both transports,
live and resumed from history, through the history API, under both drivers. The ``text`` format (the
default, the Go service's envelope) is unchanged, and a string stays a string however it looks.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import httpx
import pytest
import redis as redis_sync
import websockets

from tests.conftest import TEST_CONFIG
from tests.support.auth import API_KEY, AUTH
from tests.support.clients import open_stream, opened, recv_json
from tests.support.liveserver import served_by

CONFIG = """
server:
  allow_create_new_channels: true
  allow_push_server_messages: true
  publish_rate: 100000
  publish_burst: 100000
pubsub:
  driver: "MEMORY"
channels:
  yaml-json-ws: {id: "yaml-json-ws-1", type: "WS", payload_format: "json"}
  yaml-json-sse: {id: "yaml-json-sse-1", type: "SSE", payload_format: "json"}
"""

# What is pushed ({"payload": ...}), and what a subscriber receives as the payload in each format.
PUSHED = [
    {"order": 42, "items": [1, 2.5, "três"]},
    '{"order": 42}',  # a string that looks like JSON stays a string
    "hello",
    42,
    None,
    [True, {"nested": {"deep": []}}],
]
AS_JSON = PUSHED
AS_TEXT = [
    '{"order":42,"items":[1,2.5,"três"]}',
    '{"order": 42}',
    "hello",
    "42",
    "null",
    '[true,{"nested":{"deep":[]}}]',
]


@pytest.fixture(scope="module", params=["memory", "redis"])
def server(request, start_module_server, tmp_path_factory):
    """One daphne per driver (REDIS on a private redis-server), serving CONFIG with an API key."""
    env = {"REALTIME_API_KEYS": API_KEY}
    yield from served_by(request.param, start_module_server, CONFIG, tmp_path_factory, env=env)


def create_channel(server, kind: str, **fields) -> str:
    """A new channel created through the API (``fields``: more of its create body); its id."""
    channel_id = f"{kind.lower()}-{uuid.uuid4().hex[:10]}"
    response = httpx.post(
        f"{server.http}/api/v1/channels", json={"id": channel_id, "type": kind, **fields}, headers=AUTH, timeout=5
    )
    assert response.status_code == 201, response.text
    return channel_id


async def push(client: httpx.AsyncClient, server, channel_id: str, body: dict, **headers) -> httpx.Response:
    return await client.post(
        f"{server.http}/api/v1/channels/{channel_id}/messages", json=body, headers={**AUTH, **headers}
    )


def query(**params: str | None) -> str:
    return "&".join(f"{key}={value}" for key, value in params.items() if value is not None)


class Subscriber:
    """A WebSocket or an event stream on one channel, read message by message."""

    def __init__(self, server, transport: str, channel_id: str, client_id: str, **params: str | None):
        self.transport = transport
        self.url = f"{server.ws if transport == 'WS' else server.http}/api/v1/channels/{channel_id}"
        self.url += "?" + query(clientId=client_id, **params)

    async def __aenter__(self) -> Subscriber:
        if self.transport == "WS":
            self._context = websockets.connect(self.url)
            self.ws = await self._context.__aenter__()
        else:
            self._context = open_stream(self.url)
            response, self.events = await self._context.__aenter__()
            assert response.status_code == 200, await response.aread()
            await opened(self.events)
        return self

    async def __aexit__(self, *exc_info):
        await self._context.__aexit__(*exc_info)

    async def raw(self) -> str:
        """The next message's text, as the server wrote it."""
        if self.transport == "WS":
            return await asyncio.wait_for(self.ws.recv(), 5)
        return (await self.events.event("message"))["data"]

    async def messages(self, count: int) -> list[dict]:
        return [json.loads(await self.raw()) for _ in range(count)]


# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["WS", "SSE"])
@pytest.mark.parametrize("opt_in", ["channel", "connection"])
async def test_json_values_arrive_as_values_live_and_resumed_and_strings_stay_strings(server, transport, opt_in):
    """Opted in by the channel (YAML ``payload_format: json``; ``?payload=text`` opts out) or by the connection
    (``?payload=json`` on a text channel): the same pushes reach both formats, and a resume from history
    looks exactly like the live delivery."""
    if opt_in == "channel":
        channel_id = "yaml-json-ws-1" if transport == "WS" else "yaml-json-sse-1"
        as_json, as_text = {}, {"payload": "text"}
    else:
        channel_id = create_channel(server, transport)
        as_json, as_text = {"payload": "json"}, {}
    async with (
        httpx.AsyncClient(timeout=5) as client,
        Subscriber(server, transport, channel_id, "json-reader", **as_json) as json_reader,
        Subscriber(server, transport, channel_id, "text-reader", **as_text) as text_reader,
    ):
        for payload in PUSHED:
            assert (await push(client, server, channel_id, {"payload": payload})).status_code == 201
        live_json = await json_reader.messages(len(PUSHED))
        live_text = await text_reader.messages(len(PUSHED))
    assert [message["payload"] for message in live_json] == AS_JSON
    assert [message["payload"] for message in live_text] == AS_TEXT
    # Apart from the payload, the envelopes are the same message.
    for json_message, text_message in zip(live_json, live_text, strict=True):
        assert {**json_message, "payload": None} == {**text_message, "payload": None}

    async with (
        Subscriber(server, transport, channel_id, "json-resumer", since="0", **as_json) as json_resumer,
        Subscriber(server, transport, channel_id, "text-resumer", since="0", **as_text) as text_resumer,
    ):
        assert await json_resumer.messages(len(PUSHED)) == live_json
        assert await text_resumer.messages(len(PUSHED)) == live_text


async def test_the_history_api_reads_in_the_channels_format_unless_asked_otherwise(server):
    text_channel = create_channel(server, "SSE")
    json_channel = create_channel(server, "SSE", payloadFormat="json")
    async with httpx.AsyncClient(timeout=5) as client:
        for channel_id in (text_channel, json_channel):
            for payload in PUSHED:
                assert (await push(client, server, channel_id, {"payload": payload})).status_code == 201

        async def payloads(channel_id: str, **params: str) -> list:
            response = await client.get(
                f"{server.http}/api/v1/channels/{channel_id}/messages", params=params, headers=AUTH
            )
            assert response.status_code == 200, response.text
            return [message["payload"] for message in response.json()["messages"]]

        assert await payloads(text_channel) == AS_TEXT
        assert await payloads(text_channel, payload="json") == AS_JSON
        assert await payloads(json_channel) == AS_JSON
        assert await payloads(json_channel, payload="text") == AS_TEXT
        refused = await client.get(
            f"{server.http}/api/v1/channels/{json_channel}/messages", params={"payload": "xml"}, headers=AUTH
        )
    assert refused.status_code == 400
    assert refused.json()["error"] == "bad_request"
    assert refused.json()["field"] == "payload"


async def test_a_json_connection_publishes_its_frames_as_json_values_and_refuses_frames_that_are_not_json(server):
    channel_id = create_channel(server, "WS")
    async with (
        Subscriber(server, "WS", channel_id, "json-reader", payload="json") as json_reader,
        Subscriber(server, "WS", channel_id, "text-reader") as text_reader,
        websockets.connect(f"{server.ws}/api/v1/channels/{channel_id}?clientId=json-writer&payload=json") as writer,
        websockets.connect(f"{server.ws}/api/v1/channels/{channel_id}?clientId=text-writer") as text_writer,
    ):
        await writer.send('{"a": [1, 2.50, 12345678901234567890123]}')
        await writer.send('"hello"')  # a JSON string is published as that string
        for not_json in ("not json", "", "{'single': 'quotes'}", "NaN", "[" * 65 + "]" * 65):
            await writer.send(not_json)
            error = await recv_json(writer)
            assert (error["control"], error["code"], error["error"]) == ("error", 4400, "payload_not_json"), error
        await text_writer.send('{"b": 1}')  # a text connection's frame is text, JSON-looking or not
        raw_json = await json_reader.raw()
        json_messages = [json.loads(raw_json), *await json_reader.messages(2)]
        text_messages = await text_reader.messages(3)
    # Written as the client wrote it: every digit of the number is kept.
    assert '"payload":{"a": [1, 2.50, 12345678901234567890123]}' in raw_json
    assert [message["payload"] for message in json_messages] == [
        {"a": [1, 2.5, 12345678901234567890123]},
        "hello",
        '{"b": 1}',
    ]
    assert [message["payload"] for message in text_messages] == [
        '{"a": [1, 2.50, 12345678901234567890123]}',
        "hello",
        '{"b": 1}',
    ]
    assert [message["clientId"] for message in text_messages] == ["json-writer", "json-writer", "text-writer"]
    metrics = (await asyncio.to_thread(httpx.get, f"{server.http}/metrics", timeout=5)).text
    assert 'realtime_frames_refused_total{reason="not_json"}' in metrics


@pytest.mark.parametrize("transport", ["WS", "SSE"])
async def test_an_unknown_payload_format_is_refused(server, transport):
    channel_id = create_channel(server, transport)
    if transport == "WS":
        async with websockets.connect(f"{server.ws}/api/v1/channels/{channel_id}?payload=JSON") as ws:
            close = await recv_json(ws)
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
        assert ws.close_code == 4400
    else:
        response = await asyncio.to_thread(
            httpx.get, f"{server.http}/api/v1/channels/{channel_id}?payload=JSON", timeout=5
        )
        assert response.status_code == 400
        close = response.json()
    assert close["error"] == "bad_request"
    assert close["field"] == "payload"


async def test_a_key_is_the_key_of_one_payload_of_one_kind(server):
    """An Idempotency-Key used for the string "{}" is not the key of the object {}; a replayed JSON push is
    still a JSON value."""
    channel_id = create_channel(server, "SSE", payloadFormat="json")
    async with httpx.AsyncClient(timeout=5) as client:
        first = await push(client, server, channel_id, {"payload": "{}"}, **{"Idempotency-Key": "k-1"})
        other_kind = await push(client, server, channel_id, {"payload": {}}, **{"Idempotency-Key": "k-1"})
        again = await push(client, server, channel_id, {"payload": "{}"}, **{"Idempotency-Key": "k-1"})
        value = await push(client, server, channel_id, {"payload": {}}, **{"Idempotency-Key": "k-2"})
        value_again = await push(client, server, channel_id, {"payload": {}}, **{"Idempotency-Key": "k-2"})
        history = await client.get(f"{server.http}/api/v1/channels/{channel_id}/messages", headers=AUTH)
    assert (first.status_code, other_kind.status_code, again.status_code) == (201, 422, 201)
    assert other_kind.json()["error"] == "idempotency_key_reused"
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert value_again.headers["Idempotent-Replayed"] == "true"
    assert value_again.json()["id"] == value.json()["id"]
    assert [message["payload"] for message in history.json()["messages"]] == ["{}", {}]


@pytest.mark.parametrize("server", ["redis"], indirect=True)
async def test_a_history_entry_written_before_payload_kinds_reads_as_text(server):
    """Under REDIS, a stream entry without the ``k`` field (as every entry was before) is text, even on a json
    channel and even when it looks like JSON; entries after it keep their own kind."""
    channel_id = create_channel(server, "WS", payloadFormat="json")
    async with httpx.AsyncClient(timeout=5) as client:
        assert (await push(client, server, channel_id, {"payload": {"new": 1}})).status_code == 201
        store = redis_sync.Redis.from_url(server.redis.url)
        offset = store.incr(f"realtime:h:{{{channel_id}}}:seq")
        store.xadd(
            f"realtime:h:{{{channel_id}}}:log",
            {"i": str(uuid.uuid4()), "c": "old-writer", "p": '{"old": true}', "t": "2026-01-01T00:00:00.000Z"}
            | {"ts": repr(time.time())},
            id=f"{offset}-1",
        )
        assert (await push(client, server, channel_id, {"payload": {"new": 2}})).status_code == 201
        history = await client.get(f"{server.http}/api/v1/channels/{channel_id}/messages", headers=AUTH)
    expected = [{"new": 1}, '{"old": true}', {"new": 2}]
    assert [message["payload"] for message in history.json()["messages"]] == expected
    async with Subscriber(server, "WS", channel_id, "resumer", since="0") as resumer:
        assert [message["payload"] for message in await resumer.messages(3)] == expected


async def test_a_channel_created_with_a_payload_format_describes_it(server):
    channel_id = create_channel(server, "WS", payloadFormat="json")
    preflight = await asyncio.to_thread(httpx.get, f"{server.http}/api/v1/channels/{channel_id}?upgrade=0", timeout=5)
    assert preflight.json()["payloadFormat"] == "json"
    listed = await asyncio.to_thread(httpx.get, f"{server.http}/api/v1/channels", headers=AUTH, timeout=5)
    described = {channel["id"]: channel for channel in listed.json()["channels"]}
    assert described[channel_id]["payloadFormat"] == "json"
    assert described["yaml-json-ws-1"]["payloadFormat"] == "json"
    refused = await asyncio.to_thread(
        httpx.post,
        f"{server.http}/api/v1/channels",
        json={"id": "bad-format", "type": "WS", "payloadFormat": "xml"},
        headers=AUTH,
        timeout=5,
    )
    assert refused.status_code == 400
    assert refused.json()["field"] == "payloadFormat"


async def test_under_daphne_and_uvicorn_a_connection_opts_in_on_either_transport(start_server, asgi_server):
    server = start_server(TEST_CONFIG, env={"REALTIME_API_KEYS": API_KEY}, server=asgi_server)
    async with (
        httpx.AsyncClient(timeout=5) as client,
        Subscriber(server, "WS", "chat-1", "ws-json", payload="json") as ws_json,
        Subscriber(server, "WS", "chat-1", "ws-text") as ws_text,
        Subscriber(server, "SSE", "feed-1", "sse-json", payload="json") as sse_json,
        Subscriber(server, "SSE", "feed-1", "sse-text") as sse_text,
        websockets.connect(f"{server.ws}/api/v1/channels/chat-1?clientId=writer&payload=json") as writer,
    ):
        await push(client, server, "chat-1", {"payload": {"order": 42}})
        await writer.send('{"order": 43}')
        await push(client, server, "feed-1", {"payload": {"order": 44}})
        assert [m["payload"] for m in await ws_json.messages(2)] == [{"order": 42}, {"order": 43}]
        assert [m["payload"] for m in await ws_text.messages(2)] == ['{"order":42}', '{"order": 43}']
        assert [m["payload"] for m in await sse_json.messages(1)] == [{"order": 44}]
        assert [m["payload"] for m in await sse_text.messages(1)] == ['{"order":44}']
