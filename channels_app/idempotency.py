"""Idempotent pushes: a retried request with the same ``Idempotency-Key`` publishes once.

A key is remembered for ``IDEMPOTENCY_WINDOW_SECONDS`` after its first use, with the response it
produced; a retry within the window gets that response again (header ``Idempotent-Replayed:
true``) and a concurrent duplicate waits for the first to finish. ``MemoryIdempotency`` serves
the MEMORY driver's single instance.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from .errors import ApplicationError

IDEMPOTENCY_WINDOW_SECONDS = 24 * 3600
MAX_REMEMBERED_KEYS = 100_000
MAX_KEY_LENGTH = 200


class MemoryIdempotency:
    """Remembered results of keyed requests, in this process."""

    def __init__(self, *, window: float = IDEMPOTENCY_WINDOW_SECONDS, clock=time.monotonic):
        self._window = window
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, str, asyncio.Future]] = OrderedDict()

    async def run_once(self, key: str, fingerprint: str, action: Callable[[], Awaitable[Any]]) -> tuple[Any, bool]:
        """Run ``action`` once per key; return ``(result, replayed)``.

        ``fingerprint`` identifies the request body: reusing a key for a different request is
        refused (422), because silently returning the other request's result would hide a bug.
        """
        if not key or len(key) > MAX_KEY_LENGTH:
            raise ApplicationError(
                "bad_request", f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters.", status=400
            )
        self._expire()
        entry = self._entries.get(key)
        if entry is not None:
            _, known_fingerprint, future = entry
            if known_fingerprint != fingerprint:
                raise ApplicationError(
                    "idempotency_key_reused",
                    "This Idempotency-Key was already used for a different request: use a new key.",
                    status=422,
                )
            return await asyncio.shield(future), True
        future = asyncio.get_running_loop().create_future()
        self._entries[key] = (self._clock(), fingerprint, future)
        try:
            result = await action()
        except BaseException as exc:
            # A failed attempt is not remembered: the client may retry it.
            self._entries.pop(key, None)
            future.set_exception(exc)
            future.exception()  # mark retrieved; waiters re-raise it
            raise
        future.set_result(result)
        return result, False

    def _expire(self) -> None:
        oldest_allowed = self._clock() - self._window
        entries = self._entries
        while entries:
            key, (created, _, future) = next(iter(entries.items()))
            if created >= oldest_allowed and len(entries) <= MAX_REMEMBERED_KEYS:
                break
            if not future.done():
                break
            entries.popitem(last=False)
