"""Work a draining instance waits for before it exits (accepted pushes, frames being published)."""

from __future__ import annotations

import asyncio


class InFlight:
    """Counts requests that must finish before the process exits."""

    def __init__(self):
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def __enter__(self):
        self.count += 1
        self._idle.clear()
        return self

    def __exit__(self, *exc_info):
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no request is in flight."""
        await self._idle.wait()
