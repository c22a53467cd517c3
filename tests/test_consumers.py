"""The WebSocket consumer in-process: refusals, frame checks, slow consumers, crashes and counters."""

from __future__ import annotations

import asyncio
import json

import pytest
from channels.testing import WebsocketCommunicator

from channels_app.core import services
from channels_app.core.outbox import Outbox
from channels_app.core.subscription import Subscription
from channels_app.errors import ApplicationError
from channels_app.models import Channel
from channels_app.state.history import MemoryHistory
from channels_app.transports import subscribing
from channels_app.transports import websocket as consumers
from tests.support.fakes import HeldHistory
from tests.support.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def open_room(inprocess):
    """``await open_room(**server)``: the service in this process, with the WS channel ``room-1`` (3 slots)."""
    await Channel.objects.acreate(name="room", public_id="room-1", type=Channel.Type.WS, max_connections=3)
    return inprocess


async def connect(room, query: str) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(room.application, f"/api/v1/channels/room-1?{query}")
    connected, _ = await communicator.connect(5)
    assert connected
    return communicator


async def closed(communicator: WebsocketCommunicator) -> tuple[dict, int]:
    """The final control frame and the close code the consumer ended with."""
    body = await communicator.receive_json_from(5)
    close = await communicator.receive_output(5)
    assert close["type"] == "websocket.close"
    return body, close["code"]


async def test_refusal_is_a_close_frame_then_the_code_and_is_counted(open_room):
    room = await open_room()
    runtime = room.runtime
    communicator = WebsocketCommunicator(room.application, "/api/v1/channels/nowhere?clientId=x")
    await communicator.connect(5)
    body, code = await closed(communicator)
    assert code == 4404
    assert (body["control"], body["code"], body["error"]) == ("close", 4404, "channel_not_found")
    assert runtime.stats.counters()["refusals_channel_not_found"] == 1
    assert await runtime.presence.count("room-1") == 0


async def test_publish_and_fan_out_are_counted(open_room):
    room = await open_room()
    runtime = room.runtime
    sender, receiver = await connect(room, "clientId=sender"), await connect(room, "clientId=receiver")
    assert runtime.stats.counters()["connections_opened_ws"] == 2
    await sender.send_to(text_data="counted")
    assert (await receiver.receive_json_from(5))["payload"] == "counted"
    await sender.disconnect()
    await receiver.disconnect()
    counters = runtime.stats.counters()
    assert counters["messages_published"] == 1
    assert counters["deliveries"] == 1
    assert await runtime.presence.count("room-1") == 0


async def test_binary_frame_closes_with_1003(open_room):
    room = await open_room()
    runtime = room.runtime
    communicator = await connect(room, "clientId=binary")
    await communicator.send_to(bytes_data=b"\x00")
    body, code = await closed(communicator)
    assert code == 1003
    assert body["error"] == "binary_frame"
    assert runtime.stats.counters()["frames_refused_binary"] == 1
    assert await runtime.presence.count("room-1") == 0


async def test_frame_over_the_configured_size_closes_with_1009_and_is_not_published(open_room):
    room = await open_room(max_message_size=10)
    runtime = room.runtime
    communicator = await connect(room, "clientId=big")
    await communicator.send_to(text_data="é" * 5)  # 10 bytes: at the limit
    await communicator.send_to(text_data="é" * 5 + "!")
    body, code = await closed(communicator)
    assert code == 1009
    assert body["limit"] == 10
    assert runtime.stats.counters()["frames_refused_too_large"] == 1
    assert runtime.stats.counters()["messages_published"] == 1


