"""What ``/metrics`` exports of a process, and its sum over the server processes of an instance.

With ``REALTIME_PROCESSES`` above 1 the supervisor gives its server processes a private directory
(``REALTIME_METRICS_DIR``). Each process writes a snapshot of its metrics there as ``<pid>.json``
every ``WRITE_INTERVAL_SECONDS`` (``SnapshotWriter``, from its hub's start or its first scrape), and
a scrape of any process sums the snapshots of all (``snapshots_read``, ``snapshots_sum``), so that
it describes the instance. A snapshot older than ``STALE_SECONDS`` is a process that hangs: it is
left out and counted. The supervisor removes the snapshot of a process that exits, and the
directory when it stops.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..core.runtime import Runtime
from ..core.selectors import channels_by_local_connections
from ..stats import LATENCY_BUCKETS

logger = logging.getLogger(__name__)

WRITE_INTERVAL_SECONDS = 1.0
# Channels a snapshot names one by one, as a multiple of those /metrics labels: a channel busiest on
# the instance but not on one process is still named by that process. The rest are summed, so a
# snapshot stays small (and cheap to take every second) with 100,000 channels.
KEEP_FACTOR = 4
# Ten missed writes: the process is hung (or gone without the supervisor noticing yet).
STALE_SECONDS = 10.0


@dataclass
class ChannelConnections:
    """A channel's subscriptions per transport; ``name`` and ``limit`` are None when the registry did not know it."""

    id: str
    name: str | None
    limit: int | None
    connections: dict[str, int]


