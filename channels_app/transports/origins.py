"""Which browser origins may open a WebSocket or read an event stream.

Allowed: requests without an ``Origin`` header (non-browser clients, which can send any header
anyway), the service's own origin (``Origin`` host equals the ``Host`` header), origins listed in
``server.allowed_origins`` and ``REALTIME_ALLOWED_ORIGINS`` (``https://*.example.com`` matches
subdomains), or every origin with ``server.allow_all_origins: true``.

Any other origin is refused: a WebSocket with close 4403, an event stream or its preflight with 403.
Both refusals are readable by the refused page (the 403 echoes its origin in
``Access-Control-Allow-Origin``) and carry nothing but the reason (docs/security.md).
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from urllib.parse import urlsplit


def header(scope: dict, name: bytes) -> str | None:
    """One request header from an ASGI scope, decoded as latin-1."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def origin_allowed(origin: str | None, host: str | None, server) -> bool:
    """True when a request from ``origin`` to ``host`` may subscribe."""
    if origin is None:
        return True
    if server.allow_all_origins:
        return True
    if origin == "null":
        return False
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    if not parts.scheme or not parts.netloc:
        return False
    if host is not None and parts.netloc.lower() == host.lower():
        return True
    normalized = f"{parts.scheme}://{parts.netloc}".lower()
    return any(fnmatchcase(normalized, allowed.lower().rstrip("/")) for allowed in server.allowed_origins)


def cors_headers(origin: str | None, host: str | None, server) -> list[tuple[bytes, bytes]]:
    """CORS response headers for an allowed cross-origin read; none otherwise."""
    if origin is None or not origin_allowed(origin, host, server):
        return []
    allow = b"*" if server.allow_all_origins else origin.encode("latin-1")
    return [(b"access-control-allow-origin", allow), (b"vary", b"Origin")]


def origin_not_allowed_body(origin: str | None) -> dict:
    """The refusal of a WebSocket handshake or an event stream from an origin that is not allowed."""
    return {
        "error": "origin_not_allowed",
        "message": (
            f"Origin {origin!r} may not subscribe: add it to server.allowed_origins (or REALTIME_ALLOWED_ORIGINS)."
        ),
    }


def refusal_cors_headers(origin: str) -> list[tuple[bytes, bytes]]:
    """CORS headers for the 403 refusing ``origin`` itself, so the refused page can read why.

    Only that refusal carries them: it is the same for every channel and says nothing the page
    could not learn from a WebSocket's close frame, which no browser hides.
    """
    return [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]
