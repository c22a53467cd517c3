"""ops/gctuning.py: the thresholds setting, and the collection of the young generations once a burst
of subscriptions settles (in this process: the collector is the unit under test)."""

from __future__ import annotations

import asyncio
import gc

import pytest

from channels_app.ops import gctuning


@pytest.fixture
def collector(monkeypatch):
    """A fresh, tuned collection schedule, and a record of the collections the collector runs."""
    monkeypatch.setattr(gctuning, "_collector", gctuning._Collector())
    gctuning._collector.tuned = True
    monkeypatch.setattr(gctuning, "SETTLE_SECONDS", 0.2)
    collections: list[int] = []

    def record(phase, info):
        if phase == "start":
            collections.append(info["generation"])

    gc.callbacks.append(record)
    yield collections
    gc.callbacks.remove(record)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, gctuning.DEFAULT_THRESHOLDS),
        ("", gctuning.DEFAULT_THRESHOLDS),
        ("off", None),
        ("700,10", (700, 10)),
        ("fast", gctuning.DEFAULT_THRESHOLDS),
        ("1,2,3,4", gctuning.DEFAULT_THRESHOLDS),
        ("0,10", gctuning.DEFAULT_THRESHOLDS),
    ],
)
def test_thresholds_from_the_environment(text, expected):
    assert gctuning.thresholds_from(text) == expected


def test_a_settled_burst_moves_its_objects_to_the_oldest_generation(collector):
    async def burst() -> None:
        kept = [{"connection": n} for n in range(20_000)]
        for _ in range(gctuning.SETTLE_AFTER_OPENED):
            gctuning.connection_opened()
        collector.clear()
        await asyncio.sleep(gctuning.SETTLE_SECONDS * 2)
        assert kept
        assert 1 in collector

    asyncio.run(burst())
    assert gctuning._collector.settled == 1
    assert gctuning._collector.opened == 0


def test_no_collection_while_subscriptions_keep_coming(collector):
    async def steady() -> None:
        for _ in range(gctuning.SETTLE_AFTER_OPENED):
            gctuning.connection_opened()
        for _ in range(6):
            await asyncio.sleep(gctuning.SETTLE_SECONDS / 3)
            gctuning.connection_opened()
        assert gctuning._collector.settled == 0
        await asyncio.sleep(gctuning.SETTLE_SECONDS * 2)

    asyncio.run(steady())
    assert gctuning._collector.settled == 1


def test_a_small_burst_is_left_to_the_collector(collector):
    async def small() -> None:
        for _ in range(gctuning.SETTLE_AFTER_OPENED - 1):
            gctuning.connection_opened()
        await asyncio.sleep(gctuning.SETTLE_SECONDS * 2)

    asyncio.run(small())
    assert gctuning._collector.settled == 0


def test_untuned_processes_are_left_alone(collector):
    gctuning._collector.tuned = False

    async def burst() -> None:
        for _ in range(gctuning.SETTLE_AFTER_OPENED):
            gctuning.connection_opened()
        await asyncio.sleep(gctuning.SETTLE_SECONDS * 2)

    asyncio.run(burst())
    assert gctuning._collector.settled == 0
    assert gctuning._collector.settling is None


def test_closes_are_collected_every_500_while_few_are_open(collector):
    async def churn() -> None:
        for _ in range(100):
            gctuning.connection_opened()
        collector.clear()
        for _ in range(gctuning.COLLECT_EVERY_CLOSED - 1):
            gctuning.request_finished()
        assert 2 not in collector
        gctuning.connection_closed()
        assert 2 in collector

    asyncio.run(churn())
    assert gctuning._collector.live == 99


def test_with_many_open_a_full_collection_waits_for_a_quarter_of_them_to_close(collector, monkeypatch):
    full_collections = []
    real_collect = gc.collect

    def counted_collect(generation=2):
        if generation == 2:
            full_collections.append(gctuning._collector.live)
        return real_collect(generation)

    monkeypatch.setattr(gctuning.gc, "collect", counted_collect)

    async def mass_disconnect() -> None:
        for _ in range(20_000):
            gctuning.connection_opened()
        for _ in range(20_000):
            gctuning.connection_closed()
        # The first waits for 4,000 closes (a quarter of the 16,000 then still open), each next for a
        # quarter of fewer, down to 500: 14 in all, where one per 500 would have made 40.
        assert full_collections[0] == 16_000
        assert len(full_collections) <= 15, full_collections

    asyncio.run(mass_disconnect())
    assert gctuning._collector.live == 0
