"""Graceful shutdown on SIGTERM (Kubernetes, Docker, systemd).

1. Readiness goes false (``/readyz`` answers 503) and new subscriptions are refused, so the load
   balancer stops sending traffic here.
2. Every WebSocket is closed with 1001 (going away) after a ``{"control": "close"}`` frame, and
   every event stream ends, so clients reconnect to another instance and resume from history.
3. Accepted API requests (pushes) finish.
4. The process exits, at the latest ``REALTIME_SHUTDOWN_GRACE_SECONDS`` after the signal
   (default 20 s, below Kubernetes' default 30 s termination grace period).

daphne runs on Twisted's asyncio reactor, which installs its own SIGTERM handler (an immediate
stop) when it starts; ``install()`` replaces it once the reactor is running.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

from django.conf import settings

logger = logging.getLogger(__name__)

CLOSE_GOING_AWAY = 1001


class InFlight:
    """Counts requests that must finish before the process exits."""

    def __init__(self):
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def __enter__(self):
        self.count += 1
        self._idle.clear()
        return self

    def __exit__(self, *exc_info):
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no request is in flight."""
        await self._idle.wait()


async def drain(*, grace: float) -> None:
    """Refuse new work, send clients away, let accepted requests finish (bounded by ``grace``)."""
    from .runtime import get_runtime

    runtime = get_runtime()
    started = time.monotonic()
    runtime.draining = True
    closed = runtime.hub.close_all(
        CLOSE_GOING_AWAY,
        {
            "control": "close",
            "code": CLOSE_GOING_AWAY,
            "error": "going_away",
            "message": "This instance is shutting down; reconnect (with ?since=) to resume elsewhere.",
        },
    )
    logger.info("draining: asked %d subscriptions to reconnect elsewhere", closed)
    try:
        await asyncio.wait_for(runtime.in_flight.wait_idle(), max(grace - 1.0, 0.1))
    except TimeoutError:
        logger.warning("draining: %d request(s) still running after the grace period", runtime.in_flight.count)
    # Give the close frames and final stream chunks a moment to reach the sockets.
    await asyncio.sleep(min(0.5, max(grace - (time.monotonic() - started), 0)))
    logger.info("drained in %.1fs", time.monotonic() - started)


def install() -> None:
    """Under daphne, replace the reactor's SIGTERM handler with a graceful drain (once running)."""
    try:
        from twisted.internet import reactor
    except ImportError:
        return
    if not hasattr(reactor, "_asyncioEventloop"):
        return

    def on_running():
        loop = reactor._asyncioEventloop
        grace = settings.REALTIME_SHUTDOWN_GRACE_SECONDS
        state = {"draining": False}

        def on_sigterm():
            if state["draining"]:
                return
            state["draining"] = True
            logger.info("SIGTERM: draining for at most %.0fs", grace)

            async def drain_then_stop():
                try:
                    await asyncio.wait_for(drain(grace=grace), grace)
                except Exception:
                    logger.exception("draining failed; stopping now")
                finally:
                    reactor.stop()

            loop.create_task(drain_then_stop())

        loop.add_signal_handler(signal.SIGTERM, on_sigterm)

    reactor.callWhenRunning(on_running)
