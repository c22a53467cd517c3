"""One contract for both history stores (``state/base.py`` ``History``): the MEMORY driver's
``MemoryHistory`` and the REDIS driver's ``RedisHistory`` on a real redis-server, and on two as shards.

Stamping (consecutive offsets in one epoch), resume from a position (and the gaps when history no
longer covers it), bounds by size and age, idempotency keys recorded with their message, and the
incarnations of a channel (each with its own epoch).
"""

from __future__ import annotations

import tracemalloc
from dataclasses import replace

import pytest
import redis.asyncio as redis

from channels_app.channel import ChannelInfo
from channels_app.errors import ApplicationError
from channels_app.messages import JSON, TEXT, Message, Position, position_parse
from channels_app.state.history import Draft, MemoryHistory, Replayed
from channels_app.state.idempotency import idempotency_key_parse
from channels_app.state.redis import RedisHistory
from channels_app.state.shards import RedisShards

ROOM = ChannelInfo(
    id="room-1", name="room", type="WS", max_connections=10, history_size=100, history_ttl=3600, incarnation=7
)


# The layer prefix whose placement homes ROOM on the second of two shards.
SHARDED_PREFIX = "sh"


class Clock:
    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "redis", "redis-sharded"])
async def stores(request, tmp_path_factory):
    """``stores(clock=None)``: a new history of the parametrized kind (on private redis-servers for Redis:
    one, or two shards with the channels of these tests homed on the second)."""
    clients = []
    servers = []
    if request.param != "memory":
        from tests.support.redisserver import RedisServer

        count = 2 if request.param == "redis-sharded" else 1
        servers = [RedisServer.start(tmp_path_factory.mktemp("redis")) for _ in range(count)]

    def make(clock=None):
        if not servers:
            return MemoryHistory(clock=clock) if clock else MemoryHistory()
        shard_clients = [redis.from_url(server.url) for server in servers]
        clients.extend(shard_clients)
        store = shard_clients[0] if len(servers) == 1 else sharded(shard_clients)
        return RedisHistory(store, "t", clock=clock) if clock else RedisHistory(store, "t")

    yield make
    for client in clients:
        await client.aclose()
    for server in servers:
        server.stop()


def sharded(clients) -> RedisShards:
    """``clients`` as shards placed so that ROOM (and room-2) are homed on the second, not the first."""
    shards = RedisShards(clients, prefix=SHARDED_PREFIX)
    assert shards.home(ROOM.id) == shards.home("room-2") == 1
    return shards


@pytest.fixture
def history(stores):
    return stores()


async def fill(history, info: ChannelInfo, count: int, prefix: str = "m") -> list[Message]:
    return [await history.append(info, payload=f"{prefix}{index}", client_id="writer") for index in range(count)]


def at(message: Message, offset: int) -> Position:
    """A position in ``message``'s epoch."""
    return Position(epoch=message.epoch, offset=offset)


async def test_append_stamps_consecutive_offsets_in_one_epoch(history):
    messages = await fill(history, ROOM, 3)
    epoch = messages[0].epoch
    assert [m.offset for m in messages] == [1, 2, 3]
    assert {m.epoch for m in messages} == {epoch}
    assert [m.position for m in messages] == [f"{epoch}-1", f"{epoch}-2", f"{epoch}-3"]
    assert len({m.id for m in messages}) == 3
    assert await history.head(ROOM.id) == 3


async def test_a_run_is_stamped_with_consecutive_offsets_and_kept_in_order(history):
    first = await history.append(ROOM, payload="one", client_id="a")
    run = await history.append_many(ROOM, [Draft("two", "b"), Draft("trois ✓", "c"), Draft("four", "d")])
    assert [m.offset for m in (first, *run)] == [1, 2, 3, 4]
    replay = await history.since(ROOM, at(first, 1))
    assert [(m.offset, m.payload, m.client_id, m.id) for m in replay.messages] == [
        (m.offset, m.payload, m.client_id, m.id) for m in run
    ]


async def test_since_a_position_returns_exactly_the_later_messages_in_order(history):
    messages = await fill(history, ROOM, 5)
    replay = await history.since(ROOM, at(messages[0], 2))
    assert replay.gap is None
    assert [m.payload for m in replay.messages] == ["m2", "m3", "m4"]
    assert (await history.since(ROOM, at(messages[0], 5))).messages == []


