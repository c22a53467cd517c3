"""Group commit of one channel's publishes: those that arrive while a run is on its way go together as
the next run, one history call and one layer event, because under REDIS a run costs two round trips
whatever its length; a publish to a quiet channel leaves at once, alone. Runs leave one at a time,
in offset order (docs/architecture.md, "Why the code is shaped this way").
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..channel import ChannelInfo
from ..errors import ApplicationError
from ..messages import Message, layer_event
from ..naming import channel_group
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


@dataclass(slots=True)
class PendingPublish:
    """One publish waiting for its run; its publisher awaits ``outcome``."""

    channel: ChannelInfo
    draft: Draft
    size: int
    outcome: asyncio.Future

    def succeed(self, receipt: Receipt) -> None:
        """Hand the publisher its receipt (unless it stopped waiting)."""
        if not self.outcome.done():
            self.outcome.set_result(receipt)

    def fail(self, error: BaseException) -> None:
        """Raise ``error`` in the publisher (unless it stopped waiting)."""
        if not self.outcome.done():
            self.outcome.set_exception(error)


class PublishQueue:
    """One channel's publishes waiting for their run, and the task that sends queued runs in order.

    A run holds at most ``max_messages`` publishes (a hub turn: the hub takes a run whole, so no
    turn holds more than two turns' worth of messages) and ``RUN_MAX_BYTES`` of payload; one run is
    on its way at a time.
    """

    def __init__(self, runtime: Runtime, *, max_messages: int | None = None):
        self._runtime = runtime
        self._max_messages = max(1, max_messages or runtime.hub.events_per_turn)
        self._pending: deque[PendingPublish] = deque()
        # A run is on its way: sent by its own publisher, or by the sender task draining the queue.
        self._sending = False
        self._sender: asyncio.Task | None = None

    async def submit(self, channel: ChannelInfo, draft: Draft, *, size: int) -> Receipt:
        """Send one publish, or queue it behind the run on its way; return once its run has been
        recorded and handed to the layer."""
        publish = PendingPublish(channel, draft, size, asyncio.get_running_loop().create_future())
        if self._sending:
            self._pending.append(publish)
            return await publish.outcome
        # Nothing is on its way, so nothing waits: this publish goes now, alone, in its own task.
        # (Were it handed to the sender task, every publish would wait two more turns of the loop.)
        self._sending = True
        try:
            await self.send_run([publish])
        finally:
            self._after_own_run()
        return publish.outcome.result()

    async def send_run(self, run: list[PendingPublish]) -> None:
        """Record a run in history, hand its new messages to the layer as one event, and settle each
        publish's outcome."""
        runtime = self._runtime
        channel = run[0].channel
        try:
            recorded = await runtime.history.append_many(channel, [publish.draft for publish in run])
        except ApplicationError as error:
            if error.code == "publish_outcome_unknown":
                runtime.fanout_repair.unknown(channel, [publish.draft.id for publish in run])
            for publish in run:
                publish.fail(error.copy())
            return
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
        for publish, outcome in zip(run, recorded, strict=True):
            if isinstance(outcome, ApplicationError):
                publish.fail(outcome)
            elif isinstance(outcome, Replayed):
                publish.succeed(Receipt(outcome.message, replayed=True))
            else:
                publish.succeed(Receipt(outcome, fanout_pending=refused))

    def _after_own_run(self) -> None:
        if not self._pending:
            self._sending = False
            return
        # A fresh context: a run serves several requests, so it carries none's request id.
        self._sender = asyncio.create_task(
            self._send_queued_runs(), name="realtime-publish-runs", context=contextvars.Context()
        )
        self._sender.add_done_callback(self._sender_done)

    async def _send_queued_runs(self) -> None:
        run: list[PendingPublish] = []
        try:
            while self._pending:
                run = self._next_run()
                if not run:
                    continue
                try:
                    await self.send_run(run)
                except Exception as exc:
                    logger.exception(
                        "publishing a run of %d message(s) on channel %s failed", len(run), run[0].channel.id
                    )
                    for publish in run:
                        publish.fail(exc)
        except asyncio.CancelledError:
            self._abandon(run)
            raise
        finally:
            self._sender = None
            self._sending = False

    def _sender_done(self, sender: asyncio.Task) -> None:
        if self._sender is sender:
            # Cancelled before it ran a line, so its own clean-up never ran either.
            self._abandon([])

    def _abandon(self, run: list[PendingPublish]) -> None:
        # The event loop is closing: nobody will send what is left, so nobody may wait for it.
        for publish in (*run, *self._pending):
            publish.outcome.cancel()
        self._pending.clear()
        self._sender = None
        self._sending = False

    def _next_run(self) -> list[PendingPublish]:
        run: list[PendingPublish] = []
        size = 0
        while self._pending and len(run) < self._max_messages:
            publish = self._pending[0]
            if run and size + publish.size > RUN_MAX_BYTES:
                break
            self._pending.popleft()
            if publish.outcome.done():
                continue  # its publisher stopped waiting before the run left: it is not sent
            run.append(publish)
            size += publish.size
        return run
