"""Counters for deliveries, drops and disconnects, kept per process.

A later issue exports them as Prometheus metrics; until then ``counters()`` is the one place
to read them, and tests assert on it.
"""

from __future__ import annotations

from collections import Counter


class Stats:
    """Named monotonic counters."""

    def __init__(self):
        self._counts: Counter[str] = Counter()

    def incr(self, name: str, amount: int = 1) -> None:
        """Add ``amount`` to counter ``name``."""
        self._counts[name] += amount

    def counters(self) -> dict[str, int]:
        """A snapshot of every counter."""
        return dict(self._counts)
