"""The channel layers, each a library's own with one change measured to matter
(docs/architecture.md, "Why the code is shaped this way").

- ``InMemoryChannelLayer`` (the ``MEMORY`` driver): channels' own, with its expiry sweep run at most
  once a second and ``group_send`` queuing for every member at once, because both made a publish's
  cost grow with the number of channels and kept a burst from reaching the hub together.
- ``RedisPubSubChannelLayer`` (``REDIS``, ``layer: pubsub``): channels-redis's own, with the group
  sends made while one is on its way to the same shard published together, as one pipeline.
  channels-redis sends one ``PUBLISH`` per round trip, one at a time per shard, and on a busy
  machine a round trip's write and wake-up cost more than the rest of a publish.
"""

from __future__ import annotations

import asyncio
import functools
import time
import weakref

from channels.exceptions import ChannelFull
from channels.layers import InMemoryChannelLayer as ChannelsInMemoryChannelLayer
from channels_redis.pubsub import RedisPubSubChannelLayer as ChannelsRedisPubSubChannelLayer

from ..config import EVENTS_PER_TURN
from .group_commit import GroupCommit

SWEEP_INTERVAL_SECONDS = 1.0
# Events waiting for a member beyond which a publisher yields (a run of publishes is one event).
BACKLOG = EVENTS_PER_TURN


class InMemoryChannelLayer(ChannelsInMemoryChannelLayer):
    """channels' in-memory layer, sweeping expired messages and memberships at most once a second."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._next_sweep = 0.0

    def _clean_expired(self) -> None:
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_INTERVAL_SECONDS
        super()._clean_expired()

    async def group_send(self, group, message):
        """Put ``message`` on every member channel's queue now, without yielding to the loop.

        channels' version sends through a task per member and waits for them all, so a publisher
        is suspended once per message and a burst reaches the hub one message per loop turn.
        """
        assert isinstance(message, dict), "message is not a dict"
        self.require_valid_group_name(group)
        self._clean_expired()
        backlog = False
        for channel in list(self.groups.get(group, ())):
            try:
                await self.send(channel, message)
            except ChannelFull:
                # Dropped for this member alone, as channels does; the hub notices the hole in
                # the channel's offsets and re-reads the message from history.
                pass
            queue = self.channels.get(channel)
            backlog = backlog or (queue is not None and queue.qsize() >= BACKLOG)
        if backlog:
            await asyncio.sleep(0)


class RedisPubSubChannelLayer(ChannelsRedisPubSubChannelLayer):
    """channels-redis's Pub/Sub layer, publishing the group sends that wait for the same shard together."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Per shard connection of each event loop's layer, gone with it.
        self._publishes: weakref.WeakKeyDictionary[object, GroupCommit] = weakref.WeakKeyDictionary()

    async def group_send(self, group, message):
        """Publish ``message`` to the group's Redis channel, in a pipeline with the group sends
        waiting for the same shard while one is on its way."""
        layer = self._get_layer()
        group_channel = layer._get_group_channel_name(group)
        shard = layer._get_shard(group_channel)
        publishes = self._publishes.get(shard)
        if publishes is None:
            publishes = self._publishes[shard] = GroupCommit(
                functools.partial(_publish_pipelined, shard), name="realtime-layer-publishes"
            )
        await publishes.call((group_channel, self.serialize(message)))


async def _publish_pipelined(shard, publishes: list[tuple[str, bytes]]) -> list:
    # Under the shard's own lock, as channels-redis publishes, subscribes and flushes.
    async with shard._lock:
        shard._ensure_redis()
        async with shard._redis.pipeline(transaction=False) as pipe:
            for group_channel, data in publishes:
                pipe.publish(group_channel, data)
            return await pipe.execute(raise_on_error=False)
