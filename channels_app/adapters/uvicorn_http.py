"""request_limits' deadlines under uvicorn: ``--http channels_app.adapters.uvicorn_http:LimitedH11Protocol``.

uvicorn (h11) has no deadline for a request's head, none for its body, and none for a
connection that sends nothing: a client trickling bytes, or silent, holds its socket forever.
This protocol follows h11's view of the client (``conn.their_state``) after every read: the
head's deadline runs from the connection opening (on a kept-alive connection, from the next
request's first byte) until the request line and headers are in, the body's from then until the
body is in. The size rule and the API key check run in ``request_limits.RequestLimitMiddleware``;
uvicorn reads at most 64 KiB of body ahead of it. ``conn`` and ``cycle`` are uvicorn's own
attributes, checked by tests/test_private_apis.py.
"""

from __future__ import annotations

import asyncio
import logging

import h11
from django.conf import settings
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..http.limits import request_timeout, response_bytes

logger = logging.getLogger(__name__)


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing requests whose head or body takes too long."""

    _deadline: asyncio.TimerHandle | None = None
    _part: str | None = None
    # Whether the client has sent a byte: a connection that never did is closed without a 408.
    _spoke = False

    def connection_made(self, transport):
        super().connection_made(transport)
        self._start_deadline("head")

    def data_received(self, data: bytes) -> None:
        self._spoke = True
        if self._part is None and self.conn.their_state is h11.IDLE:
            # The first byte of the next request on a kept-alive connection.
            self._start_deadline("head")
        super().data_received(data)
        self._follow_request()

    def connection_lost(self, exc):
        self._stop_deadline()
        super().connection_lost(exc)

    def _follow_request(self) -> None:
        if self.transport.is_closing() or self.transport.get_protocol() is not self:
            # Closed, or upgraded to a WebSocket, which has deadlines of its own.
            self._stop_deadline()
            return
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            if self._part != "body":
                self._start_deadline("body")
        elif state is not h11.IDLE:
            # The whole request is in: the application has it.
            self._stop_deadline()

    def _start_deadline(self, part: str) -> None:
        self._stop_deadline()
        seconds = (
            settings.REALTIME_REQUEST_HEAD_TIMEOUT_SECONDS
            if part == "head"
            else settings.REALTIME_REQUEST_BODY_TIMEOUT_SECONDS
        )
        self._part = part
        self._deadline = self.loop.call_later(seconds, self._deadline_passed)

    def _stop_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = None
        self._part = None

    def _deadline_passed(self) -> None:
        part = self._part
        self._deadline = None
        self._part = None
        if self.transport.is_closing() or self.transport.get_protocol() is not self:
            return
        answered = self.cycle is not None and self.cycle.response_started and part == "body"
        if self._spoke and not answered:
            logger.info("refused a request from %s: 408 request_timeout (its %s took too long)", self.client, part)
            self.transport.write(response_bytes(request_timeout(part)))
        # The application, if it has the request, reads an http.disconnect.
        self.transport.close()
