"""Security headers on every HTTP response, and the ``Host`` check for the channel URL.

Django's middleware only sees the responses Django produces; event streams and channel preflights
are answered before Django (transports/routing.py). ``SecurityHeadersMiddleware`` wraps the whole HTTP side
at the ASGI level and adds what a response does not already carry:

- ``X-Content-Type-Options: nosniff`` and ``Referrer-Policy: same-origin``;
- ``X-Frame-Options: DENY`` and ``frame-ancestors 'none'``: nothing here is meant to be framed;
- a ``Content-Security-Policy`` allowing only this origin's scripts, styles, images and
  connections. The chat and notifications pages carry no inline script or style (their settings
  travel in a ``<script type="application/json">`` block, which is data, not code), and the admin
  has none either, so the policy needs no ``'unsafe-inline'``.

Headers already present are kept, so Django's ``SecurityMiddleware`` and
``XFrameOptionsMiddleware`` stay in charge of what they set.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.http.request import split_domain_port, validate_host

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
    "connect-src 'self'; manifest-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
)
# What Django itself allows when DEBUG is on and ALLOWED_HOSTS is empty.
_DEBUG_HOSTS = [".localhost", "127.0.0.1", "[::1]"]


def with_security_headers(headers) -> list[tuple[bytes, bytes]]:
    """``headers`` plus every security header it lacks."""
    headers = list(headers)
    present = {name.lower() for name, _ in headers}
    headers.extend((name, value) for name, value in SECURITY_HEADERS if name not in present)
    return headers


class SecurityHeadersMiddleware:
    """ASGI middleware adding the security headers to every HTTP response that lacks them."""

    def __init__(self, application):
        self.application = application

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.application(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": with_security_headers(message.get("headers", ()))}
            await send(message)

        # Lets transport.write_buffer_watch reach the server's buffer through this wrapper.
        send_with_headers.__wrapped__ = send
        return await self.application(scope, receive, send_with_headers)


def host_allowed(host: str | None) -> bool:
    """Whether ``host`` (a ``Host`` header) is one of ``DJANGO_ALLOWED_HOSTS``, as Django decides it.

    A missing header is allowed: HTTP/1.0 clients may omit it, and without it no page can have
    reached us through DNS rebinding.
    """
    if host is None:
        return True
    domain, _ = split_domain_port(host)
    allowed = settings.ALLOWED_HOSTS or (_DEBUG_HOSTS if settings.DEBUG else [])
    return bool(domain) and validate_host(domain, allowed)


class OneLineSecurityRecords(logging.Filter):
    """Logs Django's ``django.security.*`` refusals (a foreign ``Host``, a forged CSRF token) in one line.

    Django attaches the exception's traceback to them: each 100-byte request with a bad ``Host``
    would write 2 KB of log, which is both noise and a way to fill disks.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("django.security.") and record.exc_info:
            record.exc_info = None
            record.exc_text = None
        return True
