"""The in-memory channel layer of the ``MEMORY`` driver: channels' own, with its expiry sweep run at most
once a second and ``group_send`` queuing for every member at once, because both made a publish's cost
grow with the number of channels and kept a burst from reaching the hub together
(docs/architecture.md, "Why the code is shaped this way").
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
