"""request_limits' rule and deadlines under daphne, inside Twisted's HTTP parser.

daphne calls the application only once Twisted has read a request's whole body, which Twisted
keeps in a temporary file above 100 kB whatever its size; and Twisted's one timeout is an idle
one that every byte resets and that is off while a request is handled. So, in the parser:

- ``LimitedHTTPChannel`` applies the rule as soon as the headers are in (before ``gotLength`` and
  before any ``100 Continue``), answers a refusal at once and drops the rest of the request, and
  runs the head and body deadlines;
- ``LimitedWebRequest`` keeps the body in memory and stops a chunked body at the limit;
- ``LimitedHTTPFactory`` builds both, and ``install_into`` has ``daphne.server.Server.run`` use it.

daphne imports the application before it builds its server, so asgi.py installing this covers
every way of starting daphne. The private names relied on (``HTTPChannel._command`` and
``_path``, ``twisted.web.http._GenericHTTPChannelProtocol``, ``daphne.server.HTTPFactory``) are
checked by tests/test_private_apis.py. Over HTTP/2 (TLS with ALPN, not served here) none of
this applies.
"""

from __future__ import annotations

import io
import logging
from urllib.parse import unquote

from daphne.http_protocol import HTTPFactory, WebRequest
from django.conf import settings
from twisted.web import http

from ..http.limits import (
    LINGER_SECONDS,
    body_limit,
    body_too_large,
    raw_path_below_root,
    request_refusal,
    request_timeout,
    response_bytes,
)

logger = logging.getLogger(__name__)


class LimitedHTTPChannel(http.HTTPChannel):
    """Twisted's HTTP/1.1 parser, refusing from the headers and closing requests that take too long."""

    _deadline = None
    _refused = False
    # Whether the client has sent a byte: a connection that never did is closed without a 408.
    _spoke = False
    # Between two requests of a kept-alive connection: the next head's deadline starts with its first byte.
    _between_requests = False

    def connectionMade(self):
        super().connectionMade()
        self._start_deadline("head", self.factory.head_timeout)

    def dataReceived(self, data):
        if self._refused:
            # Lingering after a refusal: the rest of the request is read and dropped.
            return
        self._spoke = True
        if self._between_requests:
            self._between_requests = False
            self._start_deadline("head", self.factory.head_timeout)
        super().dataReceived(data)

    def allHeadersReceived(self):
        self._stop_deadline()
        request = self.requests[-1]
        authorization = request.requestHeaders.getRawHeaders(b"authorization", [None])[0]
        error = request_refusal(
            self._command.decode("latin-1"),
            raw_path_below_root(self._path, self._root_path(request)),
            authorization.decode("latin-1") if authorization is not None else None,
            self.length,
        )
        if error is not None:
            self.refuse(error)
            return
        super().allHeadersReceived()
        if self.length != 0:
            self._start_deadline("body", self.factory.body_timeout)

    def rawDataReceived(self, data):
        if not self._refused:
            super().rawDataReceived(data)

    def allContentReceived(self):
        if self._refused:
            return
        self._stop_deadline()
        super().allContentReceived()

    def requestDone(self, request):
        self._between_requests = True
        super().requestDone(request)

    def connectionLost(self, reason):
        self._stop_deadline()
        super().connectionLost(reason)

    def refuse(self, error) -> None:
        """Answer ``error`` now, drop what is left of the request, and close the connection."""
        if self._refused:
            return
        self._refused = True
        self._stop_deadline()
        # daphne's access log never sees this request: say what happened to it.
        peer = getattr(self.transport.getPeer(), "host", "a UNIX socket")
        logger.info("refused a request from %s: %d %s", peer, error.status, error.code)
        # Whatever follows the headers is the refused request's body: rawDataReceived drops it.
        self.setRawMode()
        self.transport.write(response_bytes(error))
        half_close = getattr(self.transport, "loseWriteConnection", None)
        if half_close is not None:
            half_close()
        self._deadline = self.callLater(LINGER_SECONDS, self.transport.loseConnection)

    def _root_path(self, request) -> str:
        header = request.requestHeaders.getRawHeaders(b"daphne-root-path")
        return unquote(header[0].decode("latin-1")) if header else self.factory.server.root_path

    def _start_deadline(self, part: str, seconds: float) -> None:
        self._stop_deadline()
        self._deadline = self.callLater(seconds, self._deadline_passed, part)

    def _stop_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _deadline_passed(self, part: str) -> None:
        self._deadline = None
        if not self._spoke:
            self.transport.loseConnection()
            return
        self.refuse(request_timeout(part))


class LimitedWebRequest(WebRequest):
    """daphne's request, with its body in memory and never above the limit."""

    _body_size = 0

    def gotLength(self, length):
        # The channel has refused any declared length over the limit, and handleContentChunk stops
        # a chunked body there, so no body needs a temporary file.
        self.content = io.BytesIO()

    def handleContentChunk(self, data):
        self._body_size += len(data)
        if self._body_size > body_limit():
            self.channel.refuse(body_too_large())
            return
        self.content.write(data)


class LimitedHTTPFactory(HTTPFactory):
    """daphne's HTTP factory building ``LimitedHTTPChannel`` and ``LimitedWebRequest``."""

    def __init__(self, server):
        super().__init__(server)
        self.head_timeout = settings.REALTIME_REQUEST_HEAD_TIMEOUT_SECONDS
        self.body_timeout = settings.REALTIME_REQUEST_BODY_TIMEOUT_SECONDS

    def protocol(self):
        """A new connection: Twisted's HTTP/1.1-or-2 switch around our channel (Twisted's own
        ``HTTPFactory.protocol`` builds it around a plain ``HTTPChannel``)."""
        return http._GenericHTTPChannelProtocol(LimitedHTTPChannel())

    def buildProtocol(self, addr):
        """daphne's protocol, making ``LimitedWebRequest`` requests."""
        protocol = super().buildProtocol(addr)
        protocol.requestFactory = LimitedWebRequest
        return protocol


def install_into(daphne_server) -> None:
    """Make daphne's ``Server.run`` (module ``daphne_server``) build ``LimitedHTTPFactory``."""
    if daphne_server.HTTPFactory is not LimitedHTTPFactory:
        daphne_server.HTTPFactory = LimitedHTTPFactory
