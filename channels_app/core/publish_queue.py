"""Group commit of one channel's publishes: those that arrive while a run is on its way go together as
the next run, one history call and one layer event, because under REDIS a run costs two round trips
whatever its length; a publish to a quiet channel leaves at once, alone. Runs leave one at a time,
in offset order (docs/architecture.md, "Why the code is shaped this way").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..channel import ChannelInfo
from ..errors import ApplicationError
from ..messages import Message, layer_event
from ..naming import channel_group
from ..state.group_commit import GroupCommit
from ..state.history import Draft, Replayed

if TYPE_CHECKING:
    from .runtime import Runtime

logger = logging.getLogger(__name__)

# A run's payloads stay under this many bytes (one message is always sent, whatever its size), so
# one layer event stays small next to what a Redis connection carries comfortably.
RUN_MAX_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class Receipt:
    """What a publish produced: its message; whether an earlier publish with the same
    ``Idempotency-Key`` had recorded it; whether its hand-over to subscribers is still pending (the
    channel layer refused it for now, and ``fanout_repair`` retries it)."""

    message: Message
    replayed: bool = False
    fanout_pending: bool = False


@dataclass(frozen=True, slots=True)
class PendingPublish:
    """One publish waiting for its run."""

    channel: ChannelInfo
    draft: Draft
    size: int


class PublishQueue:
    """One channel's publishes waiting for their run, sent in order by a group commit
    (``state/group_commit.py``).

    A run holds at most ``max_messages`` publishes (a hub turn: the hub takes a run whole, so no
    turn holds more than two turns' worth of messages) and ``RUN_MAX_BYTES`` of payload; one run is
    on its way at a time.
    """

    def __init__(self, runtime: Runtime, *, max_messages: int | None = None):
        self._runtime = runtime
        self._runs: GroupCommit[PendingPublish, Receipt] = GroupCommit(
            self._send,
            name="realtime-publish-runs",
            max_items=max_messages or runtime.hub.events_per_turn,
            weigh=_size_of,
            max_weight=RUN_MAX_BYTES,
        )

    async def submit(self, channel: ChannelInfo, draft: Draft, *, size: int) -> Receipt:
        """Send one publish, or queue it behind the run on its way; return once its run has been
        recorded and handed to the layer."""
        return await self._runs.call(PendingPublish(channel, draft, size))

    async def _send(self, run: list[PendingPublish]) -> list[Receipt | BaseException]:
        try:
            return await self.send_run(run)
        except Exception as exc:
            logger.exception("publishing a run of %d message(s) on channel %s failed", len(run), run[0].channel.id)
            return [exc] * len(run)

    async def send_run(self, run: list[PendingPublish]) -> list[Receipt | BaseException]:
        """Record a run in history and hand its new messages to the layer as one event; answer each
        publish's receipt or error."""
        runtime = self._runtime
        channel = run[0].channel
        try:
            recorded = await runtime.history.append_many(channel, [publish.draft for publish in run])
        except ApplicationError as error:
            if error.code == "publish_outcome_unknown":
                runtime.fanout_repair.unknown(channel, [publish.draft.id for publish in run])
            return [error.copy() for _ in run]
        messages = [outcome for outcome in recorded if isinstance(outcome, Message)]
        refused = False
        if messages:
            try:
                await runtime.layer.group_send(channel_group(channel.id), layer_event(messages))
            except Exception:
                refused = True
                runtime.stats.incr("publish_errors", len(messages))
                logger.exception(
                    "channel layer refused messages %s to %s on channel %s", messages[0].id, messages[-1].id, channel.id
                )
                runtime.fanout_repair.refused(channel, messages)
            else:
                runtime.stats.incr("messages_published", len(messages))
                runtime.stats.incr("publish_runs")
        return [_receipt(outcome, refused) for outcome in recorded]


def _size_of(publish: PendingPublish) -> int:
    return publish.size


def _receipt(outcome, fanout_pending: bool) -> Receipt | BaseException:
    if isinstance(outcome, ApplicationError):
        return outcome
    if isinstance(outcome, Replayed):
        return Receipt(outcome.message, replayed=True)
    return Receipt(outcome, fanout_pending=fanout_pending)
