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


def _pending_timers(loop) -> int:
    return sum(1 for handle in loop._scheduled if not handle.cancelled())


async def test_items_that_reschedule_themselves_keep_one_timer():
    loop = asyncio.get_running_loop()
    wheel: TimingWheel

    def again(item):
        wheel.schedule(item, 0.01)

    wheel = TimingWheel(again, tick=0.01)
    for name in "abc":
        wheel.schedule(Item(name), 0.01)
    await asyncio.sleep(0.05)
    before = _pending_timers(loop)
    await asyncio.sleep(0.5)
    # Fifty ticks later: still the one timer (a leaked timer per tick would have added about fifty).
    assert _pending_timers(loop) <= max(before, 1), (before, _pending_timers(loop))


async def test_an_earlier_time_moves_the_timer_earlier():
    loop = asyncio.get_running_loop()
    due: dict[str, float] = {}
    started = loop.time()
    wheel = TimingWheel(lambda item: due.setdefault(item.name, loop.time() - started), tick=0.05)
    wheel.schedule(Item("late"), 5.0)
    wheel.schedule(Item("soon"), 0.1)
    await asyncio.sleep(0.3)
    assert "soon" in due and due["soon"] <= 0.2, due
    assert "late" not in due
