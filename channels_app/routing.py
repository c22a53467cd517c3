"""ASGI routes: the channel URL serves WebSocket, SSE and the preflight; Django serves the rest."""

from __future__ import annotations

import json

from channels.routing import URLRouter
from django.urls import path, re_path

from .consumers import ChannelConsumer
from .direct_api import DirectApiView
from .origins import header, origin_allowed
from .runtime import get_runtime
from .security import SecurityHeadersMiddleware, host_allowed
from .sse import ChannelStreamEndpoint
from .urls import api_urlpatterns

CHANNEL_PATH = r"^api/v1/channels/(?P<channel>[^/]+)/?$"
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


class HostGuard:
    """Refuses the channel URL under a ``Host`` that ``DJANGO_ALLOWED_HOSTS`` does not list.

    Django checks the host of the requests it serves; streams, preflights and WebSockets are
    served before Django, so they are checked here. Without it a page on a DNS-rebinding domain
    would pass the origin check (its ``Origin`` host equals the ``Host`` it sends) and could read
    a service that is meant to be reachable only inside a network.
    """

    def __init__(self, application):
        self.application = application

    async def __call__(self, scope, receive, send):
        host = header(scope, b"host")
        if host_allowed(host):
            return await self.application(scope, receive, send)
        get_runtime().stats.incr("refusals_host_not_allowed")
        body = host_not_allowed_body(host)
        if scope["type"] == "http":
            payload = json.dumps(body).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
            await send({"type": "http.response.start", "status": 400, "headers": headers})
            await send({"type": "http.response.body", "body": payload})
            return None
        message = await receive()
        if message["type"] != "websocket.connect":
            return None
        await send({"type": "websocket.accept"})
        frame = {"control": "close", "code": CLOSE_HOST_NOT_ALLOWED, **body}
        await send({"type": "websocket.send", "text": json.dumps(frame)})
        await send({"type": "websocket.close", "code": CLOSE_HOST_NOT_ALLOWED})
        return None


class OriginGuard:
    """Refuses WebSocket handshakes from origins not allowed by the configuration (close 4403).

    channels' ``OriginValidator`` answers HTTP 403, which a browser reports only as close 1006;
    accepting and closing with a code and a reason frame lets the page say what is wrong.
    """

    def __init__(self, application):
        self.application = application

    async def __call__(self, scope, receive, send):
        origin = header(scope, b"origin")
        if origin_allowed(origin, header(scope, b"host"), get_runtime().server):
            return await self.application(scope, receive, send)
        get_runtime().stats.incr("refusals_origin_not_allowed")
        message = await receive()
        if message["type"] != "websocket.connect":
            return None
        body = {
            "control": "close",
            "code": CLOSE_ORIGIN_NOT_ALLOWED,
            "error": "origin_not_allowed",
            "message": f"Origin {origin!r} may not subscribe: add it to server.allowed_origins.",
        }
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": json.dumps(body)})
        await send({"type": "websocket.close", "code": CLOSE_ORIGIN_NOT_ALLOWED})
        return None


class MethodRouter:
    """Sends GET requests to one app and every other method to another."""

    def __init__(self, *, get, other):
        self.get = get
        self.other = other

    async def __call__(self, scope, receive, send):
        app = self.get if scope.get("method") in ("GET", "HEAD") else self.other
        return await app(scope, receive, send)


def direct_api_routes() -> list:
    """The server API's routes, served from ASGI around Django's middleware (see direct_api.py).

    The channel URL itself is left out: its GET is the stream, and its other methods stay with
    Django through the route above it.
    """
    return [
        path(str(route.pattern), HostGuard(DirectApiView(route.callback)), name=route.name)
        for route in api_urlpatterns
        if route.name != "channel"
    ]


def http_router(django_app):
    """The HTTP side: streams and preflights on the channel URL, the server API from ASGI, Django
    for everything else; security headers on every response."""
    return SecurityHeadersMiddleware(
        URLRouter(
            [
                re_path(CHANNEL_PATH, MethodRouter(get=HostGuard(ChannelStreamEndpoint()), other=django_app)),
                *direct_api_routes(),
                re_path(r"", django_app),
            ]
        )
    )


class WebSocketNotFound:
    """Any other WebSocket path: closed with 4404 after a close frame, instead of the 500 that
    channels' router raises for a path no route matches (e.g. ``/api/v1/channels/../admin``)."""

    async def __call__(self, scope, receive, send):
        message = await receive()
        if message["type"] != "websocket.connect":
            return None
        body = {
            "control": "close",
            "code": CLOSE_NOT_FOUND,
            "error": "not_found",
            "message": "No WebSocket is served at this path: connect to /api/v1/channels/<channel id or name>.",
        }
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": json.dumps(body)})
        await send({"type": "websocket.close", "code": CLOSE_NOT_FOUND})
        return None


def websocket_router():
    """The WebSocket side: one consumer per channel URL, behind the host and origin checks."""
    routes = [re_path(CHANNEL_PATH, ChannelConsumer.as_asgi()), re_path(r"", WebSocketNotFound())]
    return HostGuard(OriginGuard(URLRouter(routes)))
