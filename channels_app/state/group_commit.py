"""Group commit of Redis calls: those made while one is on its way go together as the next, in one
pipeline, because on a shared machine a round trip's cost is mostly its write and its wake-up, not
its length. A call made while nothing is on its way leaves at once, alone, so a quiet service adds no
latency (docs/architecture.md, "Why the code is shaped this way").
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

# Sends a batch; answers each item's result or the exception that item raises, in order. An
# exception it raises itself is raised in every caller of the batch.
SendBatch = Callable[[list[Item]], Awaitable[list["Result | BaseException"]]]


class GroupCommit(Generic[Item, Result]):
    """Calls waiting for one connection's next batch, and the task that sends queued batches in order."""

    def __init__(
        self,
        send_batch: SendBatch,
        *,
        name: str,
        max_items: int = 64,
        weigh: Callable[[Item], int] | None = None,
        max_weight: int = 0,
    ):
        """``send_batch`` sends up to ``max_items`` items as one batch, and with ``weigh``, items
        weighing ``max_weight`` at most (one item always goes, whatever it weighs); ``name`` names
        the sender task."""
        self._send_batch = send_batch
        self._name = name
        self._max_items = max(1, max_items)
        self._weigh = weigh
        self._max_weight = max_weight
        self._waiting: deque[tuple[Item, asyncio.Future]] = deque()
        # A batch is on its way: sent by its own caller, or by the sender task draining the queue.
        self._sending = False
        self._sender: asyncio.Task | None = None

    async def call(self, item: Item) -> Result:
        """Send ``item`` now, or with the next batch while one is on its way; return its result."""
        if self._sending:
            future = asyncio.get_running_loop().create_future()
            self._waiting.append((item, future))
            return await future
        self._sending = True
        try:
            (outcome,) = await self._send_batch([item])
        finally:
            self._after_own_batch()
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def _after_own_batch(self) -> None:
        if not self._waiting:
            self._sending = False
            return
        # A fresh context: a batch serves several callers, so it carries none's request id.
        self._sender = asyncio.create_task(self._send_waiting(), name=self._name, context=contextvars.Context())
        self._sender.add_done_callback(self._sender_done)

    async def _send_waiting(self) -> None:
        batch: list[tuple[Item, asyncio.Future]] = []
        try:
            while self._waiting:
                batch = self._next_batch()
                if not batch:
                    continue
                try:
                    outcomes = await self._send_batch([item for item, _ in batch])
                except Exception as exc:
                    outcomes = [exc] * len(batch)
                for (_, future), outcome in zip(batch, outcomes, strict=True):
                    if future.done():
                        continue
                    if isinstance(outcome, BaseException):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
        except asyncio.CancelledError:
            self._abandon(batch)
            raise
        finally:
            self._sender = None
            self._sending = False

    def _next_batch(self) -> list[tuple[Item, asyncio.Future]]:
        batch = []
        weight = 0
        while self._waiting and len(batch) < self._max_items:
            item, future = self._waiting[0]
            item_weight = 0 if self._weigh is None else self._weigh(item)
            if batch and self._weigh is not None and weight + item_weight > self._max_weight:
                break
            self._waiting.popleft()
            if future.done():
                continue  # its caller stopped waiting before the batch left: it is not sent
            batch.append((item, future))
            weight += item_weight
        return batch

    def _sender_done(self, sender: asyncio.Task) -> None:
        if self._sender is sender:
            # Cancelled before it ran a line, so its own clean-up never ran either.
            self._abandon()
            self._sender = None
            self._sending = False

    def _abandon(self, batch: Sequence[tuple[Item, asyncio.Future]] = ()) -> None:
        # The event loop is closing: nobody will send what is left, so nobody may wait for it.
        for _, future in (*batch, *self._waiting):
            future.cancel()
        self._waiting.clear()
