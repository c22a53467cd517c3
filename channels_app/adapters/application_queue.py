"""The input queue of one ASGI application instance, for servers that would give it an ``asyncio.Queue``.

daphne makes an ``asyncio.Queue`` per connection: three deques and an ``Event`` holding a fourth,
about 3 KB of an idle WebSocket's 25 (docs/performance-scale.md, "Where an idle daphne connection's
memory goes"). The server only calls ``put_nowait`` and the application only awaits ``get``. This
queue does that with four slots: the next message, a deque made only while a second one waits, and
the waiting readers, kept only while there are some.
"""

from __future__ import annotations

import asyncio
from collections import deque

_EMPTY = object()


class ApplicationQueue:
    """An unbounded FIFO queue with ``asyncio.Queue``'s ``put_nowait``, ``get`` and ``get_nowait``."""

    __slots__ = ("_next", "_later", "_readers")

    def __init__(self):
        self._next = _EMPTY
        self._later: deque | None = None
        self._readers: list[asyncio.Future] | None = None

    def __bool__(self) -> bool:
        # daphne tests ``if self.application_queue:`` to mean "there is one", as an asyncio.Queue always is.
        return True

    def qsize(self) -> int:
        """How many messages wait."""
        if self._next is _EMPTY:
            return 0
        return 1 + (len(self._later) if self._later is not None else 0)

    def empty(self) -> bool:
        """Whether no message waits."""
        return self._next is _EMPTY

    def put_nowait(self, item) -> None:
        """Queue ``item`` and wake the longest-waiting reader."""
        if self._next is _EMPTY:
            self._next = item
        else:
            if self._later is None:
                self._later = deque()
            self._later.append(item)
        self._wake_next_reader()

    def get_nowait(self):
        """The oldest message; ``asyncio.QueueEmpty`` if there is none."""
        item = self._next
        if item is _EMPTY:
            raise asyncio.QueueEmpty
        later = self._later
        if later:
            self._next = later.popleft()
        else:
            self._next = _EMPTY
            self._later = None
        return item

    async def get(self):
        """The oldest message, waiting for one if need be."""
        while self._next is _EMPTY:
            reader = asyncio.get_running_loop().create_future()
            if self._readers is None:
                self._readers = []
            self._readers.append(reader)
            try:
                await reader
            except BaseException:
                reader.cancel()
                self._forget_reader(reader)
                # Woken and cancelled before taking the message: the next reader takes it.
                if self._next is not _EMPTY:
                    self._wake_next_reader()
                raise
        return self.get_nowait()

    def _wake_next_reader(self) -> None:
        readers = self._readers
        while readers:
            reader = readers.pop(0)
            if not reader.done():
                reader.set_result(None)
                break
        if not readers:
            self._readers = None

    def _forget_reader(self, reader: asyncio.Future) -> None:
        readers = self._readers
        if readers is not None and reader in readers:
            readers.remove(reader)
            if not readers:
                self._readers = None
