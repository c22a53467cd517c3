"""Idempotency keys are recorded with their message: both history stores, one contract.

A key replays its message instead of recording a second one, refuses another payload, belongs to
one incarnation of one channel, and expires with its window.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import redis.asyncio as redis

from channels_app.channel import ChannelInfo
from channels_app.errors import ApplicationError
from channels_app.messages import Message
from channels_app.state.history import Draft, MemoryHistory, Replayed
from channels_app.state.idempotency import MemoryReceipts, idempotency_key_parse
from channels_app.state.redis import RedisHistory

ROOM = ChannelInfo(
    id="room-1", name="room", type="WS", max_connections=10, history_size=10, history_ttl=3600, incarnation=7
)


def keyed(payload: str, key: str) -> Draft:
    return Draft(payload, "server-message", idempotency_key_parse(key, payload=payload))


@pytest.fixture(params=["memory", "redis"])
async def history(request, tmp_path_factory):
    if request.param == "memory":
        yield MemoryHistory()
        return
    from tests.support.redisserver import RedisServer

    server = RedisServer.start(tmp_path_factory.mktemp("redis"))
    client = redis.from_url(server.url)
    try:
        yield RedisHistory(client, "t")
    finally:
        await client.aclose()
        server.stop()


async def test_a_key_records_its_message_once_and_replays_it(history):
    (first,) = await history.append_many(ROOM, [keyed("order 42", "k1")])
    assert isinstance(first, Message)
    (again,) = await history.append_many(ROOM, [keyed("order 42", "k1")])
    assert isinstance(again, Replayed)
    assert (again.message.id, again.message.offset, again.message.epoch) == (first.id, first.offset, first.epoch)
    assert again.message.payload == "order 42"
    assert await history.head(ROOM.id) == 1


async def test_a_key_used_twice_in_one_run_records_one_message(history):
    outcomes = await history.append_many(ROOM, [keyed("a", "k"), Draft("plain", "c"), keyed("a", "k")])
    assert isinstance(outcomes[0], Message) and isinstance(outcomes[1], Message)
    assert isinstance(outcomes[2], Replayed) and outcomes[2].message.id == outcomes[0].id
    assert [outcomes[0].offset, outcomes[1].offset] == [1, 2]
    assert await history.head(ROOM.id) == 2


async def test_a_key_reused_for_another_payload_is_refused_and_records_nothing(history):
    await history.append_many(ROOM, [keyed("first", "k")])
    (refused,) = await history.append_many(ROOM, [keyed("second", "k")])
    assert isinstance(refused, ApplicationError)
    assert (refused.status, refused.code) == (422, "idempotency_key_reused")
    assert await history.head(ROOM.id) == 1


async def test_keys_belong_to_their_channel_and_its_incarnation(history):
    (first,) = await history.append_many(ROOM, [keyed("same", "k")])
    (other_channel,) = await history.append_many(replace(ROOM, id="room-2"), [keyed("same", "k")])
    assert isinstance(other_channel, Message)
    recreated = replace(ROOM, incarnation=8)
    (new_incarnation,) = await history.append_many(recreated, [keyed("same", "k")])
    assert isinstance(new_incarnation, Message)
    assert (new_incarnation.offset, new_incarnation.epoch != first.epoch) == (1, True)


async def test_a_recreated_channel_starts_a_new_epoch_and_old_positions_get_a_gap(history):
    old = [await history.append(ROOM, payload=f"old{index}", client_id="w") for index in range(3)]
    recreated = replace(ROOM, incarnation=8)
    new = [await history.append(recreated, payload=f"new{index}", client_id="w") for index in range(7)]
    assert [message.offset for message in new] == list(range(1, 8))
    assert new[0].epoch != old[0].epoch
    replay = await history.since(recreated, _position(old[-1]))
    assert replay.gap is not None and replay.gap.reason == "epoch_changed"
    assert [message.payload for message in replay.messages] == [f"new{index}" for index in range(7)]
    # The old incarnation's history is not served for the new channel, even before its first publish.
    unpublished = replace(ROOM, incarnation=9)
    assert (await history.since(unpublished, _position(new[-1]))).gap.reason == "epoch_changed"


async def test_a_position_from_another_channel_gets_a_gap(history):
    other = replace(ROOM, id="room-2")
    theirs = [await history.append(other, payload=f"o{index}", client_id="w") for index in range(5)]
    ours = [await history.append(ROOM, payload=f"m{index}", client_id="w") for index in range(7)]
    replay = await history.since(ROOM, _position(theirs[1]))
    assert replay.gap is not None and replay.gap.reason == "epoch_changed"
    assert [message.id for message in replay.messages] == [message.id for message in ours]


def _position(message: Message):
    from channels_app.messages import position_parse

    return position_parse(message.position)


def test_memory_receipts_expire_after_the_window():
    now = [0.0]
    receipts = MemoryReceipts(window=10, clock=lambda: now[0])
    message = Message(id="m", channel_id=ROOM.id, client_id="c", payload="p", created_at="t", offset=1, epoch="e")
    key = idempotency_key_parse("k", payload="p")
    receipts.remember(ROOM, "e", key, message)
    assert receipts.lookup(ROOM, "e", key) is message
    now[0] = 11
    assert receipts.lookup(ROOM, "e", key) is None


@pytest.mark.parametrize("raw", ["", "k" * 201])
def test_an_empty_or_overlong_key_is_refused(raw):
    with pytest.raises(ApplicationError) as refused:
        idempotency_key_parse(raw, payload="p")
    assert refused.value.status == 400
