"""Redis state: a run of messages is recorded in one step; an instance's slots live while its
heartbeat does, whatever their number, and a renewal brings back slots a Redis restart lost, but
never a released or replaced one (the rest of the slot contract, shared with MEMORY mode, is in
test_presence.py)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from types import SimpleNamespace

import pytest
import redis.asyncio as redis
from redis.asyncio.client import Pipeline

from channels_app.channel import ChannelInfo
from channels_app.errors import ApplicationError
from channels_app.messages import Position
from channels_app.state.history import Draft, Replayed
from channels_app.state.idempotency import idempotency_key_parse
from channels_app.state.presence import Member, new_holder
from channels_app.state.redis import RedisHistory, redis_client
from channels_app.state.redis_presence import RedisPresence
from channels_app.state.shards import RedisShards
from tests.support.redisserver import RedisServer
from tests.support.waiting import wait_until

pytestmark = pytest.mark.asyncio

ROOM = ChannelInfo(id="room-1", name="room", type="WS", max_connections=5, history_size=10, history_ttl=3600)


@pytest.fixture
async def presence(redis_server):
    client = redis.from_url(redis_server.url)
    yield RedisPresence(client, "t", lease=30)
    await client.aclose()


@pytest.fixture
async def history(redis_server):
    client = redis.from_url(redis_server.url)
    yield RedisHistory(client, "t")
    await client.flushdb()
    await client.aclose()


def _while_renewing(monkeypatch, action):
    """Run ``action`` once, after the renewal took its list of slots, before its writes reach Redis
    (the first pipeline it sends puts the slots back; later ones release slots again)."""
    execute = Pipeline.execute
    pending = [action]

    async def execute_after_action(pipeline, *args, **kwargs):
        if pending:
            await pending.pop()()
        return await execute(pipeline, *args, **kwargs)

    monkeypatch.setattr(Pipeline, "execute", execute_after_action)


async def test_a_slot_released_while_slots_are_put_back_stays_released(presence, redis_server, monkeypatch):
    await presence.acquire(ROOM, "leaving", "h-leaving")
    await presence.acquire(ROOM, "staying", "h-staying")
    redis_server.client().flushall()  # the renewal finds its heartbeat gone and puts its slots back
    _while_renewing(monkeypatch, lambda: presence.release("room-1", "leaving", "h-leaving"))
    await presence.renew()
    monkeypatch.undo()
    assert await presence.count("room-1") == 1
    assert not await presence.contains("room-1", "leaving")
    await presence.acquire(ROOM, "leaving", "h-again")  # the client may come straight back


async def test_a_slot_taken_again_while_slots_are_put_back_is_kept(presence, redis_server, monkeypatch):
    await presence.acquire(ROOM, "back", "h-first")
    redis_server.client().flushall()

    async def leave_and_return():
        await presence.release("room-1", "back", "h-first")
        await presence.acquire(ROOM, "back", "h-second")

    _while_renewing(monkeypatch, leave_and_return)
    await presence.renew()
    monkeypatch.undo()
    assert await presence.holds("room-1", "back", "h-second")
    assert await presence.count("room-1") == 1


async def test_a_renewal_puts_back_slots_lost_in_a_redis_restart(presence, redis_server):
    await presence.acquire(ROOM, "survivor", "h-survivor")
    redis_server.client().flushall()  # what a restart without persistence leaves
    await presence.renew()
    assert await presence.holds("room-1", "survivor", "h-survivor")
    assert await presence.count("room-1") == 1


async def test_a_renewal_never_brings_back_a_replaced_slot(presence, redis_server):
    """The old connection's instance renews after a newer connection (another instance) replaced
    it, and again once that newer one has left: the slot is neither taken back nor resurrected."""
    other_client = redis.from_url(redis_server.url)
    other = RedisPresence(other_client, "t", lease=30)
    await presence.acquire(ROOM, "laptop", "h-asleep")
    assert await other.acquire(ROOM, "laptop", "h-awake", replace=True) == "h-asleep"
    await presence.renew()
    assert await presence.holds("room-1", "laptop", "h-awake")
    await other.release("room-1", "laptop", "h-awake")
    await presence.renew()
    assert not await presence.contains("room-1", "laptop")
    assert await presence.count("room-1") == 0
    await other_client.aclose()


def _room(index: int) -> ChannelInfo:
    return ChannelInfo(id=f"room-{index}", name="room", type="WS", max_connections=5, history_size=10, history_ttl=3600)


async def _commands_run(client: redis.Redis) -> int:
    """Commands Redis ran so far, Lua's inner ones included (``INFO commandstats``)."""
    return sum(stat["calls"] for stat in (await client.info("commandstats")).values())