async def test_publishing_over_the_rate_is_an_error_frame_and_nothing_is_published(open_room):
    room = await open_room(publish_rate=0.001, publish_burst=1)
    runtime = room.runtime
    communicator = await connect(room, "clientId=hasty&echo=1")
    await communicator.send_to(text_data="allowed")
    await communicator.send_to(text_data="too soon")
    # The error answers at once; the echo goes through the channel layer and the hub first.
    frames = [await communicator.receive_json_from(5) for _ in range(2)]
    await communicator.disconnect()
    (echoed,) = [frame for frame in frames if "control" not in frame]
    (error,) = [frame for frame in frames if "control" in frame]
    assert echoed["payload"] == "allowed"
    assert error["control"] == "error"
    assert error["code"] == 4429
    assert runtime.stats.counters()["frames_refused_rate_limited"] == 1
    assert await runtime.history.head("room-1") == 1


async def test_slow_consumer_is_closed_with_4408_and_frees_its_slot(open_room, monkeypatch):
    room = await open_room()
    runtime = room.runtime
    # The server reports a full write buffer for new connections: the next message overflows.
    monkeypatch.setattr(subscribing, "write_buffer_watch", lambda send: (lambda: 10**9, None))
    slow = await connect(room, "clientId=slow")
    monkeypatch.undo()
    sender = await connect(room, "clientId=sender")
    await sender.send_to(text_data="too much")
    body, code = await closed(slow)
    await sender.disconnect()
    assert code == 4408
    assert body["error"] == "slow_consumer"
    assert runtime.stats.counters()["slow_consumer_disconnects"] == 1
    assert not await runtime.presence.contains("room-1", "slow")
    assert runtime.hub.local_count("room-1") == 0


async def test_a_replay_larger_than_the_outgoing_buffer_is_paced_not_cut_off(open_room):
    room = await open_room(max_pending_messages=3)
    runtime = room.runtime
    channel = await runtime.registry.resolve("room-1")
    for index in range(5):
        await services.message_publish(channel=channel, payload=f"m{index}", client_id="backend", runtime=runtime)
    communicator = WebsocketCommunicator(room.application, "/api/v1/channels/room-1?clientId=behind&since=0")
    await communicator.connect(5)
    # Published while the replay is queued page by page: held, then sent after it, once.
    await services.message_publish(channel=channel, payload="live", client_id="backend", runtime=runtime)
    received = [json.loads(await communicator.receive_from(5))["payload"] for _ in range(6)]
    assert received == ["m0", "m1", "m2", "m3", "m4", "live"]
    assert await communicator.receive_nothing(0.2)
    assert await runtime.presence.count("room-1") == 1
    assert "slow_consumer_disconnects" not in runtime.stats.counters()
    await communicator.disconnect()