@dataclass
class MetricsSnapshot:
    """The figures ``/metrics`` exports of one process, or summed over ``processes`` of them."""

    counters: dict[str, int]
    # Per latency bucket (LATENCY_BUCKETS, then +Inf), not cumulative.
    latency_buckets: list[int]
    latency_sum: float
    latency_count: int
    # The busiest first.
    channels: list[ChannelConnections]
    # The subscriptions of the channels past those kept, summed per transport.
    other_connections: dict[str, int] = field(default_factory=dict)
    processes: int = 1
    # Snapshots older than STALE_SECONDS, left out of a sum.
    stale: int = 0
    pid: int = field(default_factory=os.getpid)
    written_at: float = field(default_factory=time.time)

    def as_json(self) -> str:
        """The snapshot as its file holds it."""
        return json.dumps(
            {
                "pid": self.pid,
                "written_at": self.written_at,
                "counters": self.counters,
                "latency": {"buckets": self.latency_buckets, "sum": self.latency_sum, "count": self.latency_count},
                "channels": [
                    {"id": c.id, "name": c.name, "limit": c.limit, "connections": c.connections} for c in self.channels
                ],
                "other": self.other_connections,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> MetricsSnapshot:
        """A snapshot read back from its file; ``ValueError`` when it is not one."""
        try:
            data = json.loads(text)
            latency = data["latency"]
            snapshot = cls(
                counters={str(name): int(value) for name, value in data["counters"].items()},
                latency_buckets=[int(count) for count in latency["buckets"]],
                latency_sum=float(latency["sum"]),
                latency_count=int(latency["count"]),
                channels=[
                    ChannelConnections(
                        id=str(channel["id"]),
                        name=None if channel["name"] is None else str(channel["name"]),
                        limit=None if channel["limit"] is None else int(channel["limit"]),
                        connections={str(transport): int(count) for transport, count in channel["connections"].items()},
                    )
                    for channel in data["channels"]
                ],
                other_connections={str(transport): int(count) for transport, count in data.get("other", {}).items()},
                pid=int(data["pid"]),
                written_at=float(data["written_at"]),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a metrics snapshot: {exc!r}") from exc
        if len(snapshot.latency_buckets) != len(LATENCY_BUCKETS) + 1:
            raise ValueError(f"{len(snapshot.latency_buckets)} latency buckets, not {len(LATENCY_BUCKETS) + 1}")
        return snapshot


async def snapshot_take(*, runtime: Runtime, keep: int) -> MetricsSnapshot:
    """This process's figures, read now: the ``keep`` busiest channels one by one, the rest summed."""
    latency = runtime.stats.latency
    busiest, others = await channels_by_local_connections(runtime=runtime, limit=keep)
    channels = [
        ChannelConnections(
            id=channel_id,
            name=channel.name if channel is not None else None,
            limit=channel.max_connections if channel is not None else None,
            connections=counts,
        )
        for channel_id, channel, counts in busiest
    ]
    return MetricsSnapshot(
        counters=runtime.stats.counters(),
        latency_buckets=list(latency.counts),
        latency_sum=latency.total,
        latency_count=latency.count,
        channels=channels,
        other_connections=others,
    )


def snapshot_path(directory: Path, pid: int) -> Path:
    """Where process ``pid`` keeps its snapshot (the supervisor removes it when the process exits)."""
    return directory / f"{pid}.json"


def snapshot_write(directory: Path, snapshot: MetricsSnapshot) -> None:
    """Replace the snapshot file of ``snapshot``'s process at once: a reader sees the old one or the new one."""
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{snapshot.pid}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as file:
            file.write(snapshot.as_json())
        os.replace(temporary, snapshot_path(directory, snapshot.pid))
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def snapshots_read(directory: Path, *, now: float, exclude: int | None = None) -> tuple[list[MetricsSnapshot], int]:
    """The fresh snapshots in ``directory`` but ``exclude``'s, and how many were stale; unreadable ones are
    skipped with a warning (a file being removed, or not one of ours)."""
    fresh, stale = [], 0
    for path in sorted(directory.glob("*.json")):
        if exclude is not None and path.name == snapshot_path(directory, exclude).name:
            continue
        try:
            snapshot = MetricsSnapshot.from_json(path.read_text())
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as exc:
            logger.warning("metrics: skipping the snapshot %s: %s", path.name, exc)
            continue
        if now - snapshot.written_at > STALE_SECONDS:
            stale += 1
        else:
            fresh.append(snapshot)
    return fresh, stale


def snapshots_sum(snapshots: list[MetricsSnapshot], *, stale: int = 0) -> MetricsSnapshot:
    """The instance's figures: counters, latency buckets and connections per channel and transport summed;
    a channel's name and limit from any snapshot that knows them."""
    counters: dict[str, int] = {}
    buckets = [0] * (len(LATENCY_BUCKETS) + 1)
    channels: dict[str, ChannelConnections] = {}
    others: dict[str, int] = {}
    for snapshot in snapshots:
        for transport, count in snapshot.other_connections.items():
            others[transport] = others.get(transport, 0) + count
        for name, value in snapshot.counters.items():
            counters[name] = counters.get(name, 0) + value
        buckets = [total + count for total, count in zip(buckets, snapshot.latency_buckets, strict=True)]
        for channel in snapshot.channels:
            summed = channels.setdefault(channel.id, ChannelConnections(channel.id, None, None, {}))
            summed.name = summed.name if summed.name is not None else channel.name
            summed.limit = summed.limit if summed.limit is not None else channel.limit
            for transport, count in channel.connections.items():
                summed.connections[transport] = summed.connections.get(transport, 0) + count
    busiest = sorted(channels.values(), key=lambda channel: (-sum(channel.connections.values()), channel.id))
    return MetricsSnapshot(
        counters=counters,
        latency_buckets=buckets,
        latency_sum=sum(snapshot.latency_sum for snapshot in snapshots),
        latency_count=sum(snapshot.latency_count for snapshot in snapshots),
        channels=busiest,
        other_connections=others,
        processes=len(snapshots),
        stale=stale,
    )


class SnapshotWriter:
    """Keeps this process's snapshot in ``directory`` fresh, every ``WRITE_INTERVAL_SECONDS``."""

    def __init__(self, runtime: Runtime, *, directory: Path, labelled: int):
        """``labelled``: the channels /metrics names one by one (``REALTIME_METRICS_MAX_CHANNELS``)."""
        self.runtime = runtime
        self.directory = directory
        self.keep = labelled * KEEP_FACTOR
        self._task: asyncio.Task | None = None
        # One write at a time, in order: a slower, older write must not replace a newer snapshot.
        self._lock = asyncio.Lock()

    def start(self) -> None:
        """Start the writing loop (once; later calls do nothing)."""
        if self._task is None:
            self._task = asyncio.create_task(
                self._write_loop(), name="realtime-metrics-snapshots", context=contextvars.Context()
            )

    async def stop(self) -> None:
        """Stop the writing loop (tests and shutdown)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def write(self) -> MetricsSnapshot:
        """Take this process's snapshot, write it (a failure is logged), and return it."""
        async with self._lock:
            snapshot = await snapshot_take(runtime=self.runtime, keep=self.keep)
            try:
                await asyncio.to_thread(snapshot_write, self.directory, snapshot)
            except OSError as exc:
                logger.warning("metrics: could not write this process's snapshot to %s: %s", self.directory, exc)
        return snapshot

    async def instance(self) -> MetricsSnapshot:
        """The sum of this process's snapshot, written now, and the other processes' fresh ones."""
        # A process first scraped before it served a connection keeps its snapshot fresh from now on.
        self.start()
        own = await self.write()
        others, stale = await asyncio.to_thread(snapshots_read, self.directory, now=time.time(), exclude=own.pid)
        if stale:
            logger.warning("metrics: %d server process(es) wrote no snapshot for %.0fs: left out", stale, STALE_SECONDS)
        return snapshots_sum([own, *others], stale=stale)

    async def _write_loop(self) -> None:
        while True:
            try:
                await self.write()
            except asyncio.CancelledError:
                raise
            except Exception:
                # A registry read that failed: the next one may succeed.
                logger.exception("metrics: could not write this process's snapshot")
            await asyncio.sleep(WRITE_INTERVAL_SECONDS)
