"""The server API's views served straight from ASGI, beside Django's middleware stack, whose
synchronous middleware made a push cost ~3 ms of CPU in thread hand-offs (docs/architecture.md,
"Why the code is shaped this way"). What the API needs from that stack is kept: the ``Host`` check
(routing.HostGuard), the security headers, and Django's ``SecurityMiddleware``. The API key and the
declared length are checked before the body is read (http/limits.py).
"""

from __future__ import annotations

import io
import logging

from django.core.handlers.asgi import ASGIRequest
from django.http import HttpResponse
from django.middleware.security import SecurityMiddleware

from ..ops.gctuning import request_finished
from .limits import body_limit, body_too_large, scope_refusal, send_refusal

logger = logging.getLogger(__name__)


class BodyTooLarge(Exception):
    """The request body is larger than the limit (``REALTIME_MAX_REQUEST_BODY_BYTES``)."""


class ClientGone(Exception):
    """The client disconnected before the whole body arrived."""


async def read_body(receive, limit: int) -> bytes:
    """The whole request body; ``BodyTooLarge`` as soon as it exceeds ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def send_response(send, response: HttpResponse) -> None:
    """Send a complete (non-streaming) Django response; the API's responses set no cookies."""
    if not response.has_header("Content-Length"):
        response["Content-Length"] = str(len(response.content))
    headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in response.items()]
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": response.content})


class DirectApiView:
    """ASGI app running one async API view (an ``api.api_endpoint``) without Django's middleware."""

    def __init__(self, view, runtime):
        self.view = view
        self.runtime = runtime
        # Only computes redirects and headers from settings: safe to call on the event loop.
        self.security = SecurityMiddleware(get_response=self._unused)

    async def __call__(self, scope, receive, send):
        """Read the body, run the view, send its response."""
        try:
            await self._serve(scope, receive, send)
        finally:
            request_finished()

    async def _serve(self, scope, receive, send):
        error = scope_refusal(scope)
        if error is not None:
            await send_refusal(send, error)
            return
        try:
            body = await read_body(receive, body_limit())
        except ClientGone:
            return
        except BodyTooLarge:
            await send_refusal(send, body_too_large())
            return
        request = ASGIRequest(scope, io.BytesIO(body))
        request.realtime = self.runtime
        response = self.security.process_request(request)
        if response is None:
            response = await self.view(request, **scope["url_route"]["kwargs"])
        response = self.security.process_response(request, response)
        await send_response(send, response)

    @staticmethod
    def _unused(request):
        raise AssertionError("DirectApiView calls SecurityMiddleware's hooks, never the middleware itself")