_KILLED_INSTANCE = """
import asyncio, sys
import redis.asyncio as redis
from channels_app.channel import ChannelInfo
from channels_app.state.presence import Member
from channels_app.state.redis_presence import RedisPresence
from channels_app.state.shards import RedisShards

async def main():
    presence = RedisPresence(redis.from_url(sys.argv[1]), "k", lease=float(sys.argv[2]))
    for index in range(3):
        room = ChannelInfo(id=f"room-{index}", name="room", type="WS", max_connections=5, history_size=10,
                           history_ttl=3600)
        await presence.acquire(room, "ghost", f"h-{index}", member=Member("ghost", "WS"))
    print(presence.instance, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_a_killed_instance_s_slots_count_while_it_renews_and_are_swept_a_lease_after_it_dies(redis_server):
    """An instance in another process holds a slot on three channels and is SIGKILLed: no release.
    Its slots count for several leases while it lives, stop counting within a lease of its death,
    and the renewal of an instance still alive removes them and reports their members."""
    lease = 1.5
    client = redis.from_url(redis_server.url)
    alive = RedisPresence(client, "k", lease=lease)
    expired = []
    alive.on_expired = lambda channel_id, members: expired.append((channel_id, [m.client_id for m in members]))
    await alive.acquire(_room(0), "fresh", new_holder())
    killed = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _KILLED_INSTANCE, redis_server.url, str(lease), stdout=asyncio.subprocess.PIPE
    )
    try:
        instance = (await killed.stdout.readline()).decode().strip()
        for _ in range(8):  # four leases of no traffic
            await asyncio.sleep(lease / 2)
            assert await alive.counts([_room(index).id for index in range(3)]) == {
                "room-0": 2,
                "room-1": 1,
                "room-2": 1,
            }
    finally:
        killed.kill()
        await killed.wait()

    async def only_fresh_counts() -> bool:
        return await alive.count("room-0") == 1

    assert await wait_until(only_fresh_counts, within=lease + 0.2, interval=0.02)
    assert await alive.members("room-1", limit=10) == ([], False)
    await wait_until(lambda: len(expired) == 3, within=lease)  # the next renewal of ``alive``
    assert sorted(expired) == [(f"room-{index}", ["ghost"]) for index in range(3)]
    assert sorted(await client.keys("k:s*")) == [b"k:s:{room-0}", b"k:sh:{room-0}"]
    assert await client.zrange("k:live", 0, -1) == [alive.instance.encode()]
    assert not await client.exists(f"k:held:{instance}")
    await alive.release("room-0", "fresh", (await client.hget("k:sh:{room-0}", "fresh")).decode())
    await client.aclose()


_SKEWED_INSTANCE = """
import time
wall = time.time
time.time = lambda: wall() + 3600  # this process's clock runs an hour ahead
import asyncio, sys
import redis.asyncio as redis
from channels_app.channel import ChannelInfo
from channels_app.state.redis_presence import RedisPresence

async def main():
    presence = RedisPresence(redis.from_url(sys.argv[1]), "skew", lease=30)
    room = ChannelInfo(id="room-1", name="room", type="WS", max_connections=5, history_size=10, history_ttl=3600)
    await presence.acquire(room, "ahead", "h-ahead")
    await presence.renew()
    print(presence.instance, await presence.count("room-1"), flush=True)

