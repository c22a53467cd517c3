"""What one HTTP request may cost: its body size, its API key before its body, and its deadlines.

One rule, applied from a request's headers, before any byte of its body is read:

- a write the server API serves (``api_key_required``) without a valid API key: **401**;
- a ``Content-Length`` above ``REALTIME_MAX_REQUEST_BODY_BYTES`` (the largest body any endpoint
  accepts, settings.py): **413** ``payload_too_large``.

A body sent without a length (chunked) is cut off with the same 413 once it passes the limit.
A request whose line and headers take longer than ``REALTIME_REQUEST_HEAD_TIMEOUT_SECONDS``, or
whose body takes longer than ``REALTIME_REQUEST_BODY_TIMEOUT_SECONDS`` after them, gets **408**
``request_timeout`` (or, if it had not sent a byte, is just closed). Every refusal is JSON with
``Connection: close``.

Where it runs: daphne reads a whole body before the application sees the request, so under
daphne the rule runs in Twisted's parser (adapters/daphne_limits.py); under uvicorn in
``RequestLimitMiddleware`` below (around the whole HTTP side, Django's routes included), with the
deadlines in uvicorn's protocol (adapters/uvicorn_http.py, ``--http``).
``composition.install_request_limits()`` picks the server.
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from urllib.parse import unquote

from django.conf import settings

from ..errors import ApplicationError
from .auth import WWW_AUTHENTICATE, api_key_check
from .security import with_security_headers
from .urls import api_urlpatterns

logger = logging.getLogger(__name__)

# After a refusal sent before the body was read, the rest of the body is read and dropped for at
# most this long before the connection is closed: closing a socket with unread data sends a TCP
# reset, which can destroy the response before the client has read it.
LINGER_SECONDS = 2.0


def body_limit() -> int:
    """The largest request body any endpoint accepts, in bytes."""
    return settings.REALTIME_MAX_REQUEST_BODY_BYTES


def body_too_large() -> ApplicationError:
    """The refusal of a body over the limit (413)."""
    limit = body_limit()
    return ApplicationError(
        "payload_too_large",
        f"The request body is larger than {limit} bytes, the most this service accepts.",
        status=413,
        extra={"limit": limit},
    )


def request_timeout(part: str) -> ApplicationError:
    """The refusal of a request whose ``part`` ("head" or "body") did not arrive in time (408)."""
    if part == "head":
        seconds = settings.REALTIME_REQUEST_HEAD_TIMEOUT_SECONDS
        what = "request line and headers"
    else:
        seconds = settings.REALTIME_REQUEST_BODY_TIMEOUT_SECONDS
        what = "body"
    return ApplicationError(
        "request_timeout",
        f"The {what} did not arrive within {seconds:g} s; send the whole request at once.",
        status=408,
    )


def api_key_required(method: str, path: str) -> bool:
    """Whether a request is a write the server API serves: a method other than GET or HEAD that one of
    its authenticated views allows on its route (``path`` is below the root path). Any other method
    reaches the view, which answers 405."""
    if method in ("GET", "HEAD"):
        return False
    for route in api_urlpatterns:
        if route.pattern.match(path.lstrip("/")) is not None:
            view = route.callback
            return method in getattr(view, "allowed_methods", ()) and getattr(view, "authenticated", True)
    return False


def request_refusal(method: str, path: str, authorization: str | None, length: int | None) -> ApplicationError | None:
    """The refusal of a request from its headers alone, or None: missing API key first, then size.

    ``path`` is below the root path; ``length`` is the declared ``Content-Length`` (None: chunked
    or none).
    """
    if api_key_required(method, path):
        try:
            api_key_check(authorization)
        except ApplicationError as error:
            return error
    if length is not None and length > body_limit():
        return body_too_large()
    return None


def response_parts(error: ApplicationError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """``(status, headers, body)`` of a refusal: JSON, security headers, ``Connection: close``."""
    body = json.dumps(error.as_dict()).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    if error.status == 401:
        headers.append((b"www-authenticate", WWW_AUTHENTICATE.encode()))
    return error.status, with_security_headers(headers), body


def response_bytes(error: ApplicationError) -> bytes:
    """A refusal as a whole HTTP/1.1 response, for a server hook writing to the socket itself."""
    status, headers, body = response_parts(error)
    lines = [b"HTTP/1.1 %d %s" % (status, HTTPStatus(status).phrase.encode())]
    lines.extend(name + b": " + value for name, value in headers)
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def send_refusal(send, error: ApplicationError) -> None:
    """Answer an ASGI HTTP request with a refusal."""
    status, headers, body = response_parts(error)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def scope_refusal(scope: dict) -> ApplicationError | None:
    """``request_refusal`` for an ASGI HTTP scope."""
    authorization = length = None
    for name, value in scope.get("headers", ()):
        if name == b"authorization" and authorization is None:
            authorization = value.decode("latin-1")
        elif name == b"content-length" and length is None and value.isdigit():
            length = int(value)
    path = path_below_root(scope["path"], scope.get("root_path", ""))
    return request_refusal(scope["method"], path, authorization, length)


def path_below_root(path: str, root_path: str) -> str:
    """A decoded request path without its root path, as the URL routes see it."""
    if root_path and path.startswith(root_path):
        return path[len(root_path) :]
    return path


def raw_path_below_root(raw_path: bytes, root_path: str) -> str:
    """``path_below_root`` for a request target as sent (percent-encoded, maybe with a query)."""
    return path_below_root(unquote(raw_path.split(b"?", 1)[0].decode("latin-1")), root_path)


def _may_have_body(scope: dict) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            return True
    return False


class RequestLimitMiddleware:
    """ASGI middleware applying the rule to every HTTP request, whatever serves it.

    Under uvicorn it is what refuses a request before its body is read (uvicorn reads at most
    64 KiB ahead of the application) and what stops a chunked body at the limit, for Django's
    routes too, whose handler would otherwise spool any body to a temporary file. Under daphne
    the Twisted hooks have refused the same requests already.
    """

    def __init__(self, application):
        self.application = application

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.application(scope, receive, send)
        error = scope_refusal(scope)
        if error is not None:
            return await send_refusal(send, error)
        if not _may_have_body(scope):
            return await self.application(scope, receive, send)
        limit = body_limit()
        state = {"received": 0, "cut_off": False, "responded": False}

        async def limited_receive():
            message = await receive()
            if message["type"] != "http.request" or state["cut_off"]:
                return message
            state["received"] += len(message.get("body", b""))
            if state["received"] <= limit:
                return message
            state["cut_off"] = True
            if not state["responded"]:
                await send_refusal(send, body_too_large())
            # The application stops reading as if the client had gone; what it sends is dropped.
            return {"type": "http.disconnect"}

        async def guarded_send(message):
            if state["cut_off"]:
                return
            state["responded"] = True
            await send(message)

        # Lets transport.write_buffer_watch reach the server's buffer through this wrapper.
        guarded_send.__wrapped__ = send
        return await self.application(scope, limited_receive, guarded_send)
