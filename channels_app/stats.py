"""Counters (named in ``counters.py``) and latency observations kept per process, exported by
``http/metrics.py``."""

from __future__ import annotations

import bisect
from collections import Counter

# Publish-to-deliver latency buckets in seconds (Prometheus "le" bounds).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def cumulative(counts: list[int], bounds: tuple[float, ...] = LATENCY_BUCKETS) -> list[tuple[str, int]]:
    """``(le, count)`` pairs of per-bucket ``counts`` (as ``Histogram.counts``), the last being ``+Inf``."""
    pairs, running = [], 0
    for bound, count in zip((*map(str, bounds), "+Inf"), counts, strict=True):
        running += count
        pairs.append((bound, running))
    return pairs


class Histogram:
    """Per-bucket counts (``cumulative`` adds them up for Prometheus), a sum and a count."""

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Record one observation."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1


class Stats:
    """Named monotonic counters and the publish-to-deliver latency histogram."""

    def __init__(self):
        self._counts: Counter[str] = Counter()
        self.latency = Histogram()

    def incr(self, name: str, amount: int = 1) -> None:
        """Add ``amount`` to counter ``name``."""
        self._counts[name] += amount

    def observe_latency(self, seconds: float) -> None:
        """Record how long a message took from publish to being handed to its subscribers."""
        self.latency.observe(max(seconds, 0.0))

    def counters(self) -> dict[str, int]:
        """A snapshot of every counter."""
        return dict(self._counts)
