"""The composition root: builds this process's ``Runtime`` and the ASGI application around it.

The runtime is built once, here, and handed down: to the routers, the endpoints and the server
API's views (``build_application``), and to Django's own views (pages, health, metrics, the admin)
as ``request.realtime`` (``RuntimeMiddleware``). Three more entrances need this process's runtime
and take it from here: the Python publishing API (``channels_app.publish``), the registry signals
and the graceful shutdown.
"""

from __future__ import annotations

import logging
import sys

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from channels.layers import get_channel_layer
from channels.routing import ProtocolTypeRouter
from django.conf import settings

from .core.runtime import Runtime, build_runtime
from .hooks import hooks_load
from .http.limits import RequestLimitMiddleware
from .ops.gctuning import connection_closed, connection_opened
from .ops.logformat import RequestIdMiddleware
from .ops.metrics_snapshots import SnapshotWriter
from .transports.routing import http_router, websocket_router

logger = logging.getLogger(__name__)


class _ProcessRuntime:
    """This process's runtime, built on first use so that importing this module does no I/O."""

    def __init__(self):
        self.runtime: Runtime | None = None
        # Whether this process built the ASGI application, so its hub has subscribers to serve.
        self.serving = False


_process = _ProcessRuntime()


def process_runtime() -> Runtime:
    """The runtime of this process (built from the settings on first use)."""
    if _process.runtime is None:
        _process.runtime = build_runtime(
            config=settings.REALTIME,
            layer=get_channel_layer(),
            presence_lease=settings.REALTIME_PRESENCE_LEASE_SECONDS,
            on_subscribe=connection_opened,
            on_unsubscribe=connection_closed,
            # The project's hooks module is imported here, at start-up, not when channels_app is.
            hooks=hooks_load(settings.REALTIME_HOOKS, timeout=settings.REALTIME_HOOK_TIMEOUT_SECONDS),
            hooks_secret=settings.REALTIME_HOOKS_SECRET,
        )
        if settings.REALTIME_METRICS_DIR is not None:
            _process.runtime.metrics_snapshots = SnapshotWriter(
                _process.runtime,
                directory=settings.REALTIME_METRICS_DIR,
                labelled=settings.REALTIME_METRICS_MAX_CHANNELS,
            )
    return _process.runtime


def serves_subscribers() -> bool:
    """Whether this process built the ASGI application (daphne, uvicorn, a test's application)."""
    return _process.serving


def build_application(django_application, runtime: Runtime | None = None):
    """The service's ASGI application around ``runtime`` (this process's, by default), which becomes
    the runtime every entrance of this process uses."""
    _process.runtime = runtime or process_runtime()
    _process.serving = True
    return RequestIdMiddleware(
        ProtocolTypeRouter(
            {
                "http": RequestLimitMiddleware(http_router(django_application, _process.runtime)),
                "websocket": websocket_router(_process.runtime),
            }
        )
    )


def forget_process_runtime() -> None:
    """Drop this process's runtime and application (tests that build their own between tests)."""
    _process.runtime = None
    _process.serving = False


class RuntimeMiddleware:
    """Django middleware giving each request this process's runtime as ``request.realtime``."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request):
        request.realtime = process_runtime()
        if iscoroutinefunction(self):
            return self._acall(request)
        return self.get_response(request)

    async def _acall(self, request):
        return await self.get_response(request)


def install_request_limits() -> None:
    """Put the request rule and deadlines into the server that imports the application (daphne or
    uvicorn; see http/limits.py)."""
    if "uvicorn.server" in sys.modules:
        # uvicorn imports its --http protocol class before the application.
        if "channels_app.adapters.uvicorn_http" not in sys.modules:
            logger.warning(
                "uvicorn runs without request deadlines: start it with "
                "--http channels_app.adapters.uvicorn_http:LimitedH11Protocol (scripts/entrypoint.sh does)"
            )
        return
    daphne_server = sys.modules.get("daphne.server")
    if daphne_server is not None:
        from .adapters.daphne_limits import install_into

        install_into(daphne_server)


def install_connection_checks() -> None:
    """Under daphne, its periodic connection checks look only at the connections that are due
    (adapters/daphne_checks.py) and a write with nothing buffered goes out at once
    (adapters/twisted_writes.py); uvicorn's keep-alives are in its ``--ws`` class (adapters/uvicorn_ws.py)."""
    daphne_server = sys.modules.get("daphne.server")
    if daphne_server is not None and "uvicorn.server" not in sys.modules:
        from .adapters import twisted_writes
        from .adapters.daphne_checks import install_into

        install_into(daphne_server)
        twisted_writes.install()
