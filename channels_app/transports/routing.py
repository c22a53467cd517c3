"""ASGI routes: the channel URL serves WebSocket, SSE and the preflight; Django serves the rest."""

from __future__ import annotations

import json
import re

from channels.routing import URLRouter
from django.urls import path, re_path

from ..core.runtime import Runtime
from ..http.direct_api import DirectApiView
from ..http.security import SecurityHeadersMiddleware, host_allowed
from ..http.urls import api_urlpatterns
from .origins import header, origin_allowed, origin_not_allowed_body
from .sse import ChannelStreamEndpoint
from .sse_multi import EventsEndpoint
from .websocket import ChannelConsumer
from .websocket_multi import ConnectConsumer

CHANNEL_PATH = r"^api/v1/channels/(?P<channel>[^/]+)/?$"
EVENTS_PATH = r"^api/v1/events/?$"
CONNECT_PATH = r"^api/v1/connect/?$"
CLOSE_ORIGIN_NOT_ALLOWED = 4403
CLOSE_HOST_NOT_ALLOWED = 4400
CLOSE_NOT_FOUND = 4404


def host_not_allowed_body(host: str | None) -> dict:
    """The refusal of a request whose ``Host`` is not one of ``DJANGO_ALLOWED_HOSTS``."""
    shown = host if host is None or len(host) <= 100 else host[:100] + "..."
    return {
        "error": "host_not_allowed",
        "message": f"Host {shown!r} is not served here: add it to DJANGO_ALLOWED_HOSTS.",
    }


async def refuse_websocket(receive, send, code: int, body: dict) -> None:
    """Accept the handshake, send ``{"control": "close", "code": code, ...body}``, close with ``code``.

    A browser reports an HTTP refusal of a handshake only as close 1006; accepting and closing
    with a code and a reason frame lets the page say what is wrong.
    """
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": json.dumps({"control": "close", "code": code, **body})})
    await send({"type": "websocket.close", "code": code})


NOT_FOUND_BODY = {
    "error": "not_found",
    "message": "No WebSocket is served at this path: connect to /api/v1/channels/<channel id or name>, "
    "or to /api/v1/connect for several channels.",
}


class HostGuard:
    """Refuses an HTTP request under a ``Host`` that ``DJANGO_ALLOWED_HOSTS`` does not list (400).

    Django checks the host of the requests it serves; streams, preflights and the server API are
    served before Django, so they are checked here (WebSockets in ``WebSocketRouter``). Without it
    a page on a DNS-rebinding domain would pass the origin check (its ``Origin`` host equals the
    ``Host`` it sends) and could read a service that is meant to be reachable only inside a network.
    """

    def __init__(self, application, runtime: Runtime):
        self.application = application
        self.runtime = runtime

    async def __call__(self, scope, receive, send):
        host = header(scope, b"host")
        if host_allowed(host):
            return await self.application(scope, receive, send)
        self.runtime.stats.incr("refusals_host_not_allowed")
        payload = json.dumps(host_not_allowed_body(host)).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": 400, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
        return None


class MethodRouter:
    """Sends GET requests to one app and every other method to another."""

    def __init__(self, *, get, other):
        self.get = get
        self.other = other

    async def __call__(self, scope, receive, send):
        app = self.get if scope.get("method") in ("GET", "HEAD") else self.other
        return await app(scope, receive, send)


def direct_api_routes(runtime: Runtime) -> list:
    """The server API's routes, served from ASGI around Django's middleware (see http/direct_api.py).

    The channel URL itself is left out: its GET is the stream, and its other methods stay with
    Django through the route above it.
    """
    return [
        path(str(route.pattern), HostGuard(DirectApiView(route.callback, runtime), runtime), name=route.name)
        for route in api_urlpatterns
        if route.name != "channel"
    ]


def http_router(django_app, runtime: Runtime):
    """The HTTP side: streams and preflights on the channel URL, the server API from ASGI, Django
    for everything else; security headers on every response."""
    stream = HostGuard(ChannelStreamEndpoint(runtime), runtime)
    events = HostGuard(EventsEndpoint(runtime), runtime)
    return SecurityHeadersMiddleware(
        URLRouter(
            [
                re_path(CHANNEL_PATH, MethodRouter(get=stream, other=django_app)),
                re_path(EVENTS_PATH, MethodRouter(get=events, other=django_app)),
                *direct_api_routes(runtime),
                re_path(r"", django_app),
            ]
        )
    )


class WebSocketRouter:
    """The WebSocket side in one layer: the ``Host`` check (close 4400), the origin check (4403),
    then the channel consumer on the channel URL and 4404 anywhere else. One layer rather than
    channels' nested routers keeps about 2 KB less per idle connection (docs/architecture.md).
    """

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.channel_path = re.compile(CHANNEL_PATH)
        self.connect_path = re.compile(CONNECT_PATH)

    async def __call__(self, scope, receive, send):
        host = header(scope, b"host")
        if not host_allowed(host):
            self.runtime.stats.incr("refusals_host_not_allowed")
            return await refuse_websocket(receive, send, CLOSE_HOST_NOT_ALLOWED, host_not_allowed_body(host))
        origin = header(scope, b"origin")
        if not origin_allowed(origin, host, self.runtime.server):
            self.runtime.stats.incr("refusals_origin_not_allowed")
            return await refuse_websocket(receive, send, CLOSE_ORIGIN_NOT_ALLOWED, origin_not_allowed_body(origin))
        path_below_root = _path_below_root(scope)
        match = self.channel_path.match(path_below_root)
        if match is None:
            if self.connect_path.match(path_below_root):
                return await ConnectConsumer(runtime=self.runtime)(scope, receive, send)
            return await refuse_websocket(receive, send, CLOSE_NOT_FOUND, NOT_FOUND_BODY)
        # The channel goes to the consumer itself: a copy of the scope with ``url_route`` in it
        # would be kept for the life of the connection.
        return await ChannelConsumer(runtime=self.runtime, channel=match["channel"])(scope, receive, send)


def _path_below_root(scope) -> str:
    """The request path without the ``root_path`` prefix and leading slashes, as URLRouter matches it."""
    request_path, root_path = scope["path"], scope.get("root_path", "")
    if root_path and request_path.startswith(root_path):
        request_path = request_path[len(root_path) :]
    return request_path.lstrip("/")


def websocket_router(runtime: Runtime):
    """The WebSocket side: one consumer per channel URL, behind the host and origin checks."""
    return WebSocketRouter(runtime)
