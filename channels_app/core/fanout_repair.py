"""Hand-over to the channel layer of messages whose publish ended without one.

Two failures leave a message in history, or possibly in history, that no hub was sent: the layer
refused it (``layer_unavailable``), or Redis did not answer the history append in time
(``publish_outcome_unknown``: the append may still run once Redis reads it). Subscribers who resume
get such a message from history, and hubs re-read it when the channel's next message shows the
hole; on a quiet channel neither happens, so this process retries the hand-over in the background
until the layer takes it, or for at most ``GIVE_UP_AFTER_SECONDS``. Hubs drop a message they have
already delivered, so a late hand-over never reaches anyone twice.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from .. import counters
from ..channel import ChannelInfo
from ..errors import ApplicationError
from ..messages import Message, layer_event
from ..naming import channel_group

logger = logging.getLogger(__name__)

RETRY_SECONDS = 1.0
GIVE_UP_AFTER_SECONDS = 120.0
# An append whose answer was lost is looked for twice, this far apart once Redis answers again: a
# call written to a connection before a stall may still be waiting in Redis's input buffer when
# the first look is answered.
SETTLE_SECONDS = 1.0


@dataclass
class _Pending:
    channel: ChannelInfo
    deadline: float
    messages: list[Message] = field(default_factory=list)  # recorded, to hand over
    unknown_ids: list[str] = field(default_factory=list)  # maybe recorded: to look for first
    looked_at: float | None = None  # when history first answered the look


class FanoutRepair:
    """Retries the hand-over of recorded messages, and finds out what became of unanswered appends."""

    def __init__(self, runtime, *, retry_seconds: float = RETRY_SECONDS, clock=time.monotonic):
        self._runtime = runtime
        self._stats = runtime.stats
        self.retry_seconds = retry_seconds
        self._clock = clock
        self._pending: list[_Pending] = []
        self._task: asyncio.Task | None = None

    def refused(self, channel: ChannelInfo, messages: Sequence[Message]) -> None:
        """The layer refused these recorded messages: hand them over once it takes them."""
        self._add(_Pending(channel, self._clock() + GIVE_UP_AFTER_SECONDS, messages=list(messages)))

    def unknown(self, channel: ChannelInfo, message_ids: Sequence[str]) -> None:
        """An append of these drafts was not answered: hand over whichever of them history holds."""
        self._add(_Pending(channel, self._clock() + GIVE_UP_AFTER_SECONDS, unknown_ids=list(message_ids)))

    def pending(self) -> int:
        """Runs still waiting for their hand-over (for tests and metrics)."""
        return len(self._pending)

    def _add(self, pending: _Pending) -> None:
        self._pending.append(pending)
        if self._task is None or self._task.done():
            # A fresh context: the repair serves several requests, so it carries none's request id.
            self._task = asyncio.create_task(self._run(), name="realtime-fanout-repair", context=contextvars.Context())

    async def _run(self) -> None:
        while self._pending:
            await asyncio.sleep(self.retry_seconds)
            for pending in list(self._pending):
                try:
                    done = await self._attempt(pending)
                except Exception:
                    logger.exception("repairing the fan-out of channel %s failed", pending.channel.id)
                    done = False
                if not done and self._clock() >= pending.deadline:
                    done = True
                    self._stats.incr(counters.FANOUT_REPAIRS_ABANDONED)
                    logger.warning(
                        "gave up handing %d message(s) of channel %s to the layer; they stay in history",
                        len(pending.messages) + len(pending.unknown_ids),
                        pending.channel.id,
                    )
                if done:
                    self._pending.remove(pending)

    async def _attempt(self, pending: _Pending) -> bool:
        """One try; True once nothing is left to do."""
        if pending.unknown_ids and not await self._look(pending):
            return False
        if not pending.messages:
            return True
        try:
            await self._runtime.layer.group_send(channel_group(pending.channel.id), layer_event(pending.messages))
        except Exception as exc:
            logger.info("channel layer still refuses messages of channel %s: %s", pending.channel.id, exc)
            return False
        self._stats.incr(counters.FANOUT_REPAIRED, len(pending.messages))
        logger.info("handed %d message(s) of channel %s to the layer late", len(pending.messages), pending.channel.id)
        pending.messages = []
        return True

    async def _look(self, pending: _Pending) -> bool:
        """Move the unanswered drafts that history holds to ``messages``; True once settled."""
        try:
            found = await self._runtime.history.find(pending.channel, pending.unknown_ids)
        except ApplicationError:
            return False  # the store is still away
        now = self._clock()
        if found:
            ids = {message.id for message in found}
            pending.unknown_ids = [message_id for message_id in pending.unknown_ids if message_id not in ids]
            pending.messages = sorted([*pending.messages, *found], key=lambda message: message.offset or 0)
            self._stats.incr(counters.PUBLISH_OUTCOMES_RECORDED, len(found))
        if pending.looked_at is None:
            pending.looked_at = now
        if pending.unknown_ids and now - pending.looked_at < SETTLE_SECONDS:
            return False
        if pending.unknown_ids:
            self._stats.incr(counters.PUBLISH_OUTCOMES_NOT_RECORDED, len(pending.unknown_ids))
            logger.info(
                "%d unanswered publish(es) to channel %s were not recorded",
                len(pending.unknown_ids),
                pending.channel.id,
            )
            pending.unknown_ids = []
        return True
