"""A bounded per-connection queue of outgoing frames, written by a task that runs while it holds any.

The hub never waits on a client: it puts an already encoded frame here and moves on. A client that
cannot keep up overflows its bound and is disconnected (4408) and can resume from history, so a slow
client neither slows the others nor grows the server's memory. A replay larger than the bound is
queued in pages (``request_page``), each once the server has drained its write buffer (``wait_drained``).
A multiplexed connection shares one outbox between its channels' subscriptions, so several replays
may wait for a page at once; they take turns.
The layout keeps the memory per connection small (docs/architecture.md, "Why the code is shaped this way").
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)

# Written frames are dropped from the front of the lists once this many have piled up, so a
# connection that never quite drains does not keep them all.
COMPACT_AFTER = 256


class Outbox:
    """Frames waiting for one connection; once ``start``ed, a writer task sends them in order."""

    __slots__ = (
        "_buffered_bytes",
        "_frames",
        "_head",
        "_loop",
        "_max_bytes",
        "_max_messages",
        "_on_overflow",
        "_pages",
        "_queued_bytes",
        "_sizes",
        "_wait_drained",
        "_write",
        "overflowed",
        "writer",
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
        # Set by ``start``: from then on queued frames are written.
        self._loop: asyncio.AbstractEventLoop | None = None
        # The task writing queued frames, while there are any.
        self.writer: asyncio.Task | None = None
        self.overflowed = False
        # Replays waiting to queue their next page, in turn (``request_page``); made on first use:
        # an empty deque is 760 bytes, about 3% of an idle connection (docs/performance-scale.md).
        self._pages: deque[Callable[[], None]] | None = None

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
        if self.writer is None and self._loop is not None:
            self._start_writer()
        return True

    def start(self) -> None:
        """Start writing (once the connection is open): what is queued now, and whatever comes."""
        self._loop = asyncio.get_running_loop()
        if self.writer is None and (not self.is_empty() or self._pages):
            self._start_writer()

    def _start_writer(self) -> None:
        self.writer = self._loop.create_task(self._write_queued())

    async def stop(self) -> None:
        """Stop writing (the connection is closing): no new writer, and a running one is cancelled.

        Frames still queued stay; ``flush`` writes them.
        """
        self._loop = None
        writer = self.writer
        if writer is not None and writer is not asyncio.current_task():
            writer.cancel()
            # wait() rather than awaiting the task: a cancellation of the caller still propagates.
            await asyncio.wait([writer])
            if self.writer is writer:  # cancelled before it ever ran, so its ``finally`` did not
                self.writer = None

    async def _write_queued(self) -> None:
        try:
            # After an overflow ``flush`` writes nothing and returns at once: looping on would spin
            # without ever yielding, freezing the event loop for every connection.
            while not self.overflowed:
                if self._head < len(self._frames):
                    await self.flush()
                elif self._pages:
                    await self._next_page()
                else:
                    return
        except OSError:
            # The connection is gone (uvicorn's ClientDisconnected); its consumer is told so and
            # releases it.
            logger.debug("stopped writing to a connection that went away")
        finally:
            self.writer = None

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

    def request_page(self, queue_page: Callable[[], None]) -> None:
        """Call ``queue_page`` once what is queued now has drained (a paced replay's next page)."""
        if self._pages is None:
            self._pages = deque()
        self._pages.append(queue_page)
        if self.writer is None and self._loop is not None:
            self._start_writer()

    def cancel_pages(self, queue_page: Callable[[], None]) -> None:
        """Forget the pages ``queue_page`` asked for (its subscription ended mid-replay)."""
        if self._pages and queue_page in self._pages:
            self._pages = deque(page for page in self._pages if page != queue_page)

    @property
    def paging(self) -> bool:
        """Whether a replay still waits to queue a page."""
        return bool(self._pages)

    async def _next_page(self) -> None:
        if self._wait_drained is not None:
            # A client that never reads leaves the writer here; the connection ends it (4408 when
            # its held live messages overflow, or daphne's ping timeout).
            await self._wait_drained()
        if self._pages and not self.overflowed:
            self._pages.popleft()()

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
