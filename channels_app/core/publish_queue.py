"""Group commit of one channel's publishes.

A channel's publishes leave a process one run at a time, in offset order (see
``services.message_publish``). Under the REDIS driver a run costs two round trips, one to record
it in history and one to hand it to the layer, whether it holds one message or sixteen. Sent one
by one, a channel's publishes could go no faster than those round trips allowed, and every message
reached every hub alone, so hubs fanned out one message per turn. Here the publishes that arrive
while a run is on its way wait, and go together as the next run. Nothing waits for company: a
publish to a quiet channel leaves at once, alone.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..channel import ChannelInfo
from ..messages import Message
from ..state.history import Draft

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

    ``send_run`` records and fans out a run and settles each publish's outcome; the queue only
    forms runs (at most ``max_messages`` publishes and ``RUN_MAX_BYTES`` of payload) and keeps one
    run on its way at a time.
    """

    def __init__(self, send_run: Callable[[list[PendingPublish]], Awaitable[None]], *, max_messages: int):
        self._send_run = send_run
        self._max_messages = max(1, max_messages)
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
            await self._send_run([publish])
        finally:
            self._after_own_run()
        return publish.outcome.result()

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
                    await self._send_run(run)
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
