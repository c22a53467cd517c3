"""Connection slots in Redis: a renewal racing a release does not bring the released slot back."""

from __future__ import annotations

import pytest
import redis.asyncio as redis
from redis.asyncio.client import Pipeline

from channels_app.redis_state import RedisPresence
from channels_app.registry import ChannelInfo

pytestmark = pytest.mark.asyncio

ROOM = ChannelInfo(id="room-1", name="room", type="WS", max_connections=5, history_size=10, history_ttl=3600)


@pytest.fixture
async def presence(redis_server):
    client = redis.from_url(redis_server.url)
    yield RedisPresence(client, "t", lease=30)
    await client.aclose()


def _while_renewing(monkeypatch, action):
    """Run ``action`` after the renewal took its list of slots, before its writes reach Redis."""
    execute = Pipeline.execute

    async def execute_after_action(pipeline, *args, **kwargs):
        await action()
        return await execute(pipeline, *args, **kwargs)

    monkeypatch.setattr(Pipeline, "execute", execute_after_action)


async def test_a_slot_released_during_a_renewal_stays_released(presence, monkeypatch):
    await presence.acquire(ROOM, "leaving")
    await presence.acquire(ROOM, "staying")
    _while_renewing(monkeypatch, lambda: presence.release("room-1", "leaving"))
    await presence.renew()
    monkeypatch.undo()
    assert await presence.count("room-1") == 1
    assert not await presence.contains("room-1", "leaving")
    await presence.acquire(ROOM, "leaving")  # the client may come straight back


async def test_a_slot_taken_again_during_a_renewal_is_kept(presence, monkeypatch):
    await presence.acquire(ROOM, "back")

    async def leave_and_return():
        await presence.release("room-1", "back")
        await presence.acquire(ROOM, "back")

    _while_renewing(monkeypatch, leave_and_return)
    await presence.renew()
    monkeypatch.undo()
    assert await presence.contains("room-1", "back")
    assert await presence.count("room-1") == 1
