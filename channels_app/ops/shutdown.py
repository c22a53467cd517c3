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

uvicorn installs its SIGTERM handler (stop accepting, send 1012 to every WebSocket, wait up to
``--timeout-graceful-shutdown`` for the rest) before it imports the application; ``install()``
puts the drain in front of it: the drain runs first, then uvicorn's own shutdown closes what is
left within the rest of the grace period, and the process exits.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time

from django.conf import settings

from ..core.runtime import Runtime

logger = logging.getLogger(__name__)

CLOSE_GOING_AWAY = 1001


async def drain(runtime: Runtime, *, grace: float) -> None:
    """Refuse new work, send clients away, let accepted requests finish (bounded by ``grace``)."""
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
    if runtime.http_hooks is not None:
        # The last member_removed / channel_vacated events, then the hooks' HTTP client.
        await runtime.http_hooks.aclose(within=min(2.0, max(grace - (time.monotonic() - started) - 0.5, 0.1)))
    logger.info("drained in %.1fs", time.monotonic() - started)


def install(runtime: Runtime) -> None:
    """Put a graceful drain of ``runtime`` in front of the server's SIGTERM handling (daphne or uvicorn)."""
    if not _install_under_uvicorn(runtime):
        _install_under_daphne(runtime)


def _install_under_daphne(runtime: Runtime) -> None:
    # daphne installs Twisted's asyncio reactor before it loads the application; importing the
    # reactor here under another server would install a second, unused event loop.
    reactor = sys.modules.get("twisted.internet.reactor")
    if reactor is None or not hasattr(reactor, "_asyncioEventloop"):
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
                    await asyncio.wait_for(drain(runtime, grace=grace), grace)
                except Exception:
                    logger.exception("draining failed; stopping now")
                finally:
                    reactor.stop()

            loop.create_task(drain_then_stop())

        loop.add_signal_handler(signal.SIGTERM, on_sigterm)

    reactor.callWhenRunning(on_running)


def _install_under_uvicorn(runtime: Runtime) -> bool:
    """Drain on SIGTERM before uvicorn's own shutdown; False when uvicorn is not serving us.

    uvicorn imports the application before it creates its ``Server`` (no event loop runs yet) and
    sets ``Server.handle_exit`` as the SIGTERM handler later, with ``signal.signal``. So the drain
    goes into ``Server.handle_exit`` itself: on SIGTERM it drains, then calls uvicorn's original
    handler, whose shutdown gets what is left of the grace period.
    """
    uvicorn_server = sys.modules.get("uvicorn.server")
    if uvicorn_server is None:
        return False
    server_class = uvicorn_server.Server
    uvicorn_exit = server_class.handle_exit
    if getattr(uvicorn_exit, "drains_first", False):
        return True
    grace = settings.REALTIME_SHUTDOWN_GRACE_SECONDS

    async def drain_then_exit(server) -> None:
        started = time.monotonic()
        try:
            await asyncio.wait_for(drain(runtime, grace=grace), grace)
        except Exception:
            logger.exception("draining failed; stopping now")
        server.config.timeout_graceful_shutdown = max(grace - (time.monotonic() - started), 1.0)
        uvicorn_exit(server, signal.SIGTERM, None)

    def start_drain(server, loop) -> None:
        if getattr(server, "realtime_drain", None) is None:
            logger.info("SIGTERM: draining for at most %.0fs", grace)
            server.realtime_drain = loop.create_task(drain_then_exit(server))

    def handle_exit(server, sig, frame) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if sig != signal.SIGTERM or loop is None:
            uvicorn_exit(server, sig, frame)
            return
        # A signal handler runs between two bytecodes of the loop's thread: schedule, do not run.
        loop.call_soon_threadsafe(start_drain, server, loop)

    handle_exit.drains_first = True
    server_class.handle_exit = handle_exit
    # With --workers, each worker imports the application after its handler is already set.
    current = signal.getsignal(signal.SIGTERM)
    if isinstance(getattr(current, "__self__", None), server_class):
        signal.signal(signal.SIGTERM, current.__self__.handle_exit)
    return True
