"""Garbage-collector tuning, applied once start-up is done: higher thresholds and a frozen start-up
heap, because fan-out's short-lived objects made the collector scan the whole heap constantly; a full
collection every ``COLLECT_EVERY_CLOSED`` closed connections or served requests keeps memory level
under churn (docs/architecture.md, "Why the code is shaped this way").

``REALTIME_GC_THRESHOLD`` overrides the thresholds (``"50000,50,1000"``) or turns the tuning off (``"off"``).
"""

from __future__ import annotations

import gc
import logging
import os

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLDS = (50_000, 50, 1_000)
ENV_VAR = "REALTIME_GC_THRESHOLD"
COLLECT_EVERY_CLOSED = 500

_tuned = False
_closed = 0


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
    global _tuned
    values = thresholds_from(os.environ.get(ENV_VAR))
    if values is None:
        return False
    _tuned = True
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
    connection_closed()


def connection_closed() -> None:
    """Count a closed connection; with the tuning on, collect fully every ``COLLECT_EVERY_CLOSED``."""
    global _closed
    if not _tuned:
        return
    _closed += 1
    if _closed >= COLLECT_EVERY_CLOSED:
        _closed = 0
        gc.collect()
