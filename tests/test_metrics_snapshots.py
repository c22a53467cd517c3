"""Metrics snapshots of the server processes of an instance: taken, written atomically, read back, summed."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time

import pytest
from channels.layers import InMemoryChannelLayer

from channels_app import counters
from channels_app.channel import ChannelInfo
from channels_app.ops import metrics_snapshots
from channels_app.ops.metrics_snapshots import (
    STALE_SECONDS,
    ChannelConnections,
    MetricsSnapshot,
    SnapshotWriter,
    snapshot_path,
    snapshot_take,
    snapshot_write,
    snapshots_read,
    snapshots_sum,
)
from channels_app.stats import LATENCY_BUCKETS
from tests.conftest import memory_runtime
from tests.support.fakes import FakeConnection

ROOM = ChannelInfo(id="room-1", name="room", type="WS", max_connections=100, history_size=100, history_ttl=3600)
BUCKETS = len(LATENCY_BUCKETS) + 1


class Registry:
    """Knows ROOM only, as the registry cache would once it has subscribers."""

    async def resolve(self, reference: str) -> ChannelInfo:
        return ROOM

    async def find(self, references) -> dict[str, ChannelInfo]:
        return {reference: ROOM for reference in references if reference == ROOM.id}


def snapshot(*, pid: int, counters=None, channels=(), buckets=None, latency_sum=0.0, **fields) -> MetricsSnapshot:
    """A snapshot of process ``pid`` with the given figures (none by default)."""
    return MetricsSnapshot(
        counters=counters or {},
        latency_buckets=buckets or [0] * BUCKETS,
        latency_sum=latency_sum,
        latency_count=sum(buckets or []),
        channels=list(channels),
        pid=pid,
        **fields,
    )


def test_a_snapshot_reads_back_as_written():
    written = snapshot(
        pid=41,
        counters={counters.DELIVERIES: 7, f"{counters.REFUSALS}origin": 2},
        buckets=[1] + [0] * (BUCKETS - 2) + [3],
        latency_sum=12.5,
        channels=[
            ChannelConnections("room-1", "room", 100, {"WS": 2, "SSE": 1}),
            ChannelConnections("x", None, None, {"WS": 1}),
        ],
        written_at=1234.5,
    )
    assert MetricsSnapshot.from_json(written.as_json()) == written


@pytest.mark.parametrize(
    "text",
    [
        '{"pid": 1',
        "[]",
        '{"pid": 1, "written_at": 1}',
        json.dumps({**json.loads(snapshot(pid=1).as_json()), "latency": {"buckets": [1], "sum": 0, "count": 1}}),
    ],
)
def test_what_is_not_a_snapshot_is_refused(text):
    with pytest.raises(ValueError):
        MetricsSnapshot.from_json(text)


def test_sums_add_counters_buckets_and_connections_per_channel_and_transport():
    first = snapshot(
        pid=1,
        counters={counters.MESSAGES_PUBLISHED: 3, counters.DELIVERIES: 10, f"{counters.REFUSALS}origin": 1},
        buckets=[2] + [0] * (BUCKETS - 1),
        latency_sum=0.002,
        channels=[ChannelConnections("a", "alpha", 5, {"WS": 4}), ChannelConnections("b", None, None, {"WS": 1})],
    )
    second = snapshot(
        pid=2,
        counters={counters.DELIVERIES: 5, f"{counters.REFUSALS}origin": 2, f"{counters.REFUSALS}full": 1},
        buckets=[1] + [0] * (BUCKETS - 2) + [1],
        latency_sum=20.0,
        channels=[
            ChannelConnections("b", "beta", 9, {"WS": 2, "SSE": 3}),
            ChannelConnections("a", "alpha", 5, {"SSE": 1}),
        ],
    )
    total = snapshots_sum([first, second], stale=1)
    assert total.counters == {
        counters.MESSAGES_PUBLISHED: 3,
        counters.DELIVERIES: 15,
        f"{counters.REFUSALS}origin": 3,
        f"{counters.REFUSALS}full": 1,
    }
    assert total.latency_buckets == [3] + [0] * (BUCKETS - 2) + [1]
    assert total.latency_sum == pytest.approx(20.002) and total.latency_count == 4
    # b is the busiest of the instance (6 against 5) though a was the busiest of the first process;
    # b's name and limit come from the process that knew them.
    assert total.channels == [
        ChannelConnections("b", "beta", 9, {"WS": 3, "SSE": 3}),
        ChannelConnections("a", "alpha", 5, {"WS": 4, "SSE": 1}),
    ]
    assert (total.processes, total.stale) == (2, 1)


def test_the_sum_of_one_snapshot_is_that_snapshot():
    only = snapshot(pid=1, counters={counters.DELIVERIES: 1}, channels=[ChannelConnections("a", "alpha", 5, {"WS": 1})])
    total = snapshots_sum([only])
    assert (total.counters, total.channels, total.processes) == (only.counters, only.channels, 1)


def test_writes_replace_the_file_at_once_and_leave_no_temporary_file(tmp_path):
    snapshot_write(tmp_path, snapshot(pid=7, counters={counters.DELIVERIES: 1}))
    snapshot_write(tmp_path, snapshot(pid=7, counters={counters.DELIVERIES: 2}))
    assert [path.name for path in tmp_path.iterdir()] == ["7.json"]
    assert MetricsSnapshot.from_json(snapshot_path(tmp_path, 7).read_text()).counters == {counters.DELIVERIES: 2}


def test_reading_skips_its_own_stale_and_unreadable_snapshots(tmp_path, caplog):
    now = time.time()
    for pid, age in ((1, 0.5), (2, 2.0), (3, STALE_SECONDS + 1), (4, 0.0)):
        snapshot_write(tmp_path, snapshot(pid=pid, written_at=now - age))
    (tmp_path / "5.json").write_text('{"pid": 5, "count')  # not ours to write this way: cut short
    (tmp_path / ".6.abc.tmp").write_text("{}")  # a write in progress
    with caplog.at_level(logging.WARNING, logger=metrics_snapshots.__name__):
        fresh, stale = snapshots_read(tmp_path, now=now, exclude=4)
    assert sorted(s.pid for s in fresh) == [1, 2]
    assert stale == 1
    assert "skipping the snapshot 5.json" in caplog.text


def test_reading_an_empty_or_vanished_folder_finds_nothing(tmp_path):
    assert snapshots_read(tmp_path, now=time.time()) == ([], 0)
    assert snapshots_read(tmp_path / "gone", now=time.time()) == ([], 0)


async def test_a_process_snapshot_holds_its_counters_latency_and_connections():
    runtime = memory_runtime(layer=InMemoryChannelLayer(), registry=Registry())
    readers = [FakeConnection(channel_id=ROOM.id, client_id=f"r{index}").start() for index in range(3)]
    try:
        for reader in readers:
            await runtime.hub.subscribe(reader.subscription)
        runtime.stats.incr(counters.MESSAGES_PUBLISHED, 4)
        runtime.stats.observe_latency(0.003)
        taken = await snapshot_take(runtime=runtime, keep=10)
    finally:
        await runtime.hub.stop()
    assert taken.counters == {counters.MESSAGES_PUBLISHED: 4}
    assert taken.latency_count == 1 and sum(taken.latency_buckets) == 1 and taken.latency_sum == 0.003
    assert taken.channels == [ChannelConnections(ROOM.id, ROOM.name, ROOM.max_connections, {"WS": 3})]
    assert taken.pid == os.getpid()


async def test_the_writer_starts_with_the_hub_and_keeps_the_snapshot_fresh(tmp_path, monkeypatch):
    monkeypatch.setattr(metrics_snapshots, "WRITE_INTERVAL_SECONDS", 0.05)
    runtime = memory_runtime(layer=InMemoryChannelLayer(), registry=Registry())
    runtime.metrics_snapshots = SnapshotWriter(runtime, directory=tmp_path, labelled=100)
    path = snapshot_path(tmp_path, os.getpid())
    reader = FakeConnection(channel_id=ROOM.id).start()
    try:
        await runtime.hub.subscribe(reader.subscription)
        runtime.stats.incr(counters.DELIVERIES, 2)
        deadline = time.monotonic() + 5
        while not (path.exists() and MetricsSnapshot.from_json(path.read_text()).counters):
            assert time.monotonic() < deadline, "no snapshot written"
            await asyncio.sleep(0.02)
        first = MetricsSnapshot.from_json(path.read_text())
        assert first.counters == {counters.DELIVERIES: 2} and first.channels[0].connections == {"WS": 1}
        await asyncio.sleep(0.2)
        assert MetricsSnapshot.from_json(path.read_text()).written_at > first.written_at
    finally:
        await runtime.hub.stop()
    assert runtime.metrics_snapshots._task is None


async def test_the_instance_sums_this_process_and_the_others(tmp_path):
    runtime = memory_runtime(layer=InMemoryChannelLayer(), registry=Registry())
    writer = SnapshotWriter(runtime, directory=tmp_path, labelled=100)
    runtime.stats.incr(counters.DELIVERIES, 1)
    snapshot_write(tmp_path, snapshot(pid=os.getpid() + 1, counters={counters.DELIVERIES: 10}))
    snapshot_write(tmp_path, snapshot(pid=os.getpid() + 2, counters={counters.DELIVERIES: 100}, written_at=0.0))
    try:
        total = await writer.instance()
    finally:
        await writer.stop()
    assert total.counters == {counters.DELIVERIES: 11}
    assert (total.processes, total.stale) == (2, 1)
    assert snapshot_path(tmp_path, os.getpid()).exists()


async def test_a_write_that_fails_is_logged_and_the_scrape_goes_on(tmp_path, caplog):
    runtime = memory_runtime(layer=InMemoryChannelLayer(), registry=Registry())
    runtime.stats.incr(counters.DELIVERIES, 1)
    writer = SnapshotWriter(runtime, directory=tmp_path / "removed", labelled=100)
    try:
        with caplog.at_level(logging.WARNING, logger=metrics_snapshots.__name__):
            total = await writer.instance()
    finally:
        await writer.stop()
    assert total.counters == {counters.DELIVERIES: 1} and total.processes == 1
    assert "could not write this process's snapshot" in caplog.text


async def test_a_snapshot_names_the_busiest_channels_and_sums_the_rest():
    runtime = memory_runtime(layer=InMemoryChannelLayer(), registry=Registry())
    readers = [FakeConnection(channel_id=ROOM.id, client_id=f"r{index}").start() for index in range(3)]
    readers += [FakeConnection(channel_id=f"quiet-{index}", client_id="q").start() for index in range(5)]
    try:
        for reader in readers:
            await runtime.hub.subscribe(reader.subscription)
        taken = await snapshot_take(runtime=runtime, keep=2)
    finally:
        await runtime.hub.stop()
    assert [channel.id for channel in taken.channels] == [ROOM.id, "quiet-0"]
    assert taken.other_connections == {"WS": 4}
    back = MetricsSnapshot.from_json(taken.as_json())
    assert back.other_connections == {"WS": 4}
    summed = snapshots_sum([back, snapshot(pid=2, other_connections={"WS": 1, "SSE": 2})])
    assert summed.other_connections == {"WS": 5, "SSE": 2}