asyncio.run(main())
"""


async def test_an_instance_whose_clock_runs_ahead_neither_sweeps_nor_ignores_live_slots(redis_server):
    """Liveness is judged by Redis's clock: an instance an hour ahead sees the others' heartbeats
    alive, and its own heartbeat does not outlive it by that hour."""
    client = redis.from_url(redis_server.url)
    presence = RedisPresence(client, "skew", lease=30)
    expired = []
    presence.on_expired = lambda channel_id, members: expired.append(channel_id)
    await presence.acquire(ROOM, "local", "h-local")
    ahead = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _SKEWED_INSTANCE, redis_server.url, stdout=asyncio.subprocess.PIPE
    )
    output, _ = await ahead.communicate()
    instance, seen = output.decode().split()
    assert int(seen) == 2  # it counts the local slot
    assert await presence.contains("room-1", "local")  # and did not sweep it
    assert await presence.count("room-1") == 2
    assert await client.zscore("skew:live", instance) < time.time() + 31
    await presence.renew()
    assert expired == []
    await client.aclose()


async def test_renewing_costs_the_same_commands_for_one_channel_held_as_for_500(redis_server):
    """Liveness is one heartbeat per instance: each renewal costs Redis the same few commands
    whatever the number of channels held, and the slots stay."""
    client = redis.from_url(redis_server.url)

    async def commands_per_renewal(channels: int) -> float:
        presence = RedisPresence(client, f"c{channels}", lease=30)
        observer = RedisPresence(client, f"c{channels}", lease=30)
        for index in range(channels):
            await presence.acquire(_room(index), "alice", new_holder())
        await presence.renew()  # Redis learns the script
        before = await _commands_run(client)
        for _ in range(30):
            await presence.renew()
        used = (await _commands_run(client) - before - 1) / 30  # less the INFO that read ``before``
        counts = await observer.counts([_room(index).id for index in range(channels)])
        assert counts == {_room(index).id: 1 for index in range(channels)}
        return used

    one, many = await commands_per_renewal(1), await commands_per_renewal(500)
    # EVALSHA with TIME, ZSCORE, ZADD and ZRANGEBYSCORE inside; it was 8 per channel (4,000 for 500).
    assert one == many == 5
    await client.aclose()


async def test_a_renewal_does_not_walk_the_slots_held_until_a_shard_forgot_them(redis_server, monkeypatch):
    """A renewal runs on the event loop every third of the lease: walking every slot held (100,000
    on a busy instance) held the loop for over 100 ms each time. It knows its shards without them;
    only putting slots back, after Redis forgot the heartbeat, reads them."""
    first, second = redis.from_url(redis_server.url), redis.from_url(redis_server.url.replace("/0", "/1"))
    shards = RedisShards([first, second])
    presence, observer = RedisPresence(shards, "w", lease=30), RedisPresence(shards, "w", lease=30)
    rooms = [_room(index) for index in range(300)]
    holders = {room.id: new_holder() for room in rooms}
    for room in rooms:
        await presence.acquire(room, "alice", holders[room.id])
    assert {shards.home(room.id) for room in rooms} == {0, 1}
    homes = []
    home = RedisShards.home
    monkeypatch.setattr(
        RedisShards, "home", lambda self, channel_id: homes.append(channel_id) or home(self, channel_id)
    )
    await presence.renew()
    assert homes == []
    await first.flushdb()  # Redis forgot: the renewal notices and puts the first shard's slots back
    await presence.renew()
    assert len(homes) >= 300
    assert await observer.counts([room.id for room in rooms]) == {room.id: 1 for room in rooms}
    for room in rooms:
        assert await presence.release(room.id, "alice", holders[room.id])
    assert await observer.counts([room.id for room in rooms]) == {}
    homes.clear()
    await presence.renew()
    assert homes == []
    await first.aclose()
    await second.aclose()


def _homed_on(shards: RedisShards, shard: int) -> ChannelInfo:
    """A room whose keys live on ``shard``."""
    index = next(index for index in range(1000) if shards.home(f"room-{index}") == shard)
    return _room(index)


async def test_every_shard_s_heartbeat_is_renewed_before_any_sweep(redis_server, tmp_path, monkeypatch):
    """A long sweep of a dead instance on the first shard must not hold up the heartbeat on the
    second, which could run out meanwhile."""
    second = RedisServer.start(tmp_path)
    first_client, second_client = redis.from_url(redis_server.url), redis.from_url(second.url)
    shards = RedisShards([first_client, second_client])
    try:
        alive, dead = RedisPresence(shards, "hb", lease=30), RedisPresence(shards, "hb", lease=30)
        on_first, on_second = _homed_on(shards, 0), _homed_on(shards, 1)
        await dead.acquire(on_first, "ghost", new_holder())
        await alive.acquire(on_first, "alice", new_holder())
        await alive.acquire(on_second, "bob", new_holder())
        await first_client.zadd("hb:live", {dead.instance: 0})  # its heartbeat ran out
        marked = await second_client.zscore("hb:live", alive.instance) - 1
        await second_client.zadd("hb:live", {alive.instance: marked})
        seen_during_sweep = []
        execute = Pipeline.execute

        async def execute_noting_the_second_heartbeat(pipeline, *args, **kwargs):
            if pipeline.connection_pool is first_client.connection_pool:
                seen_during_sweep.append(await second_client.zscore("hb:live", alive.instance))
            return await execute(pipeline, *args, **kwargs)

        monkeypatch.setattr(Pipeline, "execute", execute_noting_the_second_heartbeat)
        await alive.renew()
        monkeypatch.undo()
        assert seen_during_sweep and all(score > marked for score in seen_during_sweep)
        assert await alive.count(on_first.id) == 1
    finally:
        await shards.aclose()
        second.stop()


async def test_renewals_keep_their_period_however_long_each_takes(redis_server, monkeypatch):
    """Renewals start every third of the lease, counted from the previous start, not from the
    previous end; one that overran it is followed by the next at once."""
    client = redis.from_url(redis_server.url)
    presence = RedisPresence(client, "p", lease=1.5)
    durations, starts = [0.25, 0.8, 0.25, 0.25], []

    async def slow_renew():
        starts.append(asyncio.get_running_loop().time())
        await asyncio.sleep(durations[len(starts) - 1] if len(starts) <= len(durations) else 0)

    monkeypatch.setattr(presence, "renew", slow_renew)
    await presence.acquire(ROOM, "alice", "h-alice")
    await wait_until(lambda: len(starts) >= 4, within=5)
    gaps = [later - earlier for earlier, later in zip(starts, starts[1:4], strict=False)]
    # From the previous deadline: 0.5, then 0.8 (the overrun, then at once), then 0.5.
    assert gaps == pytest.approx([0.5, 0.8, 0.5], abs=0.12)
    await presence.release("room-1", "alice", "h-alice")
    await client.aclose()


async def test_an_instance_away_longer_than_its_lease_puts_its_slots_back_when_it_returns(redis_server):
    """Its slots stop counting and are swept (their members reported) as for a dead instance; its
    next renewal finds its heartbeat gone and puts back those no other connection took."""
    client = redis.from_url(redis_server.url)
    away = RedisPresence(client, "a", lease=30)
    other = RedisPresence(client, "a", lease=30)
    await away.acquire(ROOM, "stays", "h-stays", member=Member("stays", "WS"))
    await away.acquire(ROOM, "moves", "h-moves")
    await other.acquire(ROOM, "other", "h-other")
    await client.zadd("a:live", {away.instance: 0})  # away longer than its lease
    await other.renew()
    await other.acquire(ROOM, "moves", "h-moved")  # that client reconnected to the other instance
    assert await other.count("room-1") == 2
    await away.renew()
    assert await other.count("room-1") == 3
    assert await other.members("room-1", limit=10) == (
        [Member("moves"), Member("other"), Member("stays", "WS")],
        False,
    )
    assert await other.holds("room-1", "moves", "h-moved")
    assert ("room-1", "moves") not in away._held  # taken over: not put back again
    await client.aclose()


async def test_slots_and_members_are_put_back_after_redis_restarts_empty(tmp_path):
    """A private redis-server is killed and restarted without persistence: the instance notices
    its heartbeat is gone (here first at an acquire) and its next renewal puts every slot back,
    with its member; after that a renewal is cheap again."""
    from types import SimpleNamespace

    from channels_app.state.redis import redis_client
    from tests.support.redisserver import RedisServer

    server = RedisServer.start(tmp_path)
    client = redis_client(SimpleNamespace(sentinels=(), url=server.url))
    try:
        presence = RedisPresence(client, "r", lease=30)
        alice = Member("alice", "WS", "2026-12-04T20:00:00.000Z", {"name": "Alice"})
        for index in range(3):
            await presence.acquire(_room(index), "alice", f"h-alice-{index}", member=alice)
            await presence.acquire(_room(index), "bob", f"h-bob-{index}")
        server.stop(signal.SIGKILL)
        server.run()
        await asyncio.sleep(0.2)
        assert await presence.count("room-0") == 0
        await presence.acquire(_room(3), "carol", "h-carol")  # rewrites the heartbeat: the loss is still seen
        await presence.renew()
        for index in range(3):
            assert await presence.members(f"room-{index}", limit=10) == ([alice, Member("bob")], False)
            assert await presence.holds(f"room-{index}", "bob", f"h-bob-{index}")
        assert await presence.counts() == {"room-0": 2, "room-1": 2, "room-2": 2, "room-3": 1}
        before = await _commands_run(client)
        await presence.renew()
        assert await _commands_run(client) - before - 1 == 5
        await client.aclose()
    finally:
        server.stop()


def _durable_server(work_dir) -> RedisServer:
    """A private redis-server that writes each command to its append-only file before answering, so
    that a SIGKILL and restart keeps every slot, as a Redis that was only unreachable would."""
    return RedisServer.start(work_dir, "--appendonly", "yes", "--appendfsync", "always")


def _pooled_client(server: RedisServer) -> redis.Redis:
    """The service's own client (its pool survives a restart of ``server``)."""
    return redis_client(SimpleNamespace(sentinels=(), url=server.url))


