"""A bounded per-connection queue of outgoing frames, drained by one writer task.

The hub never waits on a client: it puts an already encoded frame here and moves on. A client
that cannot keep up overflows its bound and is disconnected (code 4408); it can resume from
history. So a slow client neither slows the others nor grows the server's memory without bound.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)


class Outbox:
    """Frames waiting for one connection; ``run()`` writes them in order."""

    def __init__(
        self,
        *,
        write: Callable[[object], Awaitable[None]],
        max_messages: int,
        max_bytes: int,
        on_overflow: Callable[[], None],
        buffered_bytes: Callable[[], int],
    ):
        self._write = write
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._on_overflow = on_overflow
        self._buffered_bytes = buffered_bytes
        self._frames: deque = deque()
        self._queued_bytes = 0
        self._wakeup = asyncio.Event()
        self.overflowed = False

    def put(self, frame, size: int) -> bool:
        """Queue a frame of ``size`` bytes; on overflow mark the connection slow and return False."""
        if self.overflowed:
            return False
        if (
            len(self._frames) >= self._max_messages
            or self._queued_bytes + size + self._buffered_bytes() > self._max_bytes
        ):
            self.overflowed = True
            self._on_overflow()
            return False
        self._frames.append((frame, size))
        self._queued_bytes += size
        self._wakeup.set()
        return True

    async def run(self) -> None:
        """Write queued frames until cancelled."""
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            await self.flush()

    async def flush(self) -> None:
        """Write every queued frame now, unless the connection overflowed (its frames are dropped)."""
        frames = self._frames
        while frames and not self.overflowed:
            frame, size = frames.popleft()
            self._queued_bytes -= size
            await self._write(frame)
