"""The channel layers: the MEMORY driver's sweeps expiry at most once a second, and still expires; the
REDIS driver's Pub/Sub layer publishes the group sends waiting for a shard as one pipeline."""

from __future__ import annotations

import asyncio

from channels.layers import InMemoryChannelLayer as ChannelsInMemoryChannelLayer
from django.conf import settings

from channels_app.state import layers
from channels_app.state.layers import InMemoryChannelLayer, RedisPubSubChannelLayer


def test_the_memory_driver_uses_this_layer():
    assert settings.CHANNEL_LAYERS["default"]["BACKEND"] == "channels_app.state.layers.InMemoryChannelLayer"


async def test_a_thousand_publishes_sweep_once(monkeypatch):
    sweeps = []
    monkeypatch.setattr(ChannelsInMemoryChannelLayer, "_clean_expired", lambda self: sweeps.append(1))
    layer = InMemoryChannelLayer(capacity=10_000)
    hub = await layer.new_channel("realtime-hub")
    for index in range(100):
        await layer.group_add(f"channel-{index}", hub)
    for index in range(1000):
        await layer.group_send(f"channel-{index % 100}", {"type": "realtime.message"})
    for _ in range(1000):
        await layer.receive(hub)
    assert len(sweeps) == 1


async def test_expired_messages_and_their_channel_still_leave(monkeypatch):
    monkeypatch.setattr(layers, "SWEEP_INTERVAL_SECONDS", 0.05)
    layer = InMemoryChannelLayer(expiry=0.01)
    stale = await layer.new_channel("stale")
    await layer.group_add("channel-a", stale)
    await layer.send(stale, {"type": "realtime.message"})
    await asyncio.sleep(0.1)
    await layer.group_send("channel-b", {"type": "realtime.message"})
    # channels' rule: a channel whose message expired unread is dropped from every group.
    assert stale not in layer.groups.get("channel-a", {})
    assert stale not in layer.channels


async def test_group_send_queues_for_every_member_without_yielding():
    """A burst of publishes reaches the hub together, so it can be fanned out in one turn."""
    layer = InMemoryChannelLayer()
    members = [await layer.new_channel("member") for _ in range(3)]
    for member in members:
        await layer.group_add("channel-a", member)
    other_task_ran = []
    asyncio.get_running_loop().call_soon(other_task_ran.append, True)
    for index in range(5):
        await layer.group_send("channel-a", {"type": "realtime.message", "n": index})
    assert other_task_ran == []
    for member in members:
        assert [(await layer.receive(member))["n"] for _ in range(5)] == list(range(5))


async def test_group_send_to_a_full_member_still_reaches_the_others():
    layer = InMemoryChannelLayer(capacity=1)
    full, free = await layer.new_channel("full"), await layer.new_channel("free")
    await layer.group_add("channel-a", full)
    await layer.group_add("channel-a", free)
    await layer.send(full, {"type": "realtime.message", "n": 0})
    await layer.group_send("channel-a", {"type": "realtime.message", "n": 1})
    assert (await layer.receive(full))["n"] == 0
    assert (await layer.receive(free))["n"] == 1
    assert full not in layer.channels


async def test_a_publisher_yields_once_a_member_is_backlogged():
    """A publisher faster than the hub is held to one message per turn, not queued without bound."""
    layer = InMemoryChannelLayer(capacity=10_000)
    member = await layer.new_channel("member")
    await layer.group_add("channel-a", member)
    depth_at_each_turn = []

    def other_task():
        depth_at_each_turn.append(layer.channels[member].qsize())
        handle[0] = asyncio.get_running_loop().call_soon(other_task)

    handle = [asyncio.get_running_loop().call_soon(other_task)]
    for index in range(layers.BACKLOG + 10):
        await layer.group_send("channel-a", {"type": "realtime.message", "n": index})
    handle[0].cancel()
    # No turn for others until the backlog is reached, then one after every message.
    assert depth_at_each_turn == list(range(layers.BACKLOG, layers.BACKLOG + 11))


def _reads(client) -> int:
    """How many times redis-server has read from its clients' sockets (this INFO included)."""
    return int(client.info("stats")["total_reads_processed"])


async def test_redis_group_sends_made_together_are_one_pipeline_and_each_reaches_its_group(redis_server):
    hosts = [{"address": redis_server.url}]
    sender, receiver = RedisPubSubChannelLayer(hosts=hosts), RedisPubSubChannelLayer(hosts=hosts)
    hub = await receiver.new_channel("realtime-hub")
    for index in range(30):
        await receiver.group_add(f"channel-{index}", hub)
    await sender.group_send("channel-0", {"type": "realtime.message", "n": -1})  # a connection pooled
    assert (await asyncio.wait_for(receiver.receive(hub), 5))["n"] == -1
    counter = redis_server.client()
    before = _reads(counter)
    await asyncio.gather(
        *(sender.group_send(f"channel-{index % 30}", {"type": "realtime.message", "n": index}) for index in range(90))
    )
    reads = _reads(counter) - before - 1
    # The first leaves at once, alone; the other 89 wait for it and go as two pipelines (64 at most each).
    assert reads <= 5, f"90 concurrent group sends cost {reads} reads: they were not pipelined"
    received = [(await asyncio.wait_for(receiver.receive(hub), 5))["n"] for _ in range(90)]
    assert received == list(range(90)), "every message arrives once, in the order sent"
    await sender.flush()
    await receiver.flush()


async def test_a_redis_group_send_to_a_redis_that_is_gone_fails_in_its_caller(redis_server):
    layer = RedisPubSubChannelLayer(hosts=[{"address": redis_server.url, "socket_connect_timeout": 1}])
    await layer.group_send("channel-a", {"type": "realtime.message"})
    redis_server.stop()
    outcomes = await asyncio.gather(
        *(layer.group_send("channel-a", {"type": "realtime.message", "n": n}) for n in range(5)),
        return_exceptions=True,
    )
    assert all(isinstance(outcome, Exception) for outcome in outcomes), outcomes
    await layer.flush()