@pytest.mark.redis
@pytest.mark.parametrize("failure", ["redis down", "cancelled"])
async def test_a_release_redis_did_not_get_is_retried_at_the_next_renewal(tmp_path, failure, caplog):
    """The slot lives while this instance's heartbeat does, which it keeps renewing for its other
    connections: a release lost to an outage, or cancelled mid-call, must be made again."""
    server = _durable_server(tmp_path)
    client = _pooled_client(server)
    try:
        presence = RedisPresence(client, "u", lease=30)
        await presence.acquire(ROOM, "alice", "h-alice")
        await presence.acquire(ROOM, "bob", "h-bob")
        if failure == "redis down":
            server.stop(signal.SIGKILL)
            assert await presence.release("room-1", "alice", "h-alice") is False
        else:
            os.kill(server.pid, signal.SIGSTOP)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(presence.release("room-1", "alice", "h-alice"), 0.2)
            server.stop(signal.SIGKILL)  # the call written to its socket dies with it
        server.run()
        assert await presence.count("room-1") == 2
        with caplog.at_level(logging.INFO, logger="channels_app.state.redis_presence"):
            await presence.renew()
        assert await presence.count("room-1") == 1
        assert not await presence.contains("room-1", "alice")
        assert any(r.levelno == logging.INFO and "alice" in r.getMessage() for r in caplog.records)
        await presence.acquire(ROOM, "alice", "h-back")  # the clientId is free again
        await client.aclose()
    finally:
        server.stop()


