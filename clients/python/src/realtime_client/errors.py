"""Typed exceptions carrying the server's error codes (docs/protocol.md lists every one).

The server answers every refusal with ``{"error": code, "message": text, ...}`` (HTTP) or a close
frame ``{"control": "close", "code", "error", "message"}`` (WebSocket). ``error_from`` picks the
exception class by the error code, then by the HTTP status or close code, then falls back to
``RealtimeError``; the code, status and close code are always kept.
"""

from __future__ import annotations

from typing import Any


class RealtimeError(Exception):
    """A refusal or failure: ``code`` is the server's machine-readable error, ``message`` says what to fix.

    ``status`` is the HTTP status (None for WebSocket refusals and network failures), ``close_code``
    the WebSocket close code (None over HTTP), ``details`` the answer's other fields.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        close_code: int | None = None,
        details: dict[str, Any] | None = None,
    ):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.close_code = close_code
        self.details = details or {}
        # Publishes set these: how many requests were sent, and the key to retry with later.
        self.attempts: int | None = None
        self.idempotency_key: str | None = None

    def __str__(self) -> str:
        where = f"HTTP {self.status}" if self.status else f"close {self.close_code}" if self.close_code else "client"
        return f"{self.code} ({where}): {self.message}"


class BadRequest(RealtimeError):
    """The request, query or frame was malformed (400 / 4400 / 1003)."""


class Unauthorized(RealtimeError):
    """A missing or wrong API key, or a missing, forged or expired channel token (401 / 4401)."""


class Forbidden(RealtimeError):
    """Valid credentials that do not allow this: a token for another channel or client, a disabled feature (403)."""


class NotFound(RealtimeError):
    """No channel has this id or name (404 / 4404)."""


class ChannelDeleted(NotFound):
    """The channel was deleted while subscribed (close 4410)."""


class Conflict(RealtimeError):
    """The clientId is already connected to the channel, or the channel already exists (409 / 4409)."""


class PayloadTooLarge(RealtimeError):
    """The message or request body is over the server's limit (413 / 1009)."""


class IdempotencyKeyReused(RealtimeError):
    """The Idempotency-Key was used on this channel for another payload within 24 hours (422)."""


class ChannelFull(RealtimeError):
    """The channel has its maximum of live connections (422 / 4422)."""


class RateLimited(RealtimeError):
    """Frames were sent faster than the server's publish rate; that frame was not published (4429)."""


class Unavailable(RealtimeError):
    """The instance cannot do this now (draining, shutting down, database down): nothing was done (503 / 4503)."""


class NotPublished(Unavailable):
    """Redis could not be reached before the publish was sent: nothing was published (503 / 4503)."""


class OutcomeUnknown(RealtimeError):
    """The publish may or may not have happened (504 / 4504, or no answer): retry with the same idempotency key."""


class ServerError(RealtimeError):
    """The server failed on this request (500 / 1011); it logged why."""


class ConnectionFailed(RealtimeError):
    """The server could not be reached (refused, unresolvable, timed out connecting): nothing was sent."""


_BY_CODE: dict[str, type[RealtimeError]] = {
    "bad_request": BadRequest,
    "wrong_transport": BadRequest,
    "host_not_allowed": BadRequest,
    "binary_frame": BadRequest,
    "api_key_required": Unauthorized,
    "api_key_invalid": Unauthorized,
    "api_key_not_configured": Unauthorized,
    "token_required": Unauthorized,
    "token_invalid": Unauthorized,
    "token_forbidden": Forbidden,
    "origin_not_allowed": Forbidden,
    "push_disabled": Forbidden,
    "create_disabled": Forbidden,
    "channel_not_found": NotFound,
    "channel_deleted": ChannelDeleted,
    "client_id_taken": Conflict,
    "channel_exists": Conflict,
    "channel_declared_in_yaml": Conflict,
    "payload_too_large": PayloadTooLarge,
    "idempotency_key_reused": IdempotencyKeyReused,
    "channel_full": ChannelFull,
    "rate_limited": RateLimited,
    "draining": Unavailable,
    "shutting_down": Unavailable,
    "database_unavailable": Unavailable,
    "redis_unavailable": NotPublished,
    "publish_outcome_unknown": OutcomeUnknown,
    "internal_error": ServerError,
}
_BY_STATUS: dict[int, type[RealtimeError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    429: RateLimited,
    500: ServerError,
    503: Unavailable,
    504: OutcomeUnknown,
}
_BY_CLOSE_CODE: dict[int, type[RealtimeError]] = {
    1003: BadRequest,
    1009: PayloadTooLarge,
    1011: ServerError,
    4400: BadRequest,
    4401: Unauthorized,
    4403: Forbidden,
    4404: NotFound,
    4409: Conflict,
    4410: ChannelDeleted,
    4422: ChannelFull,
    4429: RateLimited,
    4503: Unavailable,
    4504: OutcomeUnknown,
}


def error_from(
    code: str | None,
    message: str | None,
    *,
    status: int | None = None,
    close_code: int | None = None,
    details: dict[str, Any] | None = None,
) -> RealtimeError:
    """The typed exception for a server refusal, chosen by error code, then HTTP status, then close code."""
    cls = (
        _BY_CODE.get(code or "") or _BY_STATUS.get(status or 0) or _BY_CLOSE_CODE.get(close_code or 0) or RealtimeError
    )
    fallback = f"HTTP {status}" if status else f"close code {close_code}"
    return cls(
        code or (f"http_{status}" if status else f"close_{close_code}"),
        message or f"The server refused the request ({fallback}).",
        status=status,
        close_code=close_code,
        details=details,
    )


def error_from_body(status: int, body: object, text: str = "") -> RealtimeError:
    """The typed exception for an HTTP error answer; a body that is not the service's JSON (a proxy's page) is
    described by its status and first characters."""
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        details = {key: value for key, value in body.items() if key not in ("error", "message")}
        return error_from(body["error"], str(body.get("message") or ""), status=status, details=details)
    return error_from(None, text[:200].strip() or None, status=status)