async def test_since_a_message_id_in_any_spelling(history):
    messages = await fill(history, ROOM, 3)
    for spelling in (messages[0].id, messages[0].id.upper(), messages[0].id.replace("-", "")):
        replay = await history.since(ROOM, position_parse(spelling))
        assert replay.gap is None
        assert [m.payload for m in replay.messages] == ["m1", "m2"]


async def test_history_size_bounds_what_is_kept_and_reports_the_gap(history):
    small = replace(ROOM, history_size=3)
    messages = await fill(history, small, 6)
    epoch = messages[0].epoch
    replay = await history.since(small, at(messages[0], 1))
    assert [m.offset for m in replay.messages] == [4, 5, 6]
    assert replay.gap.reason == "expired"
    assert (replay.gap.requested, replay.gap.earliest) == (f"{epoch}-1", f"{epoch}-4")
    # Exactly at the edge nothing is missing.
    assert (await history.since(small, at(messages[0], 3))).gap is None
    assert [(m.offset, m.payload) for m in await history.between(small, 1, 6)] == [(4, "m3"), (5, "m4"), (6, "m5")]


async def test_history_ttl_expires_old_messages(stores):
    clock = Clock()
    history = stores(clock)
    short = replace(ROOM, history_ttl=60)
    first = await fill(history, short, 2)
    clock.now += 61
    await fill(history, short, 1)
    replay = await history.since(short, at(first[0], 0))
    assert [m.payload for m in replay.messages] == ["m0"]
    assert replay.gap.reason == "expired"
    clock.now += 61
    replay = await history.since(short, at(first[0], 2))
    assert replay.messages == []
    assert replay.gap.reason == "expired"
    assert replay.gap.earliest is None


async def test_history_size_zero_keeps_nothing_but_still_numbers_messages(history):
    none_kept = replace(ROOM, history_size=0)
    messages = await fill(history, none_kept, 2)
    assert [m.offset for m in messages] == [1, 2]
    replay = await history.since(none_kept, at(messages[0], 1))
    assert replay.messages == []
    assert replay.gap.reason == "expired"
    assert await history.between(none_kept, 1, 2) == []


async def test_a_position_from_another_epoch_is_a_gap_not_an_offset(history):
    await fill(history, ROOM, 5)
    replay = await history.since(ROOM, Position(epoch="old", offset=3))
    assert replay.gap.reason == "epoch_changed"
    # Everything the new history holds is newer than the old position: nothing is skipped by offset.
    assert [m.offset for m in replay.messages] == [1, 2, 3, 4, 5]


async def test_a_position_beyond_the_head_is_from_another_incarnation(history):
    await fill(history, ROOM, 2)
    replay = await history.since(ROOM, Position(offset=9))
    assert replay.gap.reason == "epoch_changed"
    assert [m.offset for m in replay.messages] == [1, 2]


async def test_an_unknown_message_id_is_a_gap(history):
    await fill(history, ROOM, 2)
    replay = await history.since(ROOM, position_parse("00000000-0000-4000-8000-000000000000"))
    assert replay.gap.reason == "unknown_position"
    assert [m.offset for m in replay.messages] == [1, 2]


async def test_find_returns_the_messages_with_those_ids(history):
    messages = await fill(history, ROOM, 4)
    found = await history.find(ROOM, [messages[2].id, messages[0].id, "not-an-id"])
    assert [m.id for m in found] == [messages[0].id, messages[2].id]


async def test_a_forgotten_channel_starts_over_in_a_new_epoch(history):
    before = await fill(history, ROOM, 3)
    await history.forget(ROOM.id)
    after = await fill(history, ROOM, 1)
    assert (after[0].offset, after[0].epoch != before[0].epoch) == (1, True)


def keyed(payload: str, key: str, kind: str = TEXT) -> Draft:
    return Draft(
        payload, "server-message", idempotency_key_parse(key, payload=payload, payload_kind=kind), payload_kind=kind
    )


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


async def test_a_payloads_kind_is_kept_by_every_read_and_by_a_replayed_key(history):
    run = await history.append_many(
        ROOM, [Draft('{"a":1}', "w", payload_kind=JSON), Draft('{"a":1}', "w"), keyed("[2]", "k", JSON)]
    )
    kinds = [JSON, TEXT, JSON]
    assert [message.payload_kind for message in run] == kinds
    replay = await history.since(ROOM, Position(offset=0))
    assert [(m.payload, m.payload_kind) for m in replay.messages] == [
        ('{"a":1}', JSON),
        ('{"a":1}', TEXT),
        ("[2]", JSON),
    ]
    assert [m.payload_kind for m in await history.between(ROOM, 1, 3)] == kinds
    assert [m.payload_kind for m in await history.find(ROOM, [m.id for m in run])] == kinds
    (again,) = await history.append_many(ROOM, [keyed("[2]", "k", JSON)])
    assert isinstance(again, Replayed)
    assert (again.message.id, again.message.payload_kind) == (run[2].id, JSON)