@pytest.mark.redis
async def test_renewals_go_on_until_a_failed_release_is_made_though_no_slot_is_held(tmp_path):
    server = _durable_server(tmp_path)
    client = _pooled_client(server)
    try:
        presence = RedisPresence(client, "u", lease=0.6)
        await presence.acquire(ROOM, "alice", "h-alice")
        server.stop(signal.SIGKILL)
        assert await presence.release("room-1", "alice", "h-alice") is False
        server.run()

        async def released() -> bool:
            return await client.zscore("u:s:{room-1}", "alice") is None

        await wait_until(released, within=2)
        await client.aclose()
    finally:
        server.stop()


@pytest.mark.redis
@pytest.mark.parametrize("failure", ["timed out", "cancelled"])
async def test_an_acquire_that_failed_after_redis_ran_it_leaves_no_slot(redis_server, failure):
    """Redis paused with the acquire written to its socket: the caller sees a failure (a 503, or
    its task cancelled), the script runs once Redis resumes, and the next renewal removes that slot."""
    client = redis.from_url(redis_server.url, socket_timeout=0.3)
    presence = RedisPresence(client, "u", lease=30)
    await presence.acquire(ROOM, "bob", "h-bob")
    os.kill(redis_server.pid, signal.SIGSTOP)
    try:
        if failure == "timed out":
            with pytest.raises(ApplicationError):
                await presence.acquire(ROOM, "carol", "h-carol")
        else:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(presence.acquire(ROOM, "carol", "h-carol"), 0.2)
    finally:
        os.kill(redis_server.pid, signal.SIGCONT)
    sync = redis_server.client()
    await wait_until(lambda: sync.hget("u:sh:{room-1}", "carol") == b"h-carol", within=2)
    await presence.renew()
    assert await presence.count("room-1") == 1
    assert not await presence.contains("room-1", "carol")
    await presence.acquire(ROOM, "carol", "h-carol-again")
    await client.aclose()


