"""Redis state: a run of messages is recorded in one step; a lease renewal brings back slots a
Redis restart lost, but never a released or replaced one (the rest of the slot contract, shared with
MEMORY mode, is in test_presence.py)."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
import redis.asyncio as redis
from redis.asyncio.client import Pipeline

from channels_app.channel import ChannelInfo
from channels_app.errors import ApplicationError
from channels_app.state.history import Draft, Replayed
from channels_app.state.idempotency import idempotency_key_parse
from channels_app.state.redis import RedisHistory
from channels_app.state.redis_presence import RedisPresence

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
    """Run ``action`` after the renewal took its list of slots, before its writes reach Redis."""
    execute = Pipeline.execute

    async def execute_after_action(pipeline, *args, **kwargs):
        await action()
        return await execute(pipeline, *args, **kwargs)

    monkeypatch.setattr(Pipeline, "execute", execute_after_action)


async def test_a_slot_released_during_a_renewal_stays_released(presence, monkeypatch):
    await presence.acquire(ROOM, "leaving", "h-leaving")
    await presence.acquire(ROOM, "staying", "h-staying")
    _while_renewing(monkeypatch, lambda: presence.release("room-1", "leaving", "h-leaving"))
    await presence.renew()
    monkeypatch.undo()
    assert await presence.count("room-1") == 1
    assert not await presence.contains("room-1", "leaving")
    await presence.acquire(ROOM, "leaving", "h-again")  # the client may come straight back


async def test_a_slot_taken_again_during_a_renewal_is_kept(presence, monkeypatch):
    await presence.acquire(ROOM, "back", "h-first")

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
