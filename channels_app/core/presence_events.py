"""Join and leave notices of presence channels, coalesced and rate-limited per channel per instance.

Each instance notes the joins and leaves of its own connections (and of the dead instances' members
its lease sweeps remove) and sends them to the channel's group at most once per ``WINDOW_SECONDS``,
as one ``realtime.presence`` layer event of at most ``MAX_EVENTS_PER_BATCH`` notices; every hub
then hands them to its local subscribers as ``join`` / ``leave`` control frames.

While a notice waits, a later one for the same clientId replaces it, except that a join followed by
a leave cancels out: subscribers never heard of that member. Notices beyond a batch wait for the next
window, where they coalesce further, so a reconnect storm of any size costs each subscriber at most
``MAX_EVENTS_PER_BATCH`` frames per window per instance (docs/protocol.md, "Presence").
"""

from __future__ import annotations

import asyncio
import contextvars
import logging

from ..naming import channel_group

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 0.25
MAX_EVENTS_PER_BATCH = 100
JOIN = "join"
LEAVE = "leave"


class PresenceEvents:
    """The pending join and leave notices of this instance, per channel, and their flushing."""

    def __init__(self, runtime, *, window: float = WINDOW_SECONDS, batch: int = MAX_EVENTS_PER_BATCH):
        """``runtime`` supplies the channel layer, read when a batch is sent."""
        self.runtime = runtime
        self.window = window
        self.batch = batch
        # channel id -> clientId -> the notice to send (insertion order: oldest first)
        self._pending: dict[str, dict[str, dict]] = {}
        self._flushing: dict[str, asyncio.Task] = {}

    def note(self, channel_id: str, control: str, client_id: str, info: dict | None) -> None:
        """Queue a ``join`` or ``leave`` of ``client_id``, to be sent within the window."""
        pending = self._pending.setdefault(channel_id, {})
        waiting = pending.pop(client_id, None)
        if not (waiting is not None and waiting["control"] == JOIN and control == LEAVE):
            pending[client_id] = {"control": control, "clientId": client_id, "info": info}
        if not pending:
            del self._pending[channel_id]
            return
        if channel_id not in self._flushing:
            self._flushing[channel_id] = asyncio.create_task(
                self._flush_loop(channel_id), name="realtime-presence-flush", context=contextvars.Context()
            )

    async def _flush_loop(self, channel_id: str) -> None:
        try:
            while self._pending.get(channel_id):
                await asyncio.sleep(self.window)
                pending = self._pending.get(channel_id)
                if not pending:
                    break
                client_ids = list(pending)[: self.batch]
                notices = [pending.pop(client_id) for client_id in client_ids]
                if not pending:
                    del self._pending[channel_id]
                await self._send(channel_id, notices)
        finally:
            self._flushing.pop(channel_id, None)

    async def _send(self, channel_id: str, notices: list[dict]) -> None:
        try:
            await self.runtime.layer.group_send(
                channel_group(channel_id), {"type": "realtime.presence", "channel_id": channel_id, "events": notices}
            )
        except Exception:
            # Presence notices are advisory: the list (GET .../presence) stays right either way.
            logger.exception("could not send %d presence notice(s) of channel %s", len(notices), channel_id)
