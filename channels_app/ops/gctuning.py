"""Garbage-collector tuning, applied once start-up is done: higher thresholds and a frozen start-up
heap, because fan-out's short-lived objects made the collector scan the whole heap constantly; a full
collection every ``COLLECT_EVERY_CLOSED`` closed connections or served requests keeps memory level
under churn (docs/architecture.md, "Why the code is shaped this way"). A full collection scans
every live connection's objects (about 0.5 s at 19,000), so with many open it waits for closes
amounting to a quarter of them (``LIVE_SHARE_CLOSED``): its cost per close stays the same at any
size, and a mass disconnect does not stop the process once per 500.

Once a burst of at least ``SETTLE_AFTER_OPENED`` new subscriptions has settled (none for
``SETTLE_SECONDS``), the young generations are collected at once: the burst's long-lived objects
move to the oldest generation while nothing is happening, instead of being scanned by the first
middle-generation collection some later broadcast sets off (about 1 s at 19,000 connections,
docs/performance-scale.md).

``REALTIME_GC_THRESHOLD`` overrides the thresholds (``"50000,50,1000"``) or turns the tuning off (``"off"``).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLDS = (50_000, 50, 1_000)
ENV_VAR = "REALTIME_GC_THRESHOLD"
COLLECT_EVERY_CLOSED = 500
LIVE_SHARE_CLOSED = 4
SETTLE_AFTER_OPENED = 1_000
SETTLE_SECONDS = 1.0


class _Collector:
    """The process's collection schedule (the collector itself is one per process)."""

    def __init__(self):
        self.tuned = False
        self.closed = 0
        # Subscriptions open now: opened minus closed since the tuning.
        self.live = 0
        self.opened = 0
        self.last_opened = 0.0
        self.settling: asyncio.TimerHandle | None = None
        self.settling_loop: asyncio.AbstractEventLoop | None = None
        self.settled = 0


_collector = _Collector()


def thresholds_from(text: str | None) -> tuple[int, ...] | None:
    """Parse the environment setting: None means off, empty means the defaults."""
    if text is None or not text.strip():
        return DEFAULT_THRESHOLDS
    if text.strip().lower() in {"off", "0", "false", "no", "default"}:
        return None
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        logger.warning("%s=%r is not like 50000,50,1000; using %s", ENV_VAR, text, DEFAULT_THRESHOLDS)
        return DEFAULT_THRESHOLDS
    if not 1 <= len(values) <= 3 or min(values) < 1:
        logger.warning("%s=%r needs 1 to 3 positive numbers; using %s", ENV_VAR, text, DEFAULT_THRESHOLDS)
        return DEFAULT_THRESHOLDS
    return values


def tune_after_startup() -> bool:
    """Raise the GC thresholds and freeze everything start-up allocated; return whether it did."""
    values = thresholds_from(os.environ.get(ENV_VAR))
    if values is None:
        return False
    _collector.tuned = True
    gc.collect()  # what start-up left as garbage must not be frozen with the rest
    gc.freeze()
    gc.set_threshold(*values)
    logger.debug("gc thresholds %s, %d objects frozen", values, gc.get_freeze_count())
    return True


def request_finished() -> None:
    """Count a finished server-API request like a closed connection.

    Each request leaves a few KiB of reference cycles in the server's objects below the
    application; at a few hundred pushes a second they filled the oldest generation by about
    0.4 MB/s (tests/test_soak.py) until something collected it.
    """
    if _collector.tuned:
        _count_closed()


def connection_closed() -> None:
    """Count a closed subscription; with the tuning on, collect fully once enough have closed."""
    if _collector.tuned:
        _collector.live = max(0, _collector.live - 1)
        _count_closed()


def _count_closed() -> None:
    _collector.closed += 1
    if _collector.closed >= max(COLLECT_EVERY_CLOSED, _collector.live // LIVE_SHARE_CLOSED):
        _collector.closed = 0
        gc.collect()


def connection_opened() -> None:
    """Count a new subscription; with the tuning on, collect the young generations once a burst settles."""
    if not _collector.tuned:
        return
    _collector.live += 1
    _collector.opened += 1
    _collector.last_opened = time.monotonic()
    if _collector.opened < SETTLE_AFTER_OPENED:
        return
    loop = asyncio.get_running_loop()
    # A timer of a loop that has since closed (tests run several) would never fire.
    if _collector.settling is None or _collector.settling_loop is not loop:
        _collector.settling_loop = loop
        _collector.settling = loop.call_later(SETTLE_SECONDS, _settle)


def _settle() -> None:
    quiet_for = time.monotonic() - _collector.last_opened
    if quiet_for < SETTLE_SECONDS:
        _collector.settling = asyncio.get_running_loop().call_later(SETTLE_SECONDS - quiet_for, _settle)
        return
    _collector.settling = None
    started = time.perf_counter()
    gc.collect(1)
    _collector.settled += 1
    logger.debug(
        "%d subscriptions settled; young generations collected in %.1f ms",
        _collector.opened,
        (time.perf_counter() - started) * 1000,
    )
    _collector.opened = 0
