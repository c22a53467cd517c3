"""core/timewheel.py: items come due never early and at most a tick late, once, and not after a cancel."""

from __future__ import annotations

import asyncio

from channels_app.core.timewheel import TimingWheel


class Item:
    wheel_slot = None

    def __init__(self, name: str):
        self.name = name


async def test_items_come_due_in_time_once_and_not_after_a_cancel():
    loop = asyncio.get_running_loop()
    started = loop.time()
    due: dict[str, float] = {}
    wheel = TimingWheel(lambda item: due.setdefault(item.name, loop.time() - started), tick=0.05)
    early, late, cancelled, moved = Item("early"), Item("late"), Item("cancelled"), Item("moved")
    wheel.schedule(early, 0.1)
    wheel.schedule(late, 0.3)
    wheel.schedule(cancelled, 0.1)
    wheel.schedule(moved, 0.1)
    wheel.cancel(cancelled)
    wheel.schedule(moved, 0.25)  # a new time replaces the old one
    await asyncio.sleep(0.5)
    assert set(due) == {"early", "late", "moved"}
    for name, delay in (("early", 0.1), ("late", 0.3), ("moved", 0.25)):
        assert delay <= due[name] <= delay + 0.05 + 0.05, (name, due[name])
    assert len(wheel) == 0 and early.wheel_slot is None


async def test_an_item_can_schedule_itself_again_and_a_failing_call_does_not_stop_the_others():
    loop = asyncio.get_running_loop()
    calls: list[str] = []

    def on_due(item):
        calls.append(item.name)
        if item.name == "bad":
            raise RuntimeError("boom")
        if calls.count(item.name) < 3:
            wheel.schedule(item, 0.05)

    wheel = TimingWheel(on_due, tick=0.02)
    wheel.schedule(Item("bad"), 0.05)
    wheel.schedule(Item("again"), 0.05)
    started = loop.time()
    while calls.count("again") < 3:
        assert loop.time() - started < 2
        await asyncio.sleep(0.02)
    assert calls.count("bad") == 1


async def test_an_item_scheduled_again_at_once_from_its_call_still_comes_due():
    calls: list[float] = []
    loop = asyncio.get_running_loop()

    def on_due(item):
        calls.append(loop.time())
        if len(calls) < 3:
            wheel.schedule(item, 0.0)

    wheel = TimingWheel(on_due, tick=0.02)
    wheel.schedule(Item("zero"), 0.0)
    started = loop.time()
    while len(calls) < 3:
        assert loop.time() - started < 1, calls
        await asyncio.sleep(0.01)