@pytest.mark.redis
async def test_connections_pooled_before_a_redis_restart_do_not_fail_a_command_after_it(tmp_path):
    """redis-py 8 skips its pool's check for closed connections while "maintenance notifications"
    are on (the default with RESP3), so each connection pooled before a restart failed its next
    command with a 503 although Redis was back."""
    from types import SimpleNamespace

    from channels_app.state.redis import redis_client
    from tests.support.redisserver import RedisServer

    server = RedisServer.start(tmp_path)
    try:
        client = redis_client(SimpleNamespace(sentinels=(), url=server.url))
        # Several connections in the pool at once, as concurrent requests leave them.
        await asyncio.gather(*(client.blpop([f"k{index}"], timeout=0.2) for index in range(4)))
        server.stop(signal.SIGKILL)
        server.run()
        await asyncio.sleep(0.2)
        for index in range(8):
            assert await client.incr("after-restart") == index + 1
        await client.aclose()
    finally:
        server.stop()


def _history_on(url: str, *, connections: int = 4, read_timeout: float = 0.5) -> tuple[RedisHistory, redis.Redis]:
    """A history on its own small pool, and the client of that pool."""
    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=connections, timeout=0.3, socket_timeout=read_timeout
    )
    client = redis.Redis(connection_pool=pool)
    return RedisHistory(client, "t"), client


async def test_an_append_that_could_not_be_sent_says_nothing_was_published(redis_server):
    history, client = _history_on(redis_server.url, connections=1)
    pool = client.connection_pool
    busy = await pool.get_connection()  # every pooled connection is taken
    with pytest.raises(ApplicationError) as refused:
        await history.append(ROOM, payload="never", client_id="c")
    await pool.release(busy)
    assert (refused.value.status, refused.value.code) == (503, "redis_unavailable")
    assert "nothing was published" in refused.value.message
    await asyncio.sleep(0.5)
    assert await history.head(ROOM.id) == 0
    redis_server.stop()
    await asyncio.sleep(0.1)  # the event loop notices the pooled connections were closed
    with pytest.raises(ApplicationError) as down:
        await history.append(ROOM, payload="never", client_id="c")
    assert (down.value.status, down.value.code) == (503, "redis_unavailable")
    await client.aclose()


