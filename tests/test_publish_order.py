"""Concurrent publishes to one channel reach the channel layer in offset order.

The hub drops a message that arrives after a higher offset of its channel, and repairs the hole
from history only while history still holds it. RedisChannelLayer (``layer: core``) orders a
channel's queue by a timestamp that ``group_send`` takes after several Redis round trips, so
publishes that overlap must hand their messages to the layer one at a time, in offset order.
"""

from __future__ import annotations

import asyncio
import random
import time

from channels.layers import InMemoryChannelLayer
from django.conf import settings

from channels_app.registry import ChannelInfo
from channels_app.runtime import Runtime
from channels_app.services import message_publish

CHANNEL = ChannelInfo(id="order-1", name="order", type="WS", max_connections=10, history_size=10, history_ttl=3600)


class TimestampingLayer(InMemoryChannelLayer):
    """Like RedisChannelLayer.group_send: a few round trips, then the message is queued by time."""

    def __init__(self, rng: random.Random):
        super().__init__()
        self.rng = rng
        self.queued: list[tuple[float, int]] = []

    async def group_send(self, group, message):
        for _ in range(self.rng.randint(0, 3)):
            await asyncio.sleep(0)
        self.queued.append((time.monotonic(), message["message"]["offset"]))


class YieldingHistory:
    """The runtime's history, answering after a few turns of the loop (as Redis does)."""

    def __init__(self, history, rng: random.Random):
        self.history, self.rng = history, rng

    async def append(self, *args, **kwargs):
        for _ in range(self.rng.randint(0, 3)):
            await asyncio.sleep(0)
        return await self.history.append(*args, **kwargs)


def test_overlapping_publishes_reach_the_layer_in_offset_order():
    async def scenario():
        rng = random.Random(7)
        layer = TimestampingLayer(rng)
        runtime = Runtime(config=settings.REALTIME, layer=layer)
        runtime.history = YieldingHistory(runtime.history, rng)
        await asyncio.gather(
            *(message_publish(channel=CHANNEL, payload=f"m{i}", client_id="c", runtime=runtime) for i in range(64))
        )
        return [offset for _, offset in sorted(layer.queued)]

    assert asyncio.run(scenario()) == list(range(1, 65))
