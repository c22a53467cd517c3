"""A bounded per-connection queue of outgoing frames, drained by one writer task.

The hub never waits on a client: it puts an already encoded frame here and moves on. A client
that cannot keep up overflows its bound and is disconnected (code 4408); it can resume from
history. So a slow client neither slows the others nor grows the server's memory without bound.

A resume's replay may be larger than the bound. It is not queued at once but in pages (see
``Subscription.replay``): while a ``refill`` is set, the writer asks for the next page each time
the queue is empty, after ``wait_drained`` (returns once the server has drained its write buffer;
None where ``send`` itself waits for the socket). Nothing is polled: the server wakes the writer.

Memory and GC: one exists per connection and ``put`` runs once per delivery, so frames and their
sizes sit in two plain lists read from a head index (no tuple, no ``deque`` block and no
``asyncio.Event`` per connection), and the class has ``__slots__``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)

# Written frames are dropped from the front of the lists once this many have piled up, so a
# connection that never quite drains does not keep them all.
COMPACT_AFTER = 256


class Outbox:
    """Frames waiting for one connection; ``run()`` writes them in order."""

    __slots__ = (
        "_buffered_bytes",
        "_frames",
        "_head",
        "_max_bytes",
        "_max_messages",
        "_on_overflow",
        "_queued_bytes",
        "_sizes",
        "_wait_drained",
        "_waiter",
        "_write",
        "overflowed",
        "refill",
    )

    def __init__(
        self,
        *,
        write: Callable[[object], Awaitable[None]],
        max_messages: int,
        max_bytes: int,
        on_overflow: Callable[[], None],
        buffered_bytes: Callable[[], int],
        wait_drained: Callable[[], Awaitable[None]] | None = None,
    ):
        self._write = write
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._on_overflow = on_overflow
        self._buffered_bytes = buffered_bytes
        self._wait_drained = wait_drained
        self._frames: list = []
        self._sizes: list[int] = []
        self._head = 0  # frames before this index are written
        self._queued_bytes = 0
        self._waiter: asyncio.Future | None = None
        self.overflowed = False
        # Set while a replay is paced: queues the next page and clears itself after the last one.
        self.refill: Callable[[], None] | None = None

    def put(self, frame, size: int) -> bool:
        """Queue a frame of ``size`` bytes; on overflow mark the connection slow and return False."""
        if self.overflowed:
            return False
        if (
            len(self._frames) - self._head >= self._max_messages
            or self._queued_bytes + size + self._buffered_bytes() > self._max_bytes
        ):
            self.overflowed = True
            self._on_overflow()
            return False
        self._frames.append(frame)
        self._sizes.append(size)
        self._queued_bytes += size
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
        return True

    async def run(self) -> None:
        """Write queued frames until cancelled or the connection overflows."""
        loop = asyncio.get_running_loop()
        # After an overflow ``flush`` writes nothing and returns at once: looping on would spin
        # without ever yielding, freezing the event loop for every connection.
        while not self.overflowed:
            if self._head >= len(self._frames):
                if self.refill is not None:
                    await self._next_page()
                    continue
                waiter = self._waiter = loop.create_future()
                try:
                    await waiter
                finally:
                    if self._waiter is waiter:
                        self._waiter = None
            await self.flush()

    @property
    def max_messages(self) -> int:
        """The bound on queued frames."""
        return self._max_messages

    @property
    def max_bytes(self) -> int:
        """The bound on queued bytes, counting what the server still buffers."""
        return self._max_bytes

    def has_room(self, size: int) -> bool:
        """Whether a page being queued may take ``size`` more bytes: pages fill half the bound, so
        control frames and the last page's overshoot still fit."""
        return (
            len(self._frames) - self._head < self._max_messages // 2
            and self._queued_bytes + size + self._buffered_bytes() <= self._max_bytes // 2
        )

    def is_empty(self) -> bool:
        """Whether every queued frame has been handed to the server."""
        return self._head >= len(self._frames)

    def overflow(self) -> None:
        """Mark the connection slow (once), as ``put`` does when the bound is exceeded."""
        if not self.overflowed:
            self.overflowed = True
            self._on_overflow()

    async def _next_page(self) -> None:
        if self._wait_drained is not None:
            # A client that never reads leaves the writer here; the connection ends it (4408 when
            # its held live messages overflow, or daphne's ping timeout).
            await self._wait_drained()
        refill = self.refill
        if refill is not None and not self.overflowed:
            refill()

    async def flush(self) -> None:
        """Write every queued frame now, unless the connection overflowed (its frames are dropped)."""
        frames, sizes = self._frames, self._sizes
        while self._head < len(frames) and not self.overflowed:
            head = self._head
            frame = frames[head]
            frames[head] = None  # written frames are not kept alive until the next compaction
            self._head = head + 1
            self._queued_bytes -= sizes[head]
            if self._head >= len(frames):
                frames.clear()
                sizes.clear()
                self._head = 0
            elif self._head >= COMPACT_AFTER:
                del frames[: self._head]
                del sizes[: self._head]
                self._head = 0
            await self._write(frame)