async def test_a_key_used_for_text_is_not_the_key_of_the_same_text_as_json(history):
    await history.append_many(ROOM, [keyed("{}", "k")])
    (refused,) = await history.append_many(ROOM, [keyed("{}", "k", JSON)])
    assert isinstance(refused, ApplicationError)
    assert refused.code == "idempotency_key_reused"
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
    old = await fill(history, ROOM, 3, "old")
    recreated = replace(ROOM, incarnation=8)
    new = await fill(history, recreated, 7, "new")
    assert [message.offset for message in new] == list(range(1, 8))
    assert new[0].epoch != old[0].epoch
    replay = await history.since(recreated, position_parse(old[-1].position))
    assert replay.gap is not None and replay.gap.reason == "epoch_changed"
    assert [message.payload for message in replay.messages] == [f"new{index}" for index in range(7)]
    # The old incarnation's history is not served for the new channel, even before its first publish.
    unpublished = replace(ROOM, incarnation=9)
    assert (await history.since(unpublished, position_parse(new[-1].position))).gap.reason == "epoch_changed"


async def test_a_position_from_another_channel_gets_a_gap(history):
    other = replace(ROOM, id="room-2")
    theirs = await fill(history, other, 5, "o")
    ours = await fill(history, ROOM, 7)
    replay = await history.since(ROOM, position_parse(theirs[1].position))
    assert replay.gap is not None and replay.gap.reason == "epoch_changed"
    assert [message.id for message in replay.messages] == [message.id for message in ours]


async def test_current_is_the_newest_position_and_resuming_there_replays_nothing(history):
    assert await history.current(ROOM) == Position(offset=0)
    messages = await fill(history, ROOM, 3)
    current = await history.current(ROOM)
    assert current == Position(epoch=messages[0].epoch, offset=3)
    assert (await history.since(ROOM, current)).messages == []
    later = await history.append(ROOM, payload="after", client_id="writer")
    assert [m.id for m in (await history.since(ROOM, current)).messages] == [later.id]


async def test_current_of_a_recreated_channel_starts_over(history):
    await fill(history, ROOM, 2)
    assert await history.current(replace(ROOM, incarnation=ROOM.incarnation + 1)) == Position(offset=0)


async def test_memory_history_gives_back_expired_messages_of_channels_nobody_touches_again():
    """MemoryHistory only: a channel published to once and never read again does not keep its
    expired messages for ever; later appends elsewhere sweep them, a few logs per append."""
    clock = Clock()
    history = MemoryHistory(clock=clock)
    quiet = [replace(ROOM, id=f"quiet-{index}", history_ttl=60) for index in range(100)]
    for channel in quiet:
        await fill(history, channel, 3)
    assert history.kept() == 300
    clock.now += 61
    busy = replace(ROOM, id="busy-1", history_size=10)
    for _ in range(60):
        await fill(history, busy, 1)
    assert history.kept() == 10  # busy-1's own ten: every quiet channel's three went with their age
    # Their positions still stand: the next message continues each channel's offsets.
    resumed = await history.append(quiet[0], payload="later", client_id="c")
    assert resumed.offset == 4


async def test_memory_history_keeps_only_a_position_for_a_channel_whose_messages_expired():
    """MemoryHistory only: what stays per channel once its messages are gone is its epoch and
    offsets (the deque goes too), so 100,000 quiet channels cost megabytes, not tens of them."""
    clock = Clock()
    history = MemoryHistory(clock=clock)
    quiet = [replace(ROOM, id=f"quiet-{index}", history_ttl=60) for index in range(2000)]
    busy = replace(ROOM, id="busy-1", history_size=1)
    await fill(history, busy, 1)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for channel in quiet:
            await fill(history, channel, 1)
        clock.now += 61
        for _ in range(1000):
            await fill(history, busy, 1)
        assert history.kept() == 1
        per_channel = (tracemalloc.get_traced_memory()[0] - before) / len(quiet)
    finally:
        tracemalloc.stop()
    assert per_channel < 400, f"{per_channel:.0f} B per quiet channel"
