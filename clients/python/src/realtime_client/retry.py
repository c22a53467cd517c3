"""Backoff shared by the publishers (bounded retries) and the subscriber (reconnects)."""

from __future__ import annotations

import random
from dataclasses import dataclass


def backoff_delay(attempt: int, *, base: float, cap: float) -> float:
    """Seconds to wait before retry number ``attempt`` (0-based): "equal jitter", between half and all of
    ``min(cap, base * 2**attempt)``, so clients that failed together do not all come back at once."""
    ceiling = min(cap, base * 2**attempt)
    return ceiling / 2 + random.random() * ceiling / 2


@dataclass(frozen=True)
class RetryPolicy:
    """How a publisher retries a request: at most ``max_attempts`` requests, within ``deadline`` seconds in all,
    waiting ``backoff_delay(n, base=base_delay, cap=max_delay)`` between them. ``max_attempts=1`` never retries."""

    max_attempts: int = 5
    base_delay: float = 0.25
    max_delay: float = 4.0
    deadline: float = 30.0

    def __post_init__(self):
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_delay < 0 or self.max_delay < 0 or self.deadline <= 0:
            raise ValueError("delays must be >= 0 and the deadline > 0")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after the ``attempt``-th request (1-based) failed."""
        return backoff_delay(attempt - 1, base=self.base_delay, cap=self.max_delay)
