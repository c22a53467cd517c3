"""Connection slots behave the same in MEMORY and in REDIS mode: one contract, run against both.

Each slot carries its connection's holder token: ``refuse`` keeps the first connection of a
clientId, ``replace`` hands its slot to the newest, and only the current holder's release frees it.
"""

from __future__ import annotations

import pytest
import redis.asyncio as redis

from channels_app.channel import ChannelInfo
from channels_app.errors import ApplicationError
from channels_app.state.presence import Member, MemoryPresence, new_holder
from channels_app.state.redis_presence import RedisPresence
from channels_app.state.shards import RedisShards
from tests.support.redisserver import RedisServer

ROOM = ChannelInfo(id="room-1", name="room", type="WS", max_connections=2, history_size=10, history_ttl=3600)


@pytest.fixture(params=["memory", "redis", "redis-sharded"])
async def presence(request, tmp_path_factory):
    """Each kind of slot store: in memory, on one redis-server, on two as shards (ROOM homed on the second)."""
    if request.param == "memory":
        yield MemoryPresence()
        return
    server = request.getfixturevalue("redis_server")
    client = redis.from_url(server.url)
    if request.param == "redis":
        yield RedisPresence(client, "t", lease=30)
        await client.aclose()
        return
    second = RedisServer.start(tmp_path_factory.mktemp("redis"))
    shards = RedisShards([client, redis.from_url(second.url)], prefix="sh")
    assert shards.home(ROOM.id) == 1
    yield RedisPresence(shards, "t", lease=30)
    await shards.aclose()
    second.stop()


async def refused(acquiring) -> str:
    with pytest.raises(ApplicationError) as error:
        await acquiring
    return f"{error.value.close_code} {error.value.code}"


async def test_refuse_keeps_the_first_connection_and_the_limit(presence):
    first = new_holder()
    assert await presence.acquire(ROOM, "alice", first) is None
    assert await refused(presence.acquire(ROOM, "alice", new_holder())) == "4409 client_id_taken"
    await presence.acquire(ROOM, "bob", new_holder())
    assert await refused(presence.acquire(ROOM, "carol", new_holder())) == "4422 channel_full"
    assert await presence.count("room-1") == 2
    assert await presence.holds("room-1", "alice", first)


async def test_only_the_holder_releases_a_slot_and_releasing_twice_is_harmless(presence):
    holder = new_holder()
    await presence.acquire(ROOM, "alice", holder)
    await presence.release("room-1", "alice", new_holder())
    assert await presence.contains("room-1", "alice")
    await presence.release("room-1", "alice", holder)
    await presence.release("room-1", "alice", holder)
    assert not await presence.contains("room-1", "alice")
    assert await presence.count("room-1") == 0
    assert await presence.acquire(ROOM, "alice", new_holder()) is None


async def test_replace_hands_the_slot_to_the_newest_connection(presence):
    old, new = new_holder(), new_holder()
    await presence.acquire(ROOM, "alice", old)
    assert await presence.acquire(ROOM, "alice", new, replace=True) == old
    assert await presence.count("room-1") == 1
    assert not await presence.holds("room-1", "alice", old)
    assert await presence.holds("room-1", "alice", new)
    # The replaced connection's release comes late: the newest connection keeps its slot.
    await presence.release("room-1", "alice", old)
    assert await presence.holds("room-1", "alice", new)
    assert await presence.count("room-1") == 1
    await presence.release("room-1", "alice", new)
    assert await presence.count("room-1") == 0


async def test_replace_admits_a_connected_client_id_into_a_full_channel_but_no_new_one(presence):
    bob = new_holder()
    await presence.acquire(ROOM, "alice", new_holder())
    await presence.acquire(ROOM, "bob", bob)
    assert await presence.acquire(ROOM, "alice", new_holder(), replace=True) is not None
    assert await refused(presence.acquire(ROOM, "carol", new_holder(), replace=True)) == "4422 channel_full"
    assert await presence.count("room-1") == 2
    await presence.release("room-1", "bob", bob)
    # A clientId nobody holds simply takes a free slot: there is no one to replace.
    assert await presence.acquire(ROOM, "carol", new_holder(), replace=True) is None
    assert await presence.count("room-1") == 2


async def test_members_are_kept_paged_and_removed_with_their_slots(presence):
    alice = Member("alice", "WS", "2026-12-04T20:00:00.000Z", {"name": "Alice"})
    holder = new_holder()
    await presence.acquire(ROOM, "alice", holder, member=alice)
    await presence.acquire(ROOM, "bob", new_holder())
    page, more = await presence.members("room-1", limit=1)
    assert (page, more) == ([alice], True)
    page, more = await presence.members("room-1", after="alice", limit=1)
    assert (page, more) == ([Member("bob")], False)
    assert await presence.release("room-1", "alice", new_holder()) is False
    assert await presence.release("room-1", "alice", holder) is True
    assert await presence.members("room-1", limit=10) == ([Member("bob")], False)


async def test_redis_sweeps_the_members_of_expired_slots_and_reports_them(redis_server):
    client = redis.from_url(redis_server.url)
    dead = RedisPresence(client, "sweep", lease=30)
    alive = RedisPresence(client, "sweep", lease=30)
    expired = []
    alive.on_expired = lambda channel_id, members: expired.append((channel_id, members))
    member = Member("ghost", "SSE", "2026-12-04T20:00:00.000Z", {"name": "Ghost"})
    await dead.acquire(ROOM, "ghost", new_holder(), member=member)
    await client.zadd("sweep:live", {dead.instance: 0})  # it died: its heartbeat ran out
    assert await alive.members("room-1", limit=10) == ([], False)
    assert await alive.count("room-1") == 0
    assert not await alive.contains("room-1", "ghost")
    await alive.acquire(ROOM, "fresh", new_holder())
    assert expired == []  # the sweep is the renewal's, once per dead instance, not each acquire's
    await alive.renew()
    assert expired == [("room-1", [member])]
    assert await client.zrange("sweep:s:{room-1}", 0, -1) == [b"fresh"]
    assert await client.zrange("sweep:live", 0, -1) == [alive.instance.encode()]
    await client.aclose()
