"""Concurrent publishes to one channel reach the channel layer in offset order.

The hub drops a message that arrives after a higher offset of its channel, and repairs the hole
from history only while history still holds it. RedisChannelLayer (``layer: core``) orders a
channel's queue by a timestamp that ``group_send`` takes after several Redis round trips, so
publishes that overlap must hand their messages to the layer one run at a time, in offset order.
Publishes that wait for a run on its way go together, and each learns its own outcome.
"""

from __future__ import annotations

import asyncio
import random
import time

from channels.layers import InMemoryChannelLayer

from channels_app.channel import ChannelInfo
from channels_app.core.services import message_publish, message_publish_receipt
from channels_app.errors import ApplicationError
from channels_app.naming import channel_group
from channels_app.state.history import MemoryHistory
from tests.conftest import memory_runtime
from tests.support.fakes import HeldHistory

CHANNEL = ChannelInfo(id="order-1", name="order", type="WS", max_connections=10, history_size=10, history_ttl=3600)


class TimestampingLayer(InMemoryChannelLayer):
    """Like RedisChannelLayer.group_send: a few round trips, then the message is queued by time."""

    def __init__(self, rng: random.Random):
        super().__init__()
        self.rng = rng
        self.queued: list[tuple[float, int]] = []
        self.sends = 0

    async def group_send(self, group, message):
        for _ in range(self.rng.randint(0, 3)):
            await asyncio.sleep(0)
        wires = message["messages"] if message["type"] == "realtime.messages" else [message["message"]]
        self.queued.extend((time.monotonic(), wire["offset"]) for wire in wires)
        self.sends += 1


class YieldingHistory:
    """The runtime's history, answering after a few turns of the loop (as Redis does)."""

    def __init__(self, history, rng: random.Random):
        self.history, self.rng = history, rng

    async def append_many(self, *args, **kwargs):
        for _ in range(self.rng.randint(0, 3)):
            await asyncio.sleep(0)
        return await self.history.append_many(*args, **kwargs)


def test_overlapping_publishes_reach_the_layer_in_offset_order():
    async def scenario():
        rng = random.Random(7)
        layer = TimestampingLayer(rng)
        runtime = memory_runtime(layer=layer, history=YieldingHistory(MemoryHistory(), rng))
        published = await asyncio.gather(
            *(message_publish(channel=CHANNEL, payload=f"m{i}", client_id="c", runtime=runtime) for i in range(64))
        )
        return published, [offset for _, offset in sorted(layer.queued)], layer.sends

    published, queued, sends = asyncio.run(scenario())
    assert queued == list(range(1, 65))
    # Each publisher got its own message, stamped in the order it published.
    assert [(m.payload, m.offset) for m in published] == [(f"m{i}", i + 1) for i in range(64)]
    # Publishes that waited for a run on its way went together: one layer send per run, each run
    # no longer than a turn of the hub's.
    assert 64 / 16 <= sends < 64


async def publish_while_held(runtime, count: int):
    history = runtime.history
    tasks = [
        asyncio.ensure_future(message_publish(channel=CHANNEL, payload=f"m{i}", client_id="c", runtime=runtime))
        for i in range(count)
    ]
    await asyncio.sleep(0.01)
    history.release.set()
    return await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_run_history_refuses_fails_each_of_its_publishers_with_its_own_error():
    refusal = ApplicationError("redis_unavailable", "Redis is away.", status=503, close_code=4503)
    runtime = memory_runtime(history=HeldHistory(MemoryHistory(), error=refusal))
    outcomes = await publish_while_held(runtime, 5)
    assert [(o.code, o.status) for o in outcomes] == [("redis_unavailable", 503)] * 5
    assert len({id(o) for o in outcomes}) == 5
    assert "messages_published" not in runtime.stats.counters()


async def test_a_run_the_layer_refuses_is_acknowledged_as_recorded_and_handed_over_once_the_layer_is_back(
    monkeypatch,
):
    history = HeldHistory(MemoryHistory())
    runtime = memory_runtime(history=history)
    runtime.fanout_repair.retry_seconds = 0.05
    await runtime.layer.group_add(channel_group(CHANNEL.id), "observer")
    group_send = runtime.layer.group_send
    refusals = [ConnectionError("layer down")] * 2

    async def down_for_a_while(group, message):
        if refusals:
            raise refusals.pop()
        await group_send(group, message)

    monkeypatch.setattr(runtime.layer, "group_send", down_for_a_while)
    receipts = [
        asyncio.ensure_future(message_publish_receipt(channel=CHANNEL, payload=f"m{i}", client_id="c", runtime=runtime))
        for i in range(5)
    ]
    await asyncio.sleep(0.01)
    history.release.set()
    receipts = await asyncio.gather(*receipts)
    # Recorded, each publisher with its own offset, and told that the hand-over is pending: a 202, not a
    # refusal that would invite a second publish.
    assert [(r.message.offset, r.fanout_pending) for r in receipts] == [(offset, True) for offset in range(1, 6)]
    assert runtime.stats.counters()["publish_errors"] == 5
    handed_over = []
    while len(handed_over) < 5:
        event = await asyncio.wait_for(runtime.layer.receive("observer"), 2)
        handed_over += [wire["offset"] for wire in event.get("messages", [event.get("message")])]
    assert handed_over == [1, 2, 3, 4, 5]
    assert runtime.stats.counters()["fanout_repaired"] == 5


async def test_publishes_that_waited_together_are_counted_as_one_run():
    runtime = memory_runtime(history=HeldHistory(MemoryHistory()))
    messages = await publish_while_held(runtime, 5)
    assert [m.offset for m in messages] == [1, 2, 3, 4, 5]
    assert runtime.stats.counters()["messages_published"] == 5
    # The first went alone, at once; the four that arrived while it was on its way went together.
    assert runtime.stats.counters()["publish_runs"] == 2
