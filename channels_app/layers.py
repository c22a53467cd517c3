"""The in-memory channel layer of the ``MEMORY`` driver.

channels' ``InMemoryChannelLayer`` sweeps every queue and every group membership for expiry on
each ``send``, ``receive`` and ``group_send``. Here every channel with local subscribers is a
group (with the hub as its one member), so that sweep costs O(channels) per publish: with 1,000
channels it was most of a publish's CPU. Expiry is housekeeping measured in seconds (messages
expire after 60 s, memberships after a day), so sweeping at most once a second changes nothing a
client can see and makes a publish cost the same with 1 channel or 10,000.
"""

from __future__ import annotations

import time

from channels.layers import InMemoryChannelLayer as ChannelsInMemoryChannelLayer

SWEEP_INTERVAL_SECONDS = 1.0


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
