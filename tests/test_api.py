"""The server API against a real daphne: every endpoint's success and error statuses."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import websockets

from tests.conftest import TEST_CONFIG, redis_config
from tests.support.auth import API_KEY, AUTH
from tests.support.clients import lines_after_opening


@pytest.fixture
def api_server(start_server):
    """A server with one API key configured through REALTIME_API_KEYS."""
    return start_server(env={"REALTIME_API_KEYS": f"other-key,{API_KEY}"})


def test_push_reaches_websocket_and_sse_subscribers(api_server):
    async def scenario():
        async with websockets.connect(api_server.channel_url("chat-1", clientId="listener")) as ws:
            async with httpx.AsyncClient(timeout=10) as client:
                async with client.stream(
                    "GET", api_server.channel_url("feed-1", scheme="http", clientId="s1")
                ) as stream:
                    lines = await lines_after_opening(stream)
                    ws_push = await client.post(
                        f"{api_server.http}/api/v1/channels/chat-1/messages", json={"payload": "to ws"}, headers=AUTH
                    )
                    sse_push = await client.post(
                        f"{api_server.http}/api/v1/channels/feed/messages",
                        json={"payload": {"kind": "alert", "n": 1}},
                        headers=AUTH,
                    )
                    data = None
                    while data is None:
                        line = await asyncio.wait_for(anext(lines), 5)
                        if line.startswith("data: ") and '"payload"' in line:
                            data = json.loads(line[len("data: ") :])
                ws_message = json.loads(await asyncio.wait_for(ws.recv(), 5))
        return ws_push, sse_push, ws_message, data

    ws_push, sse_push, ws_message, sse_message = asyncio.run(scenario())
    assert ws_push.status_code == 201
    assert ws_push.json()["offset"] == 1
    assert ws_message["payload"] == "to ws"
    assert ws_message["clientId"] == "server-message"
    assert ws_message["id"] == ws_push.json()["id"]
    assert sse_push.status_code == 201
    assert json.loads(sse_message["payload"]) == {"kind": "alert", "n": 1}
    assert sse_message["clientId"] == "server-message"


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "api_key_required"),
        ({"Authorization": "Bearer wrong"}, "api_key_invalid"),
        ({"Authorization": "Basic x"}, "api_key_required"),
    ],
)
def test_write_endpoints_refuse_missing_or_wrong_key(api_server, headers, code):
    requests = [
        ("POST", "/api/v1/channels/chat-1/messages", {"payload": "x"}),
        ("POST", "/api/v1/messages", {"messages": [{"channel": "chat-1", "payload": "x"}]}),
        ("POST", "/api/v1/channels", {"id": "new", "type": "WS"}),
        ("GET", "/api/v1/channels", None),
        ("DELETE", "/api/v1/channels/chat-1", None),
        ("GET", "/api/v1/channels/chat-1/messages", None),
        ("POST", "/api/v1/tokens", {"channel": "chat-1"}),
    ]
    for method, path, body in requests:
        response = httpx.request(method, api_server.http + path, json=body, headers=headers)
        assert response.status_code == 401, (method, path, response.text)
        assert response.json()["error"] == code
        assert response.headers["www-authenticate"].startswith("Bearer")


def test_without_any_key_the_api_is_closed_and_says_how_to_open_it(daphne_server):
    response = httpx.post(f"{daphne_server.http}/api/v1/channels/chat-1/messages", json={"payload": "x"})
    assert response.status_code == 401
    assert response.json()["error"] == "api_key_not_configured"
    assert "REALTIME_API_KEYS" in response.json()["message"]


def test_app_debug_without_keys_opens_the_api(start_server):
    server = start_server(env={"APP_DEBUG": "1"})
    response = httpx.post(f"{server.http}/api/v1/channels/chat-1/messages", json={"payload": "x"})
    assert response.status_code == 201
    assert "server API" in server.log() and "OPEN" in server.log()


def test_push_errors(api_server):
    url = f"{api_server.http}/api/v1/channels/chat-1/messages"
    assert httpx.post(url, content=b"{not json", headers=AUTH).status_code == 400
    assert httpx.post(url, json={"text": "no payload"}, headers=AUTH).json()["error"] == "bad_request"
    missing = httpx.post(f"{api_server.http}/api/v1/channels/nope/messages", json={"payload": "x"}, headers=AUTH)
    assert missing.status_code == 404
    assert missing.json()["error"] == "channel_not_found"
    too_large = httpx.post(url, json={"payload": "x" * 70_000}, headers=AUTH)
    assert too_large.status_code == 413
    assert too_large.json()["error"] == "payload_too_large"
    wrong_method = httpx.put(url, json={"payload": "x"}, headers=AUTH)
    assert wrong_method.status_code == 405


def test_push_and_create_can_be_disabled(start_server):
    config = TEST_CONFIG.replace("allow_create_new_channels: true", "allow_create_new_channels: false").replace(
        "allow_push_server_messages: true", "allow_push_server_messages: false"
    )
    server = start_server(config, env={"REALTIME_API_KEYS": API_KEY})
    push = httpx.post(f"{server.http}/api/v1/channels/chat-1/messages", json={"payload": "x"}, headers=AUTH)
    assert push.status_code == 403
    assert push.json()["error"] == "push_disabled"
    create = httpx.post(f"{server.http}/api/v1/channels", json={"id": "x", "type": "WS"}, headers=AUTH)
    assert create.status_code == 403
    assert create.json()["error"] == "create_disabled"


def test_idempotent_retry_publishes_once(api_server):
    url = f"{api_server.http}/api/v1/channels/chat-1/messages"
    headers = {**AUTH, "Idempotency-Key": "order-42"}
    first = httpx.post(url, json={"payload": "once"}, headers=headers)
    retry = httpx.post(url, json={"payload": "once"}, headers=headers)
    assert first.status_code == retry.status_code == 201
    assert retry.json()["id"] == first.json()["id"]
    assert retry.headers["idempotent-replayed"] == "true"
    other = httpx.post(url, json={"payload": "different"}, headers=headers)
    assert other.status_code == 422
    history = httpx.get(url, headers=AUTH).json()["messages"]
    assert [message["payload"] for message in history] == ["once"]


def test_a_batch_retried_with_its_idempotency_key_publishes_each_item_once(api_server):
    url = f"{api_server.http}/api/v1/messages"
    headers = {**AUTH, "Idempotency-Key": "batch-7"}
    body = {"messages": [{"channel": "chat-1", "payload": "a"}, {"channel": "chat-2", "payload": "b"}]}
    first = httpx.post(url, json=body, headers=headers).json()
    retry = httpx.post(url, json=body, headers=headers).json()
    assert [result["status"] for result in first["results"]] == [201, 201]
    assert [result.get("replayed") for result in first["results"]] == [None, None]
    assert [result["id"] for result in retry["results"]] == [result["id"] for result in first["results"]]
    assert [result.get("replayed") for result in retry["results"]] == [True, True]
    for channel, payload in (("chat-1", "a"), ("chat-2", "b")):
        history = httpx.get(f"{api_server.http}/api/v1/channels/{channel}/messages", headers=AUTH).json()
        assert [message["payload"] for message in history["messages"]] == [payload]
    too_long = httpx.post(url, json=body, headers={**AUTH, "Idempotency-Key": "k" * 198})
    assert (too_long.status_code, too_long.json()["error"]) == (400, "bad_request")


def test_batch_reports_each_result(api_server):
    body = {"messages": [{"channel": "chat-1", "payload": "a"}, {"channel": "nope", "payload": "b"}, {"payload": "c"}]}
    response = httpx.post(f"{api_server.http}/api/v1/messages", json=body, headers=AUTH)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [result["status"] for result in results] == [201, 404, 400]
    assert response.json()["published"] == 1
    too_many = {"messages": [{"channel": "chat-1", "payload": "x"}] * 101}
    assert httpx.post(f"{api_server.http}/api/v1/messages", json=too_many, headers=AUTH).status_code == 400


@pytest.mark.parametrize("driver", ["memory", "redis"])
def test_a_batch_s_items_for_one_channel_keep_their_order(start_server, redis_server, driver):
    """A batch's items are published together (their Redis calls share round trips), yet the items
    for one channel get offsets, and reach its subscribers, in the order of the batch."""
    env = {"REALTIME_API_KEYS": API_KEY}
    server = start_server(redis_config(redis_server.url), env=env) if driver == "redis" else start_server(env=env)
    channels = ("chat-1", "chat-2")
    items = [{"channel": channels[index % 3 % 2], "payload": f"m{index}"} for index in range(90)]

    async def scenario():
        async with (
            websockets.connect(server.channel_url("chat-1", clientId="one")) as one,
            websockets.connect(server.channel_url("chat-2", clientId="two")) as two,
            httpx.AsyncClient(timeout=10) as client,
        ):
            response = await client.post(f"{server.http}/api/v1/messages", json={"messages": items}, headers=AUTH)
            heard = {}
            for channel, ws in (("chat-1", one), ("chat-2", two)):
                expected = sum(1 for item in items if item["channel"] == channel)
                heard[channel] = [json.loads(await asyncio.wait_for(ws.recv(), 5))["payload"] for _ in range(expected)]
        return response.json(), heard

    body, heard = asyncio.run(scenario())
    assert body["published"] == 90
    for channel in channels:
        sent = [item["payload"] for item in items if item["channel"] == channel]
        offsets = [result["offset"] for result in body["results"] if result["channel"] == channel]
        assert offsets == list(range(1, len(sent) + 1)), f"{channel}: offsets not in batch order"
        assert heard[channel] == sent, f"{channel}: delivered out of batch order"


def test_create_list_use_and_delete_a_channel(api_server):
    created = httpx.post(
        f"{api_server.http}/api/v1/channels",
        json={"id": "runtime-1", "type": "WS", "maxOfChannelConnections": 2},
        headers=AUTH,
    )
    assert created.status_code == 201
    assert created.json()["source"] == "api"
    duplicate = httpx.post(f"{api_server.http}/api/v1/channels", json={"id": "runtime-1", "type": "WS"}, headers=AUTH)
    assert duplicate.status_code == 409
    invalid = httpx.post(f"{api_server.http}/api/v1/channels", json={"id": "bad id", "type": "WS"}, headers=AUTH)
    assert invalid.status_code == 400
    assert (
        httpx.post(f"{api_server.http}/api/v1/channels", json={"id": "x", "type": "TCP"}, headers=AUTH).status_code
        == 400
    )

    async def use_then_delete():
        async with (
            websockets.connect(api_server.channel_url("runtime-1", clientId="a")) as ws,
            httpx.AsyncClient(base_url=api_server.http, headers=AUTH) as client,
        ):
            listing = (await client.get("/api/v1/channels")).json()["channels"]
            deleted = await client.delete("/api/v1/channels/runtime-1")
            control = json.loads(await asyncio.wait_for(ws.recv(), 5))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
        return listing, deleted, control, closed.value.rcvd.code

    listing, deleted, control, close_code = asyncio.run(use_then_delete())
    entry = next(channel for channel in listing if channel["id"] == "runtime-1")
    assert entry["connections"] == 1
    assert deleted.status_code == 200
    assert control["error"] == "channel_deleted"
    assert close_code == 4410
    gone = httpx.get(api_server.channel_url("runtime-1", scheme="http", upgrade="0"))
    assert gone.status_code == 404
    yaml_channel = httpx.delete(f"{api_server.http}/api/v1/channels/chat-1", headers=AUTH)
    assert yaml_channel.status_code == 409
    assert yaml_channel.json()["error"] == "channel_declared_in_yaml"
    assert httpx.delete(f"{api_server.http}/api/v1/channels/nope", headers=AUTH).status_code == 404


def test_the_channel_list_pages_by_name_and_unpaged_lists_everything(api_server):
    everything = httpx.get(f"{api_server.http}/api/v1/channels", headers=AUTH).json()
    names = [channel["name"] for channel in everything["channels"]]
    assert "next" not in everything and len(names) >= 3 and names == sorted(names)

    pages, after = [], None
    while True:
        query = {"limit": "2"} | ({"after": after} if after is not None else {})
        page = httpx.get(f"{api_server.http}/api/v1/channels", params=query, headers=AUTH).json()
        assert len(page["channels"]) <= 2
        pages.append([channel["name"] for channel in page["channels"]])
        after = page["next"]
        if after is None:
            break
    assert [name for page in pages for name in page] == names
    assert all(len(page) == 2 for page in pages[:-1])

    for bad in ("0", "1001", "x", "²"):
        refused = httpx.get(f"{api_server.http}/api/v1/channels", params={"limit": bad}, headers=AUTH)
        assert refused.status_code == 400 and refused.json()["field"] == "limit", bad


def test_history_read_since_a_position(api_server):
    url = f"{api_server.http}/api/v1/channels/chat-1/messages"
    receipts = [httpx.post(url, json={"payload": f"m{i}"}, headers=AUTH).json() for i in range(3)]
    since_first = httpx.get(url, params={"since": receipts[0]["position"]}, headers=AUTH).json()
    assert [message["payload"] for message in since_first["messages"]] == ["m1", "m2"]
    assert since_first["gap"] is None
    stale = httpx.get(url, params={"since": "deadbeef-1"}, headers=AUTH).json()
    assert stale["gap"]["reason"] == "epoch_changed"
    assert httpx.get(url, params={"since": "not a position"}, headers=AUTH).status_code == 400


def test_openapi_document_is_served(api_server):
    document = httpx.get(f"{api_server.http}/api/v1/openapi.json").json()
    assert document["openapi"].startswith("3.")
    assert "/api/v1/channels/{channel}/messages" in document["paths"]