async def test_an_append_sent_to_a_stalled_redis_has_an_unknown_outcome_and_its_key_replays_it(redis_server):
    """The issue's case: Redis paused with the call written to its socket. The answer cannot say
    "not published", because the call runs when Redis resumes; a retry with the key finds it."""
    history, client = _history_on(redis_server.url)
    await history.append(ROOM, payload="before", client_id="c")  # a pooled connection, the script known
    draft = Draft("paid", "server-message", idempotency_key_parse("order-7", payload="paid"))
    os.kill(redis_server.pid, signal.SIGSTOP)
    try:
        with pytest.raises(ApplicationError) as unknown:
            await history.append_many(ROOM, [draft])
    finally:
        os.kill(redis_server.pid, signal.SIGCONT)
    assert (unknown.value.status, unknown.value.close_code, unknown.value.code) == (
        504,
        4504,
        "publish_outcome_unknown",
    )
    held = await history.find(ROOM, [draft.id])
    assert [message.payload for message in held] == ["paid"]  # it did run, once Redis resumed
    (retried,) = await history.append_many(ROOM, [Draft("paid", "server-message", draft.idempotency)])
    assert isinstance(retried, Replayed) and retried.message.id == draft.id
    assert await history.head(ROOM.id) == 2
    await client.aclose()


def _reads(client) -> int:
    """How many times redis-server has read from its clients' sockets (this INFO included)."""
    return int(client.info("stats")["total_reads_processed"])


async def test_appends_made_together_go_in_one_pipeline_and_each_gets_its_own_offsets(history, redis_server):
    rooms = [_room(index) for index in range(40)]
    await history.append(rooms[0], payload="warm", client_id="c")  # the script known, a connection pooled
    counter = redis_server.client()
    before = _reads(counter)
    runs = await asyncio.gather(
        *(history.append_many(room, [Draft(f"{room.id}-a", "c"), Draft(f"{room.id}-b", "c")]) for room in rooms)
    )
    reads = _reads(counter) - before - 1
    # The first append leaves at once, alone; the other 39 wait for it and go as one pipeline.
    assert reads <= 4, f"40 concurrent appends cost {reads} reads: they were not pipelined"
    for room, run in zip(rooms, runs, strict=True):
        first = 2 if room is rooms[0] else 1
        assert [(m.payload, m.offset) for m in run] == [(f"{room.id}-a", first), (f"{room.id}-b", first + 1)]
        held = (await history.since(room, Position(offset=0))).messages
        assert [m.payload for m in held][-2:] == [f"{room.id}-a", f"{room.id}-b"]


async def test_a_pipeline_of_appends_after_redis_lost_its_scripts_records_every_one_once(history, redis_server):
    rooms = [_room(index) for index in range(10)]
    await history.append(rooms[0], payload="warm", client_id="c")
    redis_server.client().script_flush()  # as after a restart: EVALSHA answers NOSCRIPT
    runs = await asyncio.gather(*(history.append(room, payload="x", client_id="c") for room in rooms))
    assert [message.offset for message in runs] == [2] + [1] * 9
    for room in rooms:
        assert await history.head(room.id) == (2 if room is rooms[0] else 1)


async def test_in_a_pipeline_a_reused_idempotency_key_fails_its_own_append_alone(history):
    rooms = [_room(index) for index in range(6)]
    first = Draft("paid", "c", idempotency_key_parse("order-1", payload="paid"))
    await history.append_many(rooms[0], [first])
    reused = Draft("refunded", "c", idempotency_key_parse("order-1", payload="refunded"))
    runs = await asyncio.gather(
        history.append(rooms[1], payload="lead", client_id="c"),
        history.append_many(rooms[0], [reused]),
        *(history.append(room, payload="y", client_id="c") for room in rooms[2:]),
    )
    (outcome,) = runs[1]
    assert isinstance(outcome, ApplicationError) and outcome.code == "idempotency_key_reused"
    assert [message.offset for message in (runs[0], *runs[2:])] == [1] * 5
    assert await history.head(rooms[0].id) == 1