async def test_a_publish_that_crashes_closes_the_connection_with_1011_and_frees_its_slot(
    open_room, monkeypatch, caplog
):
    room = await open_room()
    runtime = room.runtime

    async def crash(**kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(consumers, "message_publish", crash)
    communicator = await connect(room, "clientId=doomed")
    assert await runtime.presence.contains("room-1", "doomed")
    await communicator.send_to(text_data="anything")
    body, code = await closed(communicator)
    assert code == 1011
    assert body["error"] == "internal_error"
    assert "boom" not in json.dumps(body)  # no internals to the client; they are in the log
    assert "publishing a WebSocket frame failed" in caplog.text and "RuntimeError: boom" in caplog.text
    assert not await runtime.presence.contains("room-1", "doomed")
    assert runtime.hub.local_count("room-1") == 0
    again = await connect(room, "clientId=doomed")
    await again.disconnect()


async def test_a_frame_the_channel_layer_refuses_is_kept_and_delivered_once_the_layer_is_back(open_room, monkeypatch):
    """The message is recorded, so it is published: no error frame invites the client to send it again."""
    room = await open_room()
    runtime = room.runtime
    runtime.fanout_repair.retry_seconds = 0.05
    group_send = runtime.layer.group_send
    refusals = [ConnectionError("layer down")]

    async def down_once(group, message):
        if refusals:
            raise refusals.pop()
        await group_send(group, message)

    communicator = await connect(room, "clientId=publisher&echo=1")
    monkeypatch.setattr(runtime.layer, "group_send", down_once)
    await communicator.send_to(text_data="kept")
    delivered = await communicator.receive_json_from(5)
    await communicator.disconnect()
    assert (delivered["payload"], delivered["offset"]) == ("kept", 1)
    assert runtime.stats.counters()["publish_errors"] == 1
    assert runtime.stats.counters()["fanout_repaired"] == 1
    assert await runtime.history.head("room-1") == 1


async def test_draining_instance_refuses_new_connections_with_4503(open_room):
    room = await open_room()
    runtime = room.runtime
    runtime.draining = True
    communicator = WebsocketCommunicator(room.application, "/api/v1/channels/room-1?clientId=late")
    await communicator.connect(5)
    body, code = await closed(communicator)
    assert code == 4503
    assert body["error"] == "shutting_down"
    assert await runtime.presence.count("room-1") == 0


async def test_channel_full_and_taken_client_id_leave_the_holders_alone(open_room):
    room = await open_room()
    runtime = room.runtime
    holders = [await connect(room, f"clientId=holder-{index}") for index in range(3)]
    for query, expected in (("clientId=holder-0", 4409), ("clientId=newcomer", 4422)):
        refused = WebsocketCommunicator(room.application, f"/api/v1/channels/room-1?{query}")
        await refused.connect(5)
        _, code = await closed(refused)
        assert code == expected
    assert await runtime.presence.count("room-1") == 3
    await holders[0].disconnect()
    assert await runtime.presence.count("room-1") == 2
    newcomer = await connect(room, "clientId=newcomer")
    for communicator in (*holders[1:], newcomer):
        await communicator.disconnect()
    assert await runtime.presence.count("room-1") == 0


async def test_a_connections_frames_are_published_in_order_without_waiting_for_each_other(open_room):
    history = HeldHistory(MemoryHistory())
    room = await open_room(history=history, publish_rate=1000, publish_burst=1000)
    publisher = await connect(room, "clientId=publisher")
    reader = await connect(room, "clientId=reader")
    for index in range(40):
        await publisher.send_to(text_data=f"m{index}")
    await wait_until(lambda: room.runtime.in_flight.count == consumers.PUBLISHES_IN_FLIGHT)
    # The first frame's run is on its way; no more than PUBLISHES_IN_FLIGHT frames were taken up
    # meanwhile (the consumer stopped reading), and those wait together for the next run.
    assert history.runs == [1]
    history.release.set()
    received = [json.loads(await reader.receive_from(5)) for _ in range(40)]
    assert [message["payload"] for message in received] == [f"m{index}" for index in range(40)]
    assert [message["offset"] for message in received] == list(range(1, 41))
    assert history.runs[1] == consumers.PUBLISHES_IN_FLIGHT - 1
    assert len(history.runs) < 40
    await publisher.disconnect()
    await reader.disconnect()


async def test_frames_read_before_the_client_left_are_still_published_and_drained_for(open_room):
    history = HeldHistory(MemoryHistory())
    room = await open_room(history=history, publish_rate=1000, publish_burst=1000)
    runtime = room.runtime
    publisher = await connect(room, "clientId=publisher")
    for index in range(5):
        await publisher.send_to(text_data=f"m{index}")
    await wait_until(lambda: runtime.in_flight.count == 5)
    await publisher.disconnect()
    # A draining instance waits for them like for accepted pushes.
    assert runtime.in_flight.count == 5
    history.release.set()
    async with asyncio.timeout(5):
        await runtime.in_flight.wait_idle()
    assert await history.head("room-1") == 5
    assert not await runtime.presence.contains("room-1", "publisher")


async def test_a_frame_waiting_for_room_is_not_published_once_the_connection_closed(open_room):
    history = HeldHistory(MemoryHistory())
    room = await open_room(history=history, publish_rate=1000, publish_burst=1000)
    runtime = room.runtime
    publisher = await connect(room, "clientId=publisher")
    for index in range(consumers.PUBLISHES_IN_FLIGHT + 4):
        await publisher.send_to(text_data=f"m{index}")
    await asyncio.sleep(0.1)
    closed_now = runtime.hub.close_local("room-1", ApplicationError("disconnected", "bye", close_code=4000))
    assert closed_now == 1
    history.release.set()
    body, code = await closed(publisher)
    assert code == 4000
    async with asyncio.timeout(5):
        await runtime.in_flight.wait_idle()
    # The frames in flight were published; the one waiting for room and those not yet read were not.
    assert await history.head("room-1") == consumers.PUBLISHES_IN_FLIGHT


async def test_a_connection_replaced_before_its_hub_joined_the_channel_is_closed_with_4001(open_room):
    """The replacing connection's close event went out before the older one subscribed, so no hub
    could close it: the older one finds its slot gone once subscribed, and is refused."""
    room = await open_room(duplicate_client_id="replace")
    runtime = room.runtime
    older = await services.connection_open(
        reference="room-1", transport="WS", client_id="laptop", since=None, runtime=runtime
    )
    newer = await services.connection_open(
        reference="room-1", transport="WS", client_id="laptop", since=None, runtime=runtime
    )
    assert runtime.stats.counters()["connections_replaced"] == 1
    subscription = Subscription(
        channel_id="room-1",
        client_id="laptop",
        echo=False,
        encode=consumers.encode_frame,
        encode_control=consumers.encode_control,
        outbox=Outbox(write=None, max_messages=10, max_bytes=10_000, on_overflow=None, buffered_bytes=lambda: 0),
        on_close=None,
        holder=older.holder,
    )
    with pytest.raises(ApplicationError) as refused:
        await services.subscription_start(connection=older, subscription=subscription, runtime=runtime)
    assert (refused.value.close_code, refused.value.code, refused.value.status) == (4001, "replaced", 409)
    await services.connection_close(connection=older, subscription=subscription, runtime=runtime)
    assert await runtime.presence.holds("room-1", "laptop", newer.holder)
    await services.connection_close(connection=newer, subscription=None, runtime=runtime)
    assert await runtime.presence.count("room-1") == 0


async def test_a_close_asked_for_before_the_handshake_completes_follows_it(open_room, monkeypatch):
    """The hub may close a connection while it is still subscribing (a replaced clientId, a deleted
    channel): the close frame goes out after the accept, never before it."""
    room = await open_room()
    runtime = room.runtime
    subscribe = consumers.subscription_start

    async def subscribe_then_close(*, connection, subscription, runtime):
        await subscribe(connection=connection, subscription=subscription, runtime=runtime)
        runtime.hub.close_replaced("room-1", connection.client_id, connection.holder)
        await asyncio.sleep(0.05)  # as if the replay were still being read from Redis

    monkeypatch.setattr(consumers, "subscription_start", subscribe_then_close)
    communicator = WebsocketCommunicator(room.application, "/api/v1/channels/room-1?clientId=laptop")
    await communicator.send_input({"type": "websocket.connect"})
    assert (await communicator.receive_output(5))["type"] == "websocket.accept"
    body, code = await closed(communicator)
    assert (code, body["code"], body["error"]) == (4001, 4001, "replaced")
    assert await runtime.presence.count("room-1") == 0
    assert runtime.hub.local_count("room-1") == 0


async def test_a_send_daphne_refuses_on_a_closing_websocket_stops_the_writer_like_a_gone_connection():
    """Between a close reply and the end of the TCP connection daphne's send raises autobahn's
    ``Disconnected``; the consumer turns it into the ``OSError`` the outbox stops on, and leaves
    any other error alone."""
    from autobahn.exception import Disconnected

    consumer = consumers.ChannelConsumer(runtime=None, channel="any")

    async def closing(message):
        raise Disconnected("Attempt to send on a closed protocol")

    consumer.base_send = closing
    with pytest.raises(ConnectionResetError):
        await consumer._write("late")

    async def broken(message):
        raise RuntimeError("something else")

    consumer.base_send = broken
    with pytest.raises(RuntimeError, match="something else"):
        await consumer._write("late")
