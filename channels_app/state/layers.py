"""The in-memory channel layer of the ``MEMORY`` driver.

channels' ``InMemoryChannelLayer`` sweeps every queue and every group membership for expiry on
each ``send``, ``receive`` and ``group_send``. Here every channel with local subscribers is a
group (with the hub as its one member), so that sweep costs O(channels) per publish: with 1,000
channels it was most of a publish's CPU. Expiry is housekeeping measured in seconds (messages
expire after 60 s, memberships after a day), so sweeping at most once a second changes nothing a
client can see and makes a publish cost the same with 1 channel or 10,000.

``group_send`` also puts the message on every member's queue at once, instead of through a task
per member: channels' way suspends the publisher once per message, so a burst of publishes
reached the hub one per event-loop turn and could never be fanned out together. The publisher
still yields once a member has ``BACKLOG`` events waiting: a publisher faster than the hub is
held to one event (a message, or a run of them) per turn, rather than piling them up in the hub's
queue.
"""

from __future__ import annotations

import asyncio
import time

from channels.exceptions import ChannelFull
from channels.layers import InMemoryChannelLayer as ChannelsInMemoryChannelLayer

from ..config import EVENTS_PER_TURN

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
