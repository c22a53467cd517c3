"""Wait for a condition instead of sleeping and hoping it holds by then."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable


async def wait_until(
    condition: Callable[[], object], within: float = 15, *, interval: float = 0.05, message: str = ""
) -> float:
    """Poll ``condition`` until it is true and return the seconds it took; fail the test after ``within``.

    A coroutine function is awaited; a plain one runs in a thread (it may block, e.g. on an HTTP request).
    """
    started = time.monotonic()
    while True:
        met = await condition() if inspect.iscoroutinefunction(condition) else await asyncio.to_thread(condition)
        if met:
            return time.monotonic() - started
        assert time.monotonic() - started < within, message or f"condition not met within {within} s"
        await asyncio.sleep(interval)


def wait_until_sync(condition: Callable[[], object], within: float = 15, *, interval: float = 0.05, message: str = ""):
    """``wait_until`` for a test without an event loop: poll ``condition`` until it is true."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < within, message or f"condition not met within {within} s"
        time.sleep(interval)
    return time.monotonic() - started
