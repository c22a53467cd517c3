"""Django code publishing with a raw ``group_send``, in-process (the MEMORY layer lives in this process).

The test drives the project's ASGI application itself (``realtime_project.asgi``): WebSocket
subscribers through channels' ``WebsocketCommunicator``, SSE subscribers through a plain ASGI
communicator reading the streamed body.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from asgiref.testing import ApplicationCommunicator
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator

from channels_app.core.services import message_publish
from channels_app.models import Channel
from channels_app.naming import channel_group

pytestmark = pytest.mark.django_db(transaction=True)


class StreamClient:
    """An SSE subscriber talking ASGI to the application, parsing the body into events."""

    def __init__(self, application, path: str, query: str = "", headers: list | None = None):
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": query.encode(),
            "headers": [(b"host", b"testserver"), *(headers or [])],
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
        }
        self.app = ApplicationCommunicator(application, scope)
        self.buffer = b""

    async def open(self) -> dict:
        """Send the request and return the ``http.response.start`` message."""
        await self.app.send_input({"type": "http.request", "body": b"", "more_body": False})
        return await self.app.receive_output(5)

    async def event(self) -> dict:
        """The next event with a name (keep-alives and the retry hint skipped)."""
        while True:
            while b"\n\n" not in self.buffer:
                message = await self.app.receive_output(5)
                assert message["type"] == "http.response.body"
                self.buffer += message["body"]
            block, self.buffer = self.buffer.split(b"\n\n", 1)
            fields = dict(line.split(": ", 1) for line in block.decode().split("\n") if not line.startswith(":"))
            if "event" in fields:
                return fields

    async def close(self) -> None:
        await self.app.send_input({"type": "http.disconnect"})
        await self.app.wait(5)


@pytest.fixture
async def rooms(inprocess):
    """Two WS channels and one SSE channel in the database, served in this process by a runtime of the test's own."""
    await Channel.objects.acreate(name="room", public_id="room-1", type=Channel.Type.WS)
    await Channel.objects.acreate(name="other-room", public_id="room-2", type=Channel.Type.WS)
    await Channel.objects.acreate(name="feed", public_id="feed-1", type=Channel.Type.SSE)
    return await inprocess()


async def websocket(rooms, path: str) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(rooms.application, path)
    connected, _ = await communicator.connect(5)
    assert connected
    return communicator


async def subscribed_stream(rooms, query: str) -> StreamClient:
    """A stream of the SSE channel, its ``stream-open`` event read."""
    stream = StreamClient(rooms.application, "/api/v1/channels/feed-1", query)
    await stream.open()
    await stream.event()
    return stream


async def test_raw_group_send_reaches_websocket_subscribers(rooms):
    communicator = await websocket(rooms, "/api/v1/channels/room-1?clientId=w1")
    # The handshake completes only once the connection is subscribed.
    assert rooms.runtime.hub.local_count("room-1") == 1
    await get_channel_layer().group_send(
        channel_group("room-1"), {"type": "realtime.message", "channel_id": "room-1", "payload": "from django"}
    )
    received = await communicator.receive_json_from(5)
    await communicator.disconnect()
    assert received["payload"] == "from django"
    assert received["channelId"] == "room-1"
    assert received["clientId"] == "server-message"
    assert received["createdAt"].endswith("Z")
    assert "offset" not in received


async def test_raw_group_send_reaches_sse_subscribers(rooms):
    stream = StreamClient(rooms.application, "/api/v1/channels/feed-1", "clientId=s1")
    start = await stream.open()
    assert start["status"] == 200
    assert rooms.runtime.hub.local_count("feed-1") == 1
    assert (await stream.event())["event"] == "stream-open"
    await get_channel_layer().group_send(
        channel_group("feed-1"),
        {"type": "realtime.message", "channel_id": "feed-1", "payload": "to the feed", "client_id": "billing"},
    )
    event = await stream.event()
    await stream.close()
    assert event["event"] == "message"
    assert "id" not in event  # outside history: no resume position
    data = json.loads(event["data"])
    assert data["payload"] == "to the feed"
    assert data["clientId"] == "billing"
    assert data["channelId"] == "feed-1"


async def test_group_send_to_one_channel_never_reaches_another(rooms):
    elsewhere = await websocket(rooms, "/api/v1/channels/room-2?clientId=w2")
    layer = get_channel_layer()
    await layer.group_send(
        channel_group("room-1"), {"type": "realtime.message", "channel_id": "room-1", "payload": "room one"}
    )
    await layer.group_send(
        channel_group("room-2"), {"type": "realtime.message", "channel_id": "room-2", "payload": "room two"}
    )
    received = await elsewhere.receive_json_from(5)
    assert await elsewhere.receive_nothing(0.05)
    await elsewhere.disconnect()
    assert received["payload"] == "room two"


