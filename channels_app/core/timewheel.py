"""One timer for many connections' periodic work: SSE keep-alives, uvicorn's WebSocket pings.

A timer per connection costs asyncio a ``TimerHandle`` pushed onto a heap whose comparisons are
Python calls, and, spread over time, wakes the event loop (one ``epoll_wait``) for every single ping,
keep-alive and pong: waking was the largest share of an idle uvicorn's CPU (docs/performance-scale.md,
"Idle CPU"). A wheel keeps each item in a set for its tick and runs one timer per tick while it holds
any, so a tick's writes, and their answers, come in one batch.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable

logger = logging.getLogger(__name__)


class TimingWheel:
    """Calls ``on_due(item)`` once an item's time has come: never early, at most one ``tick`` late.

    Items carry their slot's set in a ``wheel_slot`` attribute (None when not scheduled), so that
    cancelling one costs no search, and no int object is kept per item.
    """

    def __init__(self, on_due: Callable[[object], None], *, tick: float = 1.0):
        self.on_due = on_due
        self.tick = tick
        self.slots: dict[int, set] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        # The one timer, and the slot it is set for: always the earliest slot scheduled.
        self._timer: asyncio.TimerHandle | None = None
        self._timer_slot = 0
        self._checked = 0

    def schedule(self, item, delay: float) -> None:
        """Have ``on_due(item)`` called ``delay`` seconds from now, instead of any time set before."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # A new event loop (tests run one per test): what was scheduled on the old one is gone with it.
            self.slots.clear()
            self._loop, self._timer = loop, None
            self._checked = math.floor(loop.time() / self.tick)
        self.cancel(item)
        slot = max(math.ceil((loop.time() + delay) / self.tick), self._checked + 1)
        members = self.slots.get(slot)
        if members is None:
            members = self.slots[slot] = set()
        members.add(item)
        item.wheel_slot = members
        if self._timer is None or slot < self._timer_slot:
            self._arm(slot)

    def cancel(self, item) -> None:
        """Forget ``item``'s time, if it has one (an emptied set goes when its slot comes)."""
        members = item.wheel_slot
        if members is not None:
            item.wheel_slot = None
            members.discard(item)

    def __len__(self) -> int:
        return sum(len(members) for members in self.slots.values())

    def _run(self) -> None:
        loop = self._loop
        self._timer = None
        now_slot = math.floor(loop.time() / self.tick)
        due_slots = range(self._checked + 1, now_slot + 1)
        # Before the calls: an item they schedule again goes to a later slot, never to one popped here.
        self._checked = max(self._checked, now_slot)
        for slot in due_slots:
            members = self.slots.pop(slot, None)
            if not members:
                continue
            for item in members:
                item.wheel_slot = None
                try:
                    self.on_due(item)
                except Exception:
                    logger.exception("a timed call for %r failed", item)
        if self.slots:
            # A few dozen slots at most (the longest interval over the tick): min() is cheap.
            earliest = min(self.slots)
            if self._timer is None or earliest != self._timer_slot:
                self._arm(earliest)

    def _arm(self, slot: int) -> None:
        """Set the one timer for ``slot``, replacing the one set before."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer_slot = slot
        self._timer = self._loop.call_at(slot * self.tick, self._run)
