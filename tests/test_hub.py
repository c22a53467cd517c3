"""The per-instance hub: group membership, fan-out encoded once, ordering repair and raw group_send."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import pytest
from channels.layers import InMemoryChannelLayer

from channels_app.channel import ChannelInfo
from channels_app.core.hub import Hub
from channels_app.messages import JSON, TEXT, layer_event
from channels_app.naming import channel_group
from channels_app.state.history import Draft, MemoryHistory
from channels_app.transports import sse, websocket
from tests.conftest import memory_runtime
from tests.support.fakes import FakeConnection

ROOM = ChannelInfo(id="room-1", name="room", type="WS", max_connections=100, history_size=100, history_ttl=3600)


class Registry:
    async def resolve(self, reference: str) -> ChannelInfo:
        assert reference == ROOM.id
        return ROOM


def encode_payload(message):
    return ("message", message.payload, message.offset), 1


def make_reader(encode, *, client_id: str = "reader", max_messages: int = 1000) -> FakeConnection:
    """A subscriber of ROOM whose written frames are collected."""
    connection = FakeConnection(
        encode=encode, channel_id=ROOM.id, client_id=client_id, max_messages=max_messages, max_bytes=10_000_000
    )
    return connection.start()


@pytest.fixture
async def hub():
    runtime = memory_runtime(
        layer=InMemoryChannelLayer(capacity=100_000), history=MemoryHistory(epochs=lambda: "e1"), registry=Registry()
    )
    hub = runtime.hub
    yield hub
    await hub.stop()


async def publish(hub: Hub, payload: str, *, client_id: str = "writer", send: bool = True):
    message = await hub.runtime.history.append(ROOM, payload=payload, client_id=client_id)
    if send:
        await hub.layer.group_send(channel_group(ROOM.id), message.to_event())
    return message


async def test_hub_joins_the_group_while_it_has_subscribers(hub):
    group = channel_group(ROOM.id)
    first, second = make_reader(encode_payload), make_reader(encode_payload)
    await hub.subscribe(first.subscription)
    await hub.subscribe(second.subscription)
    assert list(hub.layer.groups[group]) == [hub.channel_name]
    assert hub.local_count(ROOM.id) == 2
    await hub.unsubscribe(first.subscription)
    assert group in hub.layer.groups
    await hub.unsubscribe(second.subscription)
    await hub.unsubscribe(second.subscription)  # twice is harmless
    assert group not in hub.layer.groups
    assert hub.local_count(ROOM.id) == 0


async def test_each_message_is_encoded_once_for_all_subscribers(hub):
    calls = []

    def counting_encoder(message):
        calls.append(message.offset)
        return encode_payload(message)

    readers = [make_reader(counting_encoder, client_id=f"reader-{index}") for index in range(50)]
    for reader in readers:
        await hub.subscribe(reader.subscription)
    await publish(hub, "hello")
    await publish(hub, "again")
    for reader in readers:
        assert await reader.until_written(2) == [("message", "hello", 1), ("message", "again", 2)]
    assert calls == [1, 2]
    assert hub.stats.counters()["deliveries"] == 100


async def test_repeated_events_are_delivered_once(hub):
    reader = make_reader(encode_payload)
    await hub.subscribe(reader.subscription)
    message = await publish(hub, "once")
    await hub.layer.group_send(channel_group(ROOM.id), message.to_event())
    await publish(hub, "next")
    assert await reader.until_written(2) == [("message", "once", 1), ("message", "next", 2)]
    assert hub.stats.counters()["hub_duplicates"] == 1


async def test_a_message_the_layer_dropped_is_recovered_from_history(hub):
    reader = make_reader(encode_payload)
    await hub.subscribe(reader.subscription)
    await publish(hub, "first")
    await publish(hub, "dropped by the layer", send=False)
    await publish(hub, "third")
    frames = await reader.until_written(3)
    assert frames == [("message", "first", 1), ("message", "dropped by the layer", 2), ("message", "third", 3)]
    counters = hub.stats.counters()
    assert counters["layer_gaps"] == 1
    assert counters["layer_recovered"] == 1


async def test_messages_heard_out_of_order_before_the_first_one_are_all_delivered(hub):
    # Two instances publish to the channel at once: offset 2 reaches this hub before offset 1.
    reader = make_reader(encode_payload)
    await hub.subscribe(reader.subscription)
    first = await publish(hub, "first", send=False)
    await publish(hub, "second")
    await hub.layer.group_send(channel_group(ROOM.id), first.to_event())
    await publish(hub, "third")
    assert await reader.until_written(3) == [("message", "first", 1), ("message", "second", 2), ("message", "third", 3)]
    assert hub.stats.counters()["hub_duplicates"] == 1


async def test_messages_published_before_the_subscribe_are_not_delivered_live(hub):
    await publish(hub, "before", send=False)
    reader = make_reader(encode_payload)
    await hub.subscribe(reader.subscription)
    await publish(hub, "after")
    assert await reader.until_written(1) == [("message", "after", 2)]
    assert hub.stats.counters().get("layer_gaps", 0) == 0


async def test_a_dropped_message_no_longer_in_history_is_announced_as_a_gap(hub):
    reader = make_reader(encode_payload)
    await hub.subscribe(reader.subscription)
    await publish(hub, "first")
    await publish(hub, "lost", send=False)
    # Appending with a history of one pushes "lost" out before the hub notices the hole.
    third = await hub.runtime.history.append(replace(ROOM, history_size=1), payload="third", client_id="writer")
    await hub.layer.group_send(channel_group(ROOM.id), third.to_event())
    frames = await reader.until_written(3)
    assert frames[0] == ("message", "first", 1)
    assert frames[1][0] == "control"
    assert frames[1][1]["control"] == "gap"
    assert frames[1][1]["reason"] == "dropped"
    assert frames[2] == ("message", "third", 3)
    assert hub.stats.counters()["messages_lost"] == 1


async def test_raw_group_send_reaches_subscribers_as_a_server_message(hub):
    reader = make_reader(lambda m: ((m.client_id, m.payload, m.offset, m.channel_id), 1))
    await hub.subscribe(reader.subscription)
    await hub.layer.group_send(
        channel_group(ROOM.id), {"type": "realtime.message", "channel_id": ROOM.id, "payload": "from django"}
    )
    assert await reader.until_written(1) == [("server-message", "from django", None, ROOM.id)]


async def test_a_bad_event_is_logged_and_the_hub_keeps_delivering(hub):
    reader = make_reader(encode_payload)
    await hub.subscribe(reader.subscription)
    group = channel_group(ROOM.id)
    await hub.layer.group_send(group, {"type": "realtime.message", "channel_id": ROOM.id, "payload": 42})
    await hub.layer.group_send(group, {"type": "realtime.unknown", "channel_id": ROOM.id})
    await publish(hub, "still delivered")
    assert await reader.until_written(1) == [("message", "still delivered", 1)]
    counters = hub.stats.counters()
    assert counters["hub_errors"] == 1
    assert counters["hub_unknown_events"] == 1


async def test_a_close_event_closes_every_local_subscription_of_the_channel(hub):
    readers = [make_reader(encode_payload, client_id=f"reader-{index}") for index in range(3)]
    for reader in readers:
        await hub.subscribe(reader.subscription)
    done = asyncio.Event()
    readers[-1].subscription.on_close = lambda code, body: (readers[-1].closed.append((code, body)), done.set())
    await hub.layer.group_send(
        channel_group(ROOM.id),
        {"type": "realtime.close", "channel_id": ROOM.id, "code": 4410, "error": "channel_deleted", "message": "gone"},
    )
    await asyncio.wait_for(done.wait(), 5)
    assert [reader.close_codes for reader in readers] == [[4410], [4410], [4410]]


async def test_close_all_closes_every_local_subscription_of_every_channel(hub):
    readers = [make_reader(encode_payload, client_id=f"reader-{index}") for index in range(2)]
    elsewhere = make_reader(encode_payload)
    elsewhere.subscription.channel_id = "room-2"
    for reader in (*readers, elsewhere):
        await hub.subscribe(reader.subscription)
    assert hub.close_all(1001, {"control": "close", "code": 1001}) == 3
    assert [reader.close_codes for reader in (*readers, elsewhere)] == [[1001], [1001], [1001]]


async def test_a_burst_of_queued_events_does_not_overflow_connections_that_keep_up(hub):
    """The layer hands queued events over without yielding; the hub lets writers run every turn."""
    reader = make_reader(encode_payload, max_messages=hub.events_per_turn)
    await hub.subscribe(reader.subscription)
    for index in range(50):
        message = await hub.runtime.history.append(ROOM, payload=f"m{index}", client_id="writer")
        await hub.layer.send(hub.channel_name, message.to_event())
    frames = await reader.until_written(50)
    assert reader.overflows == 0
    assert [frame[1] for frame in frames] == [f"m{index}" for index in range(50)]


def count_queued_at_each_write(hub: Hub, reader: FakeConnection) -> list[int]:
    """How many frames were delivered to ``reader`` but not yet written, at each of its writes."""
    queued_at_each_write: list[int] = []
    write = reader.outbox._write

    async def counting_write(frame):
        queued_at_each_write.append(hub.stats.counters().get("deliveries", 0) - len(reader.written))
        await write(frame)

    reader.outbox._write = counting_write
    return queued_at_each_write


async def test_queued_events_reach_each_writer_a_turn_at_a_time(hub):
    """A writer finds a whole turn of frames to send together (one socket write under daphne)."""
    reader = make_reader(encode_payload)
    queued_at_each_write = count_queued_at_each_write(hub, reader)
    await hub.subscribe(reader.subscription)
    for index in range(3 * hub.events_per_turn):
        message = await hub.runtime.history.append(ROOM, payload=f"m{index}", client_id="writer")
        await hub.layer.send(hub.channel_name, message.to_event())
    await reader.until_written(3 * hub.events_per_turn)
    assert hub.events_per_turn > 1
    assert max(queued_at_each_write) == hub.events_per_turn


def test_a_turn_of_the_largest_messages_fits_a_quarter_of_every_bound():
    from types import SimpleNamespace

    from channels_app.config import EVENTS_PER_TURN, events_per_turn

    def server(messages=1000, pending_bytes=4 * 2**20, message_size=65536):
        return SimpleNamespace(
            max_pending_messages=messages, max_pending_bytes=pending_bytes, max_message_size=message_size
        )

    assert events_per_turn(server()) == EVENTS_PER_TURN
    assert events_per_turn(server(messages=20)) == 5
    assert events_per_turn(server(pending_bytes=2**20)) == 4
    assert events_per_turn(server(messages=1, pending_bytes=1024)) == 1


async def test_a_run_of_messages_is_fanned_out_in_order_and_counts_as_its_messages_in_a_turn(hub):
    """A ``realtime.messages`` event (a run of publishes) fills the turn by the messages it carries."""
    reader = make_reader(encode_payload)
    queued_at_each_write = count_queued_at_each_write(hub, reader)
    await hub.subscribe(reader.subscription)
    runs = 4
    for run in range(runs):
        entries = [Draft(f"r{run}m{index}", "writer") for index in range(hub.events_per_turn)]
        messages = await hub.runtime.history.append_many(ROOM, entries)
        await hub.layer.send(hub.channel_name, layer_event(messages))
    total = runs * hub.events_per_turn
    frames = await reader.until_written(total)
    assert [frame[2] for frame in frames] == list(range(1, total + 1))
    assert frames[-1][1] == f"r{runs - 1}m{hub.events_per_turn - 1}"
    assert max(queued_at_each_write) == hub.events_per_turn


async def test_a_run_that_skips_offsets_is_repaired_from_history(hub):
    reader = make_reader(encode_payload)
    await hub.subscribe(reader.subscription)
    await publish(hub, "first")
    await publish(hub, "dropped by the layer", send=False)
    messages = await hub.runtime.history.append_many(ROOM, [Draft("third", "writer"), Draft("fourth", "writer")])
    await hub.layer.group_send(channel_group(ROOM.id), layer_event(messages))
    frames = await reader.until_written(4)
    assert [frame[1] for frame in frames] == ["first", "dropped by the layer", "third", "fourth"]
    assert hub.stats.counters()["layer_recovered"] == 1


async def test_a_message_that_fails_does_not_cost_the_rest_of_its_run(hub):
    def encode_or_fail(message):
        if message.payload == "bad":
            raise ValueError("cannot encode")
        return encode_payload(message)

    reader = make_reader(encode_or_fail)
    await hub.subscribe(reader.subscription)
    messages = await hub.runtime.history.append_many(
        ROOM, [Draft("before", "w"), Draft("bad", "w"), Draft("after", "w")]
    )
    await hub.layer.send(hub.channel_name, layer_event(messages))
    frames = await reader.until_written(2)
    assert [frame[1] for frame in frames] == ["before", "after"]
    assert hub.stats.counters()["hub_errors"] == 1


async def test_each_message_is_encoded_once_per_transport_and_payload_format(hub):
    """Two payload formats on two transports: four encodings of a message, whatever the subscribers' number, and
    a JSON value crosses the layer (one message, and a run) as a JSON value."""
    encoders = {
        ("WS", JSON): websocket.encode_frame_json,
        ("WS", TEXT): websocket.encode_frame,
        ("SSE", JSON): sse.encode_event_json,
        ("SSE", TEXT): sse.encode_event,
    }
    assert encoders == {
        **{("WS", kind): encoder for kind, encoder in websocket.ENCODERS.items()},
        **{("SSE", kind): encoder for kind, encoder in sse.ENCODERS.items()},
    }
    calls = []

    def counting(name, encoder):
        def encode(message):
            calls.append(name)
            return encoder(message)

        return encode

    counted = {name: counting(name, encoder) for name, encoder in encoders.items()}
    readers = {
        name: [make_reader(counted[name], client_id=f"{name[0]}-{name[1]}-{index}") for index in range(5)]
        for name in encoders
    }
    for group in readers.values():
        for reader in group:
            await hub.subscribe(reader.subscription)
    single = await hub.runtime.history.append(ROOM, payload='{"order":42}', client_id="w", payload_kind=JSON)
    await hub.layer.group_send(channel_group(ROOM.id), single.to_event())
    run = await hub.runtime.history.append_many(
        ROOM, [Draft("[1,2]", "w", payload_kind=JSON), Draft('{"order":42}', "w")]
    )
    await hub.layer.group_send(channel_group(ROOM.id), layer_event(run))
    expected = {
        JSON: [{"order": 42}, [1, 2], '{"order":42}'],
        TEXT: ['{"order":42}', "[1,2]", '{"order":42}'],
    }
    for (transport, kind), group in readers.items():
        for reader in group:
            frames = await reader.until_written(3)
            if transport == "SSE":
                frames = [frame.decode().split("data: ", 1)[1].split("\n", 1)[0] for frame in frames]
            assert [json.loads(frame)["payload"] for frame in frames] == expected[kind]
    assert sorted(calls) == sorted(list(encoders) * 3)


async def test_a_layer_event_without_a_payload_kind_is_text(hub):
    """Events of instances that did not know payload kinds yet carry none: their payloads are text."""
    reader = make_reader(websocket.encode_frame_json)
    await hub.subscribe(reader.subscription)
    message = await hub.runtime.history.append(ROOM, payload="[1]", client_id="w", payload_kind=JSON)
    event = message.to_event()
    assert event["message"].pop("payloadKind") == JSON
    await hub.layer.group_send(channel_group(ROOM.id), event)
    (frame,) = await reader.until_written(1)
    assert json.loads(frame)["payload"] == "[1]"


async def test_the_hub_tells_its_owner_of_every_subscription_that_starts_and_ends():
    events: list[str] = []
    runtime = memory_runtime(layer=InMemoryChannelLayer(capacity=100_000), registry=Registry())
    hub = Hub(runtime, on_subscribe=lambda: events.append("+"), on_unsubscribe=lambda: events.append("-"))
    first, second = make_reader(encode_payload), make_reader(encode_payload)
    try:
        await hub.subscribe(first.subscription)
        await hub.subscribe(second.subscription)
        await hub.unsubscribe(first.subscription)
        await hub.unsubscribe(first.subscription)  # already gone: not counted twice
    finally:
        await hub.stop()
    assert events == ["+", "+", "-"]


def test_the_process_runtime_counts_subscriptions_for_the_collector():
    from channels_app import composition
    from channels_app.ops import gctuning

    hub = composition.process_runtime().hub
    assert hub._on_subscribe is gctuning.connection_opened
    assert hub._on_unsubscribe is gctuning.connection_closed


class AnyRegistry:
    async def resolve(self, reference: str) -> ChannelInfo:
        return replace(ROOM, id=reference)


async def test_the_busiest_local_channels_are_counted_per_transport_and_the_rest_summed():
    runtime = memory_runtime(layer=InMemoryChannelLayer(capacity=1000), registry=AnyRegistry())
    hub = runtime.hub
    subscribers = {}
    for channel_id, transports in {"a": "WS WS SSE", "b": "WS", "c": "SSE SSE", "d": "WS SSE", "e": "SSE"}.items():
        for index, transport in enumerate(transports.split()):
            connection = FakeConnection(channel_id=channel_id, client_id=f"{channel_id}{index}").start()
            connection.subscription.transport = transport
            subscribers[(channel_id, index)] = connection.subscription
            await hub.subscribe(connection.subscription)
    await hub.subscribe(subscribers[("a", 0)])  # subscribing twice counts once
    busiest, others = hub.busiest_local(2)
    assert busiest == [("a", {"WS": 2, "SSE": 1}), ("c", {"SSE": 2})]
    assert others == {"WS": 2, "SSE": 2}
    everything, none = hub.busiest_local()
    assert [channel_id for channel_id, _ in everything] == ["a", "c", "d", "b", "e"] and none == {}
    for key in (("a", 0), ("a", 1), ("c", 0)):
        await hub.unsubscribe(subscribers[key])
    await hub.unsubscribe(subscribers[("a", 0)])  # unsubscribing twice counts once
    busiest, others = hub.busiest_local(1)
    assert busiest == [("d", {"WS": 1, "SSE": 1})]
    assert others == {"WS": 1, "SSE": 3}
    await hub.stop()