async def test_message_publish_reaches_websocket_and_sse_subscribers_alike(rooms):
    communicator = await websocket(rooms, "/api/v1/channels/room-1?clientId=w3")
    stream = await subscribed_stream(rooms, "clientId=s3")
    room = await rooms.runtime.registry.resolve("room-1")
    feed = await rooms.runtime.registry.resolve("feed")
    to_room = await message_publish(channel=room, payload="to the room", client_id="backend", runtime=rooms.runtime)
    to_feed = await message_publish(channel=feed, payload="to the feed", client_id="backend", runtime=rooms.runtime)
    over_ws = await communicator.receive_json_from(5)
    over_sse = await stream.event()
    await communicator.disconnect()
    await stream.close()
    assert over_ws == to_room.as_wire()
    assert json.loads(over_sse["data"]) == to_feed.as_wire()
    assert over_sse["id"] == to_feed.position


async def test_group_send_to_a_channel_without_local_subscribers_is_harmless(rooms):
    await get_channel_layer().group_send(
        channel_group("room-1"), {"type": "realtime.message", "channel_id": "room-1", "payload": "nobody"}
    )
    communicator = await websocket(rooms, "/api/v1/channels/room-1?clientId=w4")
    await get_channel_layer().group_send(
        channel_group("room-1"), {"type": "realtime.message", "channel_id": "room-1", "payload": "somebody"}
    )
    received = await communicator.receive_json_from(5)
    await communicator.disconnect()
    assert received["payload"] == "somebody"


@pytest.fixture
def slow_layer(monkeypatch):
    """A channel layer whose group_add answers late, as a remote Redis can."""
    layer = get_channel_layer()
    group_add = layer.group_add

    async def late_group_add(group, channel):
        await asyncio.sleep(0.2)
        await group_add(group, channel)

    monkeypatch.setattr(layer, "group_add", late_group_add)
    return layer


async def test_a_websocket_is_subscribed_before_its_handshake_completes(rooms, slow_layer):
    communicator = await websocket(rooms, "/api/v1/channels/room-1?clientId=w5")
    await slow_layer.group_send(
        channel_group("room-1"), {"type": "realtime.message", "channel_id": "room-1", "payload": "right away"}
    )
    received = await communicator.receive_json_from(5)
    await communicator.disconnect()
    assert received["payload"] == "right away"


async def test_a_stream_is_subscribed_before_it_opens(rooms, slow_layer):
    stream = StreamClient(rooms.application, "/api/v1/channels/feed-1", "clientId=s5")
    await stream.open()
    await slow_layer.group_send(
        channel_group("feed-1"), {"type": "realtime.message", "channel_id": "feed-1", "payload": "right away"}
    )
    assert (await stream.event())["event"] == "stream-open"
    event = await stream.event()
    await stream.close()
    assert json.loads(event["data"])["payload"] == "right away"


async def test_raw_group_send_skips_the_subscriber_named_as_its_sender(rooms):
    named = await websocket(rooms, "/api/v1/channels/room-1?clientId=backend")
    layer = get_channel_layer()
    event = {"type": "realtime.message", "channel_id": "room-1", "payload": "mine", "client_id": "backend"}
    await layer.group_send(channel_group("room-1"), event)
    await layer.group_send(channel_group("room-1"), {**event, "payload": "not mine", "client_id": "someone"})
    received = await named.receive_json_from(5)
    await named.disconnect()
    assert received["payload"] == "not mine"


async def test_realtime_close_event_closes_websockets_and_streams_of_the_channel(rooms):
    communicator = await websocket(rooms, "/api/v1/channels/room-1?clientId=w7")
    stream = await subscribed_stream(rooms, "clientId=s7")
    layer = get_channel_layer()
    for channel_id in ("room-1", "feed-1"):
        await layer.group_send(
            channel_group(channel_id),
            {"type": "realtime.close", "channel_id": channel_id, "code": 4410, "error": "gone", "message": "bye"},
        )
    final_frame = await communicator.receive_json_from(5)
    close = await communicator.receive_output(5)
    final_event = await stream.event()
    end = await stream.app.receive_output(5)
    await stream.app.wait(5)
    assert final_frame == {"control": "close", "code": 4410, "error": "gone", "message": "bye"}
    assert close == {"type": "websocket.close", "code": 4410}
    assert final_event["event"] == "stream-error"
    assert json.loads(final_event["data"]) == final_frame
    assert end == {"type": "http.response.body", "body": b"", "more_body": False}
    assert await rooms.runtime.presence.count("room-1") == 0
    assert await rooms.runtime.presence.count("feed-1") == 0


async def test_a_draining_instance_refuses_new_streams_with_503(rooms):
    rooms.runtime.draining = True
    stream = StreamClient(rooms.application, "/api/v1/channels/feed-1", "clientId=s8")
    start = await stream.open()
    body = await stream.app.receive_output(5)
    await stream.app.wait(5)
    assert start["status"] == 503
    assert json.loads(body["body"])["error"] == "shutting_down"
    assert await rooms.runtime.presence.count("feed-1") == 0
